"""Host speed/memory on the real clothing interactions (../shared/data/clothing).

Prints: time to read the dataset and build the loaders; one pass of negative sampling
over all training rows; one full-ranking evaluation of all valid users with random
64-d embeddings; peak resident memory. Targets (issue #2): sampling < 0.5 s,
evaluation < 5 s on a 2-core CPU machine.

    python benchmarks/host_bench.py [--data_path ../shared/data/] [--dataset clothing] [--repeat 3]
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch

from mmrec_egra.data import build_loaders, load_dataset
from mmrec_egra.evaluation import TopKEvaluator
from mmrec_egra.runner import make_config


class RandomEmbeddings(torch.nn.Module):
    """Scores = random user vectors . random item vectors (64-d)."""

    def __init__(self, n_users: int, n_items: int, dim: int = 64):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.u = torch.randn(n_users, dim, generator=g)
        self.i = torch.randn(n_items, dim, generator=g)
        self.device = torch.device("cpu")

    def full_sort_predict(self, batch):
        return self.u[batch[0]] @ self.i.t()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_path", default=str(here.parent / "shared" / "data") + "/")
    ap.add_argument("--dataset", default="clothing")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; baseline RSS {peak_rss_mib():.0f} MiB")

    t = time.perf_counter()
    config = make_config("BPR", args.dataset, {"data_path": args.data_path, "show_progress": False, "device": "cpu"})
    ds = load_dataset(config)
    train, valid, test = build_loaders(config, ds)
    t_load = time.perf_counter() - t
    print(f"{ds.summary()}")
    print(f"read dataset + build loaders: {t_load:.3f} s")

    times = []
    for r in range(args.repeat):
        t = time.perf_counter()
        train.sampler.sample(train.users, np.random.default_rng(r))
        times.append(time.perf_counter() - t)
    print(f"negative sampling, all {len(train.users)} training rows: median {np.median(times):.3f} s "
          f"(target < 0.5 s)")
    t = time.perf_counter()
    n_batches = sum(1 for _ in train)
    print(f"full training epoch of batches incl. shuffle + sampling ({n_batches} batches): "
          f"{time.perf_counter() - t:.3f} s")

    model = RandomEmbeddings(ds.n_users, ds.n_items)
    ev = TopKEvaluator(config)
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        res = ev.evaluate(model, valid)
        times.append(time.perf_counter() - t)
    print(f"full-ranking evaluation of {len(valid.users)} valid users x {ds.n_items} items, "
          f"metrics {ev.metrics} @ {ev.topk}: median {np.median(times):.3f} s (target < 5 s); "
          f"recall@20 of random scores {res['recall@20']:.5f}")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
