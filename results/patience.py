"""Replay early stopping on saved valid trajectories: where would patience P have stopped?

    python results/patience.py saved/qual/patience/*/*/history.json [--patience 10 20 30 50 75 100]

For each history.json (one evaluation per epoch) and each patience P it replays the
trainer's rule (stop once more than P evaluations in a row bring no strict improvement of
valid Recall@20) and prints the epoch it would stop at, the best-valid epoch it keeps and
that epoch's valid/test Recall@20, next to the best over the whole trajectory.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, List


def replay(valid: List[float], patience: int) -> Dict[str, float]:
    """Early stopping on `valid` (one value per evaluation): stop index, best index, stopped."""
    best, best_i, bad = float("-inf"), -1, 0
    for i, v in enumerate(valid):
        if v > best:
            best, best_i, bad = v, i, 0
        else:
            bad += 1
            if bad > patience:
                return {"stop": i, "best": best_i, "stopped": True}
    return {"stop": len(valid) - 1, "best": best_i, "stopped": False}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("histories", nargs="+")
    p.add_argument("--patience", nargs="+", type=int, default=[10, 20, 30, 50, 75, 100])
    p.add_argument("--metric", default="recall@20")
    args = p.parse_args()
    print("| run | epochs run | patience | stops at | best epoch kept | valid R@20 | test R@20 | test N@20 |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.histories:
        h = [r for r in json.loads(Path(path).read_text()) if r.get("valid")]
        valid = [r["valid"][args.metric] for r in h]
        name = Path(path).parent.parent.name + " " + Path(path).parent.name[:40]
        for P in args.patience + [None]:
            r = replay(valid, P) if P is not None else {"stop": len(valid) - 1, "stopped": False,
                                                         "best": max(range(len(valid)), key=valid.__getitem__)}
            b = h[r["best"]]
            stop = h[r["stop"]]["epoch"] if r["stopped"] else "not stopped"
            print(f"| {name} | {len(h)} | {P if P is not None else 'inf (whole run)'} | {stop} | "
                  f"{b['epoch']} | {b['valid'][args.metric]:.4f} | {b['test']['recall@20']:.4f} | "
                  f"{b['test']['ndcg@20']:.4f} |")


if __name__ == "__main__":
    main()
