"""Seconds per training epoch / per evaluation and peak memory of every model, vs MMRec.

Settings follow ../shared/bench/mmrec_reference.md: default yaml with every grid cut to
its first value, seed 999, train batch 2048, eval batch 4096; "epoch" = median seconds
of training epochs 1..5 (epoch 0 is warm-up); "eval" = median seconds of one valid+test
full-ranking evaluation; "RSS" = peak resident memory of the whole run (each model runs
in its own process). Datasets:
  tiktok      ../shared/data/tiktok (real image + audio features)
  baby-shape  ../shared/data/baby interactions with SYNTHETIC features of the published
              shapes (7050 x 4096 non-negative, ~half zeros, as image; 7050 x 384 as text;
              numpy seeds 0 and 1): timing only, never quality.
Also times the blockwise feature kNN build on "clothing-shape" synthetic features
(23,033 x 4096) and reports its peak extra memory.

    python benchmarks/model_bench.py [--models BPR MGCN ...] [--datasets tiktok baby-shape] [--skip_knn] [--only_graphs]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parents[1]
SHARED = HERE.parent / "shared" / "data"

# MMRec reference on this machine kind (../shared/bench/mmrec_reference.md): epoch s, eval s, RSS MiB
REFERENCE = {
    "tiktok": {"BPR": (0.39, 1.45, 569), "LightGCN": (0.76, 1.40, 620), "VBPR": (0.56, 1.45, 619),
               "FREEDOM": (1.71, 1.52, 686), "BM3": (2.07, 1.53, 675), "MGCN": (4.90, 1.46, 852),
               "LGMRec": (15.61, 1.62, 747), "LATTICE": (35.24, 33.16, 2605)},
    "baby-shape": {"BPR": (0.71, 5.86, 713), "LightGCN": (2.31, 5.52, 791), "VBPR": (4.93, 6.07, 1001),
                   "FREEDOM": (17.85, 5.68, 1428), "BM3": (18.11, 5.47, 1325), "MGCN": (27.14, 6.69, 1697),
                   "LGMRec": (61.84, 7.12, 1158), "LATTICE": (53.05, 138.34, 3272)},
}


def make_baby_shape(root: Path) -> Path:
    """<root>/baby/: real baby.inter + synthetic image (4096-d) and text (384-d) features."""
    d = root / "baby"
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "baby.inter").exists():
        os.symlink(SHARED / "baby" / "baby.inter", d / "baby.inter")
    n = 7050
    if not (d / "image_feat.npy").exists():
        img = np.maximum(0.0, np.random.default_rng(0).standard_normal((n, 4096), dtype=np.float32))
        np.save(d / "image_feat.npy", img)
        np.save(d / "text_feat.npy", np.random.default_rng(1).standard_normal((n, 384), dtype=np.float32))
    return root


def one(model: str, dataset: str, data_path: str, epochs: int) -> dict:
    """Run in a child process: time `epochs` training epochs and evaluations of one model."""
    import torch
    from mmrec_egra.data import build_loaders, load_dataset
    from mmrec_egra.runner import make_config
    from mmrec_egra.registry import get_model
    from mmrec_egra.trainer import Trainer
    from mmrec_egra.utils import init_seed

    ds_name = "baby" if dataset == "baby-shape" else dataset
    over = {"data_path": data_path, "show_progress": False, "device": "cpu", "seed": [999],
            "train_batch_size": 2048, "eval_batch_size": 4096, "graph_cache": False}
    if dataset == "baby-shape":
        over["modalities"] = {"image": "image_feat.npy", "text": "text_feat.npy"}
    cfg = make_config(model, ds_name, over)
    cfg = cfg.for_combination({k: cfg[k][0] for k in cfg.grid_keys})
    cfg["_combo_key"] = "bench"
    ds = load_dataset(cfg)
    loaders = build_loaders(cfg, ds)
    init_seed(999)
    t0 = time.perf_counter()
    cls = get_model(model)
    if hasattr(cls, "prepare"):
        # EGRA: time stage 2 only, with a random stand-in for the teacher export
        cfg["_teacher_embeddings"] = np.random.default_rng(0).standard_normal((ds.n_items, 64)).astype(np.float32)
    m = cls(cfg, loaders[0]).to(cfg["device"])
    build_s = time.perf_counter() - t0
    tr = Trainer(cfg, m)
    ep, ev = [], []
    for e in range(epochs):
        t = time.perf_counter()
        m.pre_epoch_processing()
        tr._train_epoch(loaders[0], e)
        tr.scheduler.step()
        m.post_epoch_processing()
        ep.append(time.perf_counter() - t)
        t = time.perf_counter()
        tr.evaluate_valid_test(loaders[1], loaders[2])   # what every training epoch runs
        ev.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model, "dataset": dataset, "build_s": build_s, "epoch_s": float(np.median(ep[1:] or ep)),
            "eval_s": float(np.median(ev[1:] or ev)), "rss_mib": rss, "threads": torch.get_num_threads()}


def knn_bench() -> None:
    """Blockwise kNN on clothing-shape features: time and peak extra memory."""
    from mmrec_egra.graphs import knn_graph
    n, d = 23033, 4096
    # filled in chunks so that generating the features leaves no temporary behind: the peak
    # RSS before the build is then the features themselves, and the rise is the build's own
    feats = np.empty((n, d), dtype=np.float32)
    rng = np.random.default_rng(0)
    for a in range(0, n, 1024):
        feats[a:a + 1024] = np.maximum(0.0, rng.standard_normal((min(1024, n - a), d), dtype=np.float32))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    g = knn_graph(feats, 10)
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"kNN (k=10, cosine, blockwise) on clothing-shape {n} x {d} synthetic features: {dt:.2f} s, "
          f"peak extra memory {peak - base:.0f} MiB over the {feats.nbytes / 2**20:.0f} MiB of features "
          f"(a dense {n}x{n} float32 similarity would need {n * n * 4 / 2**30:.1f} GiB); nnz {g.nnz}")


def cograph_bench() -> None:
    """SIGE's collaborative item graph on the real clothing interactions: time and memory."""
    import tracemalloc
    from mmrec_egra.data import load_dataset
    from mmrec_egra.graphs import co_interaction_graph
    from mmrec_egra.runner import make_config
    cfg = make_config("SIGE", "clothing", {"data_path": str(SHARED) + "/", "show_progress": False})
    ds = load_dataset(cfg)
    r = ds.inter_matrix("csr")
    times = []
    for _ in range(3):
        tracemalloc.start()
        t = time.perf_counter()
        g = co_interaction_graph(r, int(cfg["sige_co_k"]), norm=str(cfg["sige_co_norm"]),
                                 symmetric=bool(cfg["sige_co_symmetric"]))
        times.append(time.perf_counter() - t)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    print(f"SIGE collaborative graph (top-{cfg['sige_co_k']} {cfg['sige_co_norm']} of R^T R) on real clothing "
          f"({r.shape[0]} users x {r.shape[1]} items, {r.nnz} training interactions): median "
          f"{float(np.median(times)):.2f} s over 3 builds, peak traced memory {peak:.0f} MiB, nnz {g.nnz}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["BPR", "LightGCN", "VBPR", "FREEDOM", "BM3", "MGCN",
                                                     "LGMRec", "LATTICE", "EGRA", "SIGE"])
    ap.add_argument("--datasets", nargs="+", default=["tiktok", "baby-shape"])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--skip_knn", action="store_true", help="skip the graph-build timings")
    ap.add_argument("--only_graphs", action="store_true", help="only the graph-build timings")
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "DATASET", "DATA_PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one[0], args.one[1], args.one[2], args.epochs)))
        return
    if not SHARED.is_dir():
        sys.exit(f"needs the real data in {SHARED}")
    if args.only_graphs:
        cograph_bench()
        knn_bench()
        return
    tmp = Path(tempfile.mkdtemp(prefix="model_bench_"))
    paths = {"tiktok": str(SHARED) + "/", "baby-shape": str(make_baby_shape(tmp)) + "/"}
    print("| dataset | model | epoch s | MMRec epoch s | ratio | eval s | MMRec eval s | ratio | RSS MiB | MMRec RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for ds in args.datasets:
        for model in args.models:
            r = subprocess.run([sys.executable, __file__, "--one", model, ds, paths[ds], "--epochs", str(args.epochs)],
                               capture_output=True, text=True)
            line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
            if r.returncode != 0 or not line:
                print(f"| {ds} | {model} | failed: {(r.stderr.strip().splitlines() or ['?'])[-1]} |")
                continue
            res = json.loads(line[0][7:])
            ref = REFERENCE.get(ds, {}).get(model)
            rat = lambda a, b: f"{a / b:.2f}x" if b else "n/a"
            print(f"| {ds} | {model} | {res['epoch_s']:.2f} | {ref[0] if ref else 'n/a'} | "
                  f"{rat(res['epoch_s'], ref[0]) if ref else 'n/a'} | {res['eval_s']:.2f} | {ref[1] if ref else 'n/a'} | "
                  f"{rat(res['eval_s'], ref[1]) if ref else 'n/a'} | {res['rss_mib']:.0f} | {ref[2] if ref else 'n/a'} |",
                  flush=True)
    if not args.skip_knn:
        cograph_bench()
        knn_bench()


if __name__ == "__main__":
    main()
