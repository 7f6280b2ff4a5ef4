"""How much of a trained model's ranking is popularity?

    python results/popularity_share.py [--data_path ../shared/data/] NAME=RUN_DIR [NAME=RUN_DIR ...]

For each finished run (its best-valid weights, rebuilt with `saved_run.load_run`), the top-20
of every test user (own training items masked, as in evaluation) is compared with Pop's
top-20 for that user (the 20 most-interacted unseen items):
  pop overlap : share of the model's top-20 that is also in Pop's top-20,
  pop rank    : Spearman correlation, over items, between the item's training count and the
                model's mean score over the test users (1: the model ranks like Pop for the
                average user),
  mean count  : mean training count of the recommended items.
Prints a markdown table (one row per run, Pop's own row first). Minutes on TikTok (CPU).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.stats import spearmanr

from mmrec_egra.data import build_loaders
from mmrec_egra.saved_run import load_run


def top20(scores: torch.Tensor, seen) -> np.ndarray:
    scores = scores.clone()
    rows, cols = seen.nonzero()
    scores[torch.as_tensor(rows), torch.as_tensor(cols)] = -float("inf")
    return torch.topk(scores, 20, dim=1).indices.numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1].strip())
    p.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    p.add_argument("--data_path", default=None)
    p.add_argument("--batch", type=int, default=1024)
    args = p.parse_args()
    rows, pop_top, counts = [], None, None
    for spec in args.runs:
        name, run_dir = spec.split("=", 1)
        model, config, dataset = load_run(run_dir, data_path=args.data_path)
        loaders = build_loaders(config, dataset)
        R = loaders[0].inter_matrix(form="csr").tocsr()
        users = np.asarray(loaders[2].users)
        if counts is None:
            counts = np.asarray((R > 0).sum(axis=0), dtype=np.float64).ravel()
            pop_top = np.concatenate([top20(torch.as_tensor(counts, dtype=torch.float32).repeat(len(b), 1),
                                            R[b]) for b in np.array_split(users, max(1, len(users) // args.batch))])
            rows.append(("Pop", 1.0, 1.0, counts[pop_top].mean()))
        tops, mean_score = [], np.zeros(R.shape[1])
        with torch.no_grad():
            for b in np.array_split(users, max(1, len(users) // args.batch)):
                s = model.full_sort_predict((torch.as_tensor(b), None)).float().cpu()
                mean_score += s.sum(0).numpy()
                tops.append(top20(s, R[b]))
        top = np.concatenate(tops)
        overlap = np.mean([len(np.intersect1d(a, b)) / 20 for a, b in zip(top, pop_top)])
        rho = spearmanr(counts, mean_score / len(users)).correlation
        rows.append((name, overlap, rho, counts[top].mean()))
    print("| model | pop overlap (top-20) | pop rank (Spearman) | mean count of recommended items |")
    print("|---|---|---|---|")
    for name, ov, rho, mc in rows:
        print(f"| {name} | {ov:.3f} | {rho:.3f} | {mc:.1f} |")


if __name__ == "__main__":
    main()
