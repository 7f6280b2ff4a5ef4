"""Compare models (or ablation arms of one model) over seeds under one protocol.

    python -m mmrec_egra.compare -d tiktok --data_path ../shared/data/ \
        -m BPR LightGCN VBPR LATTICE FREEDOM BM3 MGCN LGMRec --seeds 999 1 2
    python main.py -m EGRA -d tiktok --data_path ../shared/data/ --ablation --seed 999 1 2

Each entry runs with its default configuration (the first value of every grid key) or,
with --grid, its whole grid, the best combination chosen on VALIDATION per seed. The
table reports test Recall/NDCG@10/20 at the best-valid epoch (mean and std over seeds),
the valid metric, epochs to the best epoch, and median seconds per training epoch. It is
written as markdown and CSV; every run is also saved under checkpoint_dir as usual, and
a rerun with the same arguments reuses finished runs (resume).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .config import parse_cli_overrides
from .utils import MMRecError, atomic_write, get_logger, write_json

REPORT_KEYS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")

Entry = Tuple[str, str, Dict[str, Any]]      # (label, model name, config overrides)


def run_entries(entries: Sequence[Entry], dataset: str, seeds: Sequence[int], overrides: Dict[str, Any],
                full_grid: bool = False, extra_keys: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Run every (label, model, overrides) for every seed; returns one row per entry."""
    from .runner import run
    log = get_logger()
    rows = []
    total = len(entries) * len(seeds)
    n = 0
    for label, model, entry_over in entries:
        per_seed = []
        for seed in seeds:
            n += 1
            log.info("### [%d/%d] %s, seed %s", n, total, label, seed)
            opts = dict(overrides)
            opts.update(entry_over)
            opts["seed"] = [int(seed)]
            opts["grid"] = "full" if full_grid else "first"
            if "checkpoint_dir" in opts or label != model:
                base = Path(str(opts.get("checkpoint_dir") or "saved/"))
                opts["checkpoint_dir"] = str(base / f"arm-{label}") if label != model else str(base)
            t0 = time.time()
            summary = run(model, dataset, opts, resume=True)
            best = summary["best"]
            if best is None:
                log.warning("%s seed %s produced no valid result (NaN loss?)", label, seed)
                continue
            res = best["result"]
            per_seed.append({"seed": seed, "combination": best["combination"], "best_epoch": res["best_epoch"],
                             "valid": res["best_valid"], "test": res["best_test"],
                             "seconds_per_epoch": res.get("seconds_per_epoch"),
                             "seconds_per_eval": res.get("seconds_per_eval"),
                             "wall_seconds": round(time.time() - t0, 1)})
        rows.append(aggregate(label, model, per_seed, summary_valid_metric(overrides), extra_keys))
    return rows


def summary_valid_metric(overrides: Dict[str, Any]) -> str:
    return str(overrides.get("valid_metric") or "Recall@20").lower()


def aggregate(label: str, model: str, per_seed: List[Dict[str, Any]], valid_metric: str,
              extra_keys: Sequence[str] = ()) -> Dict[str, Any]:
    row: Dict[str, Any] = {"label": label, "model": model, "n_seeds": len(per_seed), "runs": per_seed}
    for key in list(REPORT_KEYS) + list(extra_keys):
        vals = [r["test"][key] for r in per_seed if key in r["test"]]
        row[f"test_{key}_mean"] = float(np.mean(vals)) if vals else None
        row[f"test_{key}_std"] = float(np.std(vals)) if len(vals) > 1 else (0.0 if vals else None)
    vv = [r["valid"].get(valid_metric) for r in per_seed]
    row[f"valid_{valid_metric}_mean"] = float(np.mean(vv)) if vv else None
    row["best_epoch_mean"] = float(np.mean([r["best_epoch"] + 1 for r in per_seed])) if per_seed else None
    spe = [r["seconds_per_epoch"] for r in per_seed if r["seconds_per_epoch"] is not None]
    row["seconds_per_epoch"] = float(np.median(spe)) if spe else None
    return row


def markdown_table(rows: List[Dict[str, Any]], valid_metric: str, extra_keys: Sequence[str] = ()) -> str:
    keys = list(REPORT_KEYS) + list(extra_keys)
    head = ["model", "seeds"] + [f"test {k}" for k in keys] + [f"valid {valid_metric}", "epochs to best", "s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], str(r["n_seeds"])]
        for k in keys:
            m, s = r.get(f"test_{k}_mean"), r.get(f"test_{k}_std")
            cells.append("n/a" if m is None else f"{m:.4f} ± {s:.4f}")
        v = r.get(f"valid_{valid_metric}_mean")
        cells += ["n/a" if v is None else f"{v:.4f}",
                  "n/a" if r["best_epoch_mean"] is None else f"{r['best_epoch_mean']:.0f}",
                  "n/a" if r["seconds_per_epoch"] is None else f"{r['seconds_per_epoch']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(out_dir: Path, title: str, rows: List[Dict[str, Any]], valid_metric: str,
                 extra_keys: Sequence[str] = ()) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = f"# {title}\n\n" + markdown_table(rows, valid_metric, extra_keys) + "\n"
    atomic_write(out_dir / "table.md", lambda fh: fh.write(md))
    buf = io.StringIO()
    keys = [k for k in rows[0] if k != "runs"] if rows else []
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in keys})
    atomic_write(out_dir / "table.csv", lambda fh: fh.write(buf.getvalue()))
    write_json(out_dir / "runs.json", rows)
    return out_dir / "table.md"


def ablation_entries(model: str, overrides: Dict[str, Any]) -> List[Entry]:
    """Arms from the model yaml's `ablation_arms` mapping (label -> overrides), full model first."""
    from .runner import make_config
    cfg = make_config(model, str(overrides.get("dataset") or "demo"), {k: v for k, v in overrides.items()
                                                                        if k in ("config_dir", "data_path")})
    arms = cfg["ablation_arms"]
    if not isinstance(arms, dict) or not arms:
        raise MMRecError(f"model {model} defines no ablation_arms in configs/model/{cfg['model']}.yaml "
                         f"(a mapping: arm name -> config overrides)")
    entries: List[Entry] = []
    for label, arm in arms.items():
        if arm is not None and not isinstance(arm, dict):
            raise MMRecError(f"ablation arm '{label}' of {model} must be a mapping of overrides, found {arm!r}")
        arm = dict(arm or {})
        target = str(arm.pop("model", cfg["model"]))
        entries.append((str(label), target, arm))
    return entries


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmrec_egra.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("-m", "--models", nargs="+", default=None, help="models to compare (default: all registered)")
    p.add_argument("--ablation", default=None, metavar="MODEL", help="compare the ablation arms of MODEL instead")
    p.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                   help="with --ablation: run only these arms (default: all, in the yaml's order)")
    p.add_argument("--seeds", nargs="+", type=int, default=[999])
    p.add_argument("--grid", action="store_true", help="search each model's grid (chosen on valid) per seed")
    p.add_argument("--out", default=None, help="folder for table.md / table.csv / runs.json")
    p.add_argument("--longtail", action="store_true", help="also report head/tail test Recall@20 and NDCG@20")
    args, rest = p.parse_known_args(argv)
    try:
        overrides = parse_cli_overrides(rest)
        overrides.setdefault("show_progress", False)
        extra = ("head/recall@20", "tail/recall@20", "tail/ndcg@20") if args.longtail else ()
        if args.longtail:
            overrides["longtail_eval"] = True
        if args.ablation:
            entries = ablation_entries(args.ablation, dict(overrides, dataset=args.dataset))
            if args.arms:
                known = [e[0] for e in entries]
                unknown = [a for a in args.arms if a not in known]
                if unknown:
                    raise MMRecError(f"--arms: {', '.join(unknown)} not among the ablation arms of "
                                     f"{args.ablation}: {', '.join(known)}")
                entries = [e for e in entries if e[0] in args.arms]
            title = f"{args.ablation} ablation on {args.dataset}"
        else:
            from .registry import list_models
            names = args.models or [m for m in list_models() if not m.startswith("_")]
            entries = [(m, m, {}) for m in names]
            title = f"Model comparison on {args.dataset}"
        title += f" (seeds {' '.join(map(str, args.seeds))}; {'grid searched on valid' if args.grid else 'default configuration'})"
        rows = run_entries(entries, args.dataset, args.seeds, overrides, args.grid, extra)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(args.out) if args.out else Path(str(overrides.get("checkpoint_dir") or "saved")) / \
            f"{'ablation-' + args.ablation if args.ablation else 'compare'}-{args.dataset}-{stamp}"
        path = write_tables(out, title, rows, summary_valid_metric(overrides), extra)
        print(path.read_text())
        print(f"tables written to {out}/table.md, table.csv, runs.json")
    except MMRecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
