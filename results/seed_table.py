"""One table row per model from finished runs: mean and population std over seeds, as
`python -m mmrec_egra.compare` writes them, for runs that were not made by one compare
command (seeds run in separate processes, a teacher seed made by EGRA's stage 1).

    python results/seed_table.py OUT.csv LABEL=RUN_DIR[,RUN_DIR...] ... [--store DIR --teacher MODEL:SEED[:LABEL]]

RUN_DIR is a combination folder holding result.json. `--teacher` adds a seed of MODEL read
from the teacher export EGRA's stage 1 stored in the artifact store DIR (same protocol:
early stopping on valid; the store keeps no long-tail split, so head/tail columns of such a
row average the other seeds only and are left out when any seed lacks them).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List

from mmrec_egra.artifacts import open_store
from mmrec_egra.compare import aggregate, markdown_table, write_csv
from mmrec_egra.pipeline import stored_teachers

LONGTAIL = ("head/recall@20", "tail/recall@20", "tail/ndcg@20")


def run_seed(run_dir: Path) -> Dict[str, Any]:
    row = json.loads((run_dir / "result.json").read_text())
    res = row["result"]
    return {"seed": row["combination"].get("seed"), "best_epoch": res["best_epoch"], "valid": res["best_valid"],
            "test": res["best_test"], "seconds_per_epoch": res.get("seconds_per_epoch")}


def teacher_seed(store_dir: str, model: str, seed: int) -> Dict[str, Any]:
    found = stored_teachers(open_store(store_dir), teacher=model, seed=seed, kind="final")
    if not found:
        raise SystemExit(f"no stored 'final' export of teacher {model} seed {seed} in {store_dir}")
    meta = found[0]["meta"]
    return {"seed": seed, "best_epoch": meta["best_epoch"],
            "valid": {meta["valid_metric"]: meta["valid_score"]}, "test": meta["test"],
            "seconds_per_epoch": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("rows", nargs="+", help="LABEL=RUN_DIR[,RUN_DIR...]")
    ap.add_argument("--store", default=None)
    ap.add_argument("--teacher", action="append", default=[], help="MODEL:SEED[:LABEL] from --store")
    args = ap.parse_args()
    per_label: Dict[str, List[Dict[str, Any]]] = {}
    for spec in args.rows:
        label, dirs = spec.split("=", 1)
        per_label.setdefault(label, []).extend(run_seed(Path(d)) for d in dirs.split(","))
    for spec in args.teacher:
        model, seed, *label = spec.split(":")
        per_label.setdefault(label[0] if label else model, []).insert(0, teacher_seed(args.store, model, int(seed)))
    rows = []
    for label, seeds in per_label.items():
        extra = [k for k in LONGTAIL if all(k in s["test"] for s in seeds)]
        row = aggregate(label, label.split(" ")[0], seeds, "recall@20", extra_keys=extra)
        row["seeds"] = " ".join(str(s["seed"]) for s in seeds)
        rows.append(row)
    keys = list(LONGTAIL)
    for r in rows:                    # one column set for every row (None where a row lacks it)
        for k in keys:
            r.setdefault(f"test_{k}_mean", None)
            r.setdefault(f"test_{k}_std", None)
    write_csv(Path(args.out), rows)
    print(markdown_table(rows, "recall@20", keys))


if __name__ == "__main__":
    main()
