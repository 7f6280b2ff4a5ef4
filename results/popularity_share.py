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
Prints a markdown table (one row per run, Pop's own row first). Seconds per run on TikTok (CPU).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.stats import spearmanr

from mmrec_egra.data import build_loaders
from mmrec_egra.evaluation import TopKEvaluator
from mmrec_egra.models.pop import Pop
from mmrec_egra.saved_run import load_run


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
        train, _, test = build_loaders(config, dataset)
        ev = TopKEvaluator(config)                      # its masking and top-k, as in evaluation
        if counts is None:
            pop = Pop(config, train)
            counts = pop.counts.cpu().numpy().astype(np.float64)
            pop_top = ev.rank(pop, test)[1][:, :20]
            rows.append(("Pop", 1.0, 1.0, counts[pop_top].mean()))
        top = ev.rank(model, test)[1][:, :20]
        mean_score = np.zeros(len(counts))
        with torch.no_grad():                           # models cache their embeddings: a product per batch
            for b in np.array_split(test.users, max(1, len(test.users) // args.batch)):
                mean_score += model.full_sort_predict((torch.as_tensor(b), None)).float().sum(0).cpu().numpy()
        overlap = np.mean([len(np.intersect1d(a, b)) / 20 for a, b in zip(top, pop_top)])
        rho = spearmanr(counts, mean_score / len(test.users)).correlation
        rows.append((name, overlap, rho, counts[top].mean()))
    print("| model | pop overlap (top-20) | pop rank (Spearman) | mean count of recommended items |")
    print("|---|---|---|---|")
    for name, ov, rho, mc in rows:
        print(f"| {name} | {ov:.3f} | {rho:.3f} | {mc:.1f} |")


if __name__ == "__main__":
    main()
