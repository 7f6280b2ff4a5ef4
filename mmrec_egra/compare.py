"""Compare models (or ablation arms of one model) over seeds under one protocol.

    python -m mmrec_egra.compare -d tiktok --data_path ../shared/data/ \
        -m BPR LightGCN VBPR LATTICE FREEDOM BM3 MGCN LGMRec --seeds 999 1 2
    python main.py -m EGRA -d tiktok --data_path ../shared/data/ --ablation --seed 999 1 2

Each entry runs with its default configuration (the first value of every grid key) or,
with --grid, its whole grid, or with --grid-max N at most N combinations of it (the same
cut for every model: N evenly spaced positions in grid order, first and last kept), the
best combination chosen on VALIDATION per seed. The
table reports test Recall/NDCG@10/20 at the best-valid epoch (mean and std over seeds),
the valid metric, epochs to the best epoch, and median seconds per training epoch. It is
written as markdown, CSV and report.html (charts with seed error bars, docs/results.md);
every run is also saved under checkpoint_dir as usual, and a rerun with the same
arguments reuses finished runs (resume).
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .config import parse_cli_overrides
from .utils import MMRecError, atomic_write, get_logger, report_interrupt, write_json

REPORT_KEYS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")

Entry = Tuple[str, str, Dict[str, Any]]      # (label, model name, config overrides)


def cut_grid(combos: Sequence[Dict[str, Any]], n: int) -> List[Dict[str, Any]]:
    """At most n combinations, the same way for every model: n evenly spaced positions of the
    grid in its run order (last key fastest), the first (default) and the last always kept."""
    if n < 1:
        raise MMRecError(f"--grid-max must be at least 1, found {n}")
    if len(combos) <= n:
        return list(combos)
    if n == 1:
        return [combos[0]]
    idx = sorted({int(round(i * (len(combos) - 1) / (n - 1))) for i in range(n)})
    return [combos[i] for i in idx]


def cut_grid_opts(model: str, dataset: str, opts: Dict[str, Any], n: int) -> List[Dict[str, Any]]:
    """The run overrides of each combination of `model`'s grid cut to at most n (`cut_grid`),
    each pinned to one combination so that finished ones are found again."""
    from .runner import make_config
    config = make_config(model, dataset, dict(opts))
    keys = [k for k in config.grid_keys if k != "seed"]
    combos = cut_grid([{k: c[k] for k in keys} for c in config.grid()], n)
    get_logger().info("%s: grid cut to %d of %d combination(s) (--grid-max %d)", model, len(combos),
                      len(config.grid()), n)
    return [dict(opts, grid="first", **{k: [v] for k, v in combo.items()}) for combo in combos]


def _run_cut_grid(model: str, dataset: str, opts: Dict[str, Any], n: int, valid_metric: str):
    """Run the cut grid of `model` (one combination per call, so finished ones are reused)
    and return the summary of the best combination on validation."""
    from .runner import run
    best = None
    for single in cut_grid_opts(model, dataset, opts, n):
        summary = run(model, dataset, single, resume=True)
        b = summary["best"]
        if b is not None and (best is None or b["result"]["best_valid"][valid_metric] >
                              best["best"]["result"]["best_valid"][valid_metric]):
            best = summary
    return best or summary


def entry_opts(label: str, model: str, entry_over: Dict[str, Any], overrides: Dict[str, Any], seed: int,
               full_grid: bool) -> Dict[str, Any]:
    """The run overrides of one (entry, seed): an ablation arm's runs go under arm-<label>/."""
    opts = dict(overrides)
    opts.update(entry_over)
    opts["seed"] = [int(seed)]
    opts["grid"] = "full" if full_grid else "first"
    if "checkpoint_dir" in opts or label != model:
        base = Path(str(opts.get("checkpoint_dir") or "saved/"))
        opts["checkpoint_dir"] = str(base / f"arm-{label}") if label != model else str(base)
    return opts


def run_one(model: str, dataset: str, opts: Dict[str, Any], grid_max: Optional[int], valid_metric: str):
    """Train (or reuse) one (entry, seed); the unit of work both the loop below and --ray run."""
    from .runner import run
    if grid_max:
        return _run_cut_grid(model, dataset, opts, int(grid_max), valid_metric)
    return run(model, dataset, opts, resume=True)


def run_entries(entries: Sequence[Entry], dataset: str, seeds: Sequence[int], overrides: Dict[str, Any],
                full_grid: bool = False, extra_keys: Sequence[str] = (),
                grid_max: Optional[int] = None) -> List[Dict[str, Any]]:
    """Run every (label, model, overrides) for every seed; returns one row per entry.
    grid_max: search each model's grid cut to at most that many combinations (`cut_grid`)."""
    log = get_logger()
    rows = []
    total = len(entries) * len(seeds)
    n = 0
    for label, model, entry_over in entries:
        per_seed = []
        for seed in seeds:
            n += 1
            log.info("### [%d/%d] %s, seed %s", n, total, label, seed)
            opts = entry_opts(label, model, entry_over, overrides, seed, full_grid)
            t0 = time.time()
            summary = run_one(model, dataset, opts, grid_max, summary_valid_metric(overrides))
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
    write_csv(out_dir / "table.csv", rows)
    write_json(out_dir / "runs.json", rows)
    return out_dir / "table.md"


def write_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    """The aggregated rows as CSV (every key of the first row but the per-seed `runs`), written atomically."""
    buf = io.StringIO()
    keys = [k for k in rows[0] if k != "runs"] if rows else []
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in keys})
    atomic_write(Path(path), lambda fh: fh.write(buf.getvalue()))


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


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    """--ray / --ray_address / --ray_gpus (mmrec_egra.fanout), shared by main.py and compare."""
    p.add_argument("--ray", action="store_true", help="run the runs as Ray tasks on a local cluster "
                   "(pip install 'ray>=2.9'); finished runs are reused")
    p.add_argument("--ray_address", default=None, metavar="ADDR",
                   help="Ray cluster to use instead of a local one (e.g. auto or ray://host:10001); implies --ray")
    p.add_argument("--ray_gpus", type=float, default=None, metavar="G",
                   help="GPUs per task (default: 1 when the cluster has GPUs, else 0; 0.5 shares a GPU by two)")


def compare_overrides(rest: List[str], longtail: bool) -> Dict[str, Any]:
    """The config overrides of a compare command line (its `--key value` pairs and --longtail);
    also used by results/finished_runs.py, so that both find the same run folders."""
    overrides = parse_cli_overrides(rest)
    overrides.setdefault("show_progress", False)
    if longtail:
        overrides["longtail_eval"] = True
    return overrides


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
    p.add_argument("--grid-max", type=int, default=None, metavar="N",
                   help="search each model's grid cut to at most N combinations (evenly spaced in grid "
                        "order, first and last kept; the same rule for every model), chosen on valid per seed")
    p.add_argument("--out", default=None, help="folder for table.md / table.csv / runs.json")
    p.add_argument("--longtail", action="store_true", help="also report head/tail test Recall@20 and NDCG@20")
    p.add_argument("--plan", action="store_true",
                   help="train nothing: list every run these arguments need, which are finished / running / "
                        "partial / new, and the estimated time left (from finished runs in checkpoint_dir)")
    add_ray_arguments(p)
    args, rest = p.parse_known_args(argv)
    try:
        overrides = compare_overrides(rest, args.longtail)
        extra = ("head/recall@20", "tail/recall@20", "tail/ndcg@20") if args.longtail else ()
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
        how = (f"grid cut to at most {args.grid_max} combinations, searched on valid" if args.grid_max else
               "grid searched on valid" if args.grid else "default configuration")
        title += f" (seeds {' '.join(map(str, args.seeds))}; {how})"
        if args.plan:
            from .plan import plan_entries, plan_markdown
            print(f"# Plan: {title}\n\n" + plan_markdown(plan_entries(entries, args.dataset, args.seeds, overrides,
                                                                       args.grid, args.grid_max)))
            return 0
        if args.ray or args.ray_address:      # train every (entry, seed) as a Ray task; gathered below
            from .fanout import prerun_entries
            prerun_entries(entries, args.dataset, args.seeds, overrides, args.grid, args.grid_max,
                           args.ray_address, args.ray_gpus)
        rows = run_entries(entries, args.dataset, args.seeds, overrides, args.grid, extra, args.grid_max)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(args.out) if args.out else Path(str(overrides.get("checkpoint_dir") or "saved")) / \
            f"{'ablation-' + args.ablation if args.ablation else 'compare'}-{args.dataset}-{stamp}"
        path = write_tables(out, title, rows, summary_valid_metric(overrides), extra)
        from .report import write_html_report
        write_html_report(out, title, rows, summary_valid_metric(overrides), extra, args.dataset)
        print(path.read_text())
        print(f"tables written to {out}/table.md, table.csv, runs.json; charts: {out}/report.html")
    except MMRecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:   # finished runs are saved; the stopped one resumes from last.pt
        return report_interrupt(exc, " (compare itself needs no --resume: the same command reuses finished "
                                     "runs and continues the stopped one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
