"""`compare --plan`: what a comparison would train, what is already done, and what is left.

Nothing is trained. For every (entry, seed, grid combination) the comparison would run, the
plan finds the run's folder exactly as the runner does (configuration hash + dataset
fingerprint) and says whether it is finished (result.json: reused), running now (another
process holds its lock), partial (last.pt: resumed) or new; for EGRA-style models it also says
whether the stage-1 teacher export is already in the artifact store. The cost of what is left
is estimated from the model's finished runs under the same checkpoint_dir (median epochs run x
median seconds per epoch); the estimate is only as good as those runs' machine and load.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .utils import get_logger

Entry = Tuple[str, str, Dict[str, Any]]


def _fingerprint(config, cache: Dict[str, str]) -> str:
    """The dataset fingerprint the runner would use (loads the dataset once per set of files)."""
    from .data import load_dataset
    from .data.dataset import modality_files
    key = json.dumps([str(config["data_path"]), str(config["dataset"]), str(config["inter_file_name"]),
                      modality_files(config)], default=str)
    if key not in cache:
        cache[key] = load_dataset(config).content_hash()
    return cache[key]


def _epochs_done(run_dir: Path) -> int:
    """Epochs recorded in a partial run's history.jsonl (one line per epoch)."""
    path = run_dir / "history.jsonl"
    if not path.is_file():
        return 0
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _running(run_dir: Path) -> Optional[str]:
    """'pid N' when another process holds the run's lock (it is training now), else None."""
    lock = run_dir / ".lock"
    if not lock.is_file():
        return None
    try:
        import fcntl
    except ImportError:                # not POSIX: runs take no lock
        return None
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            return fh.read().strip() or "another process"
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None


def _teacher_status(cfg, fingerprint: str, seen: Dict[str, bool]) -> Tuple[Optional[str], Optional[str]]:
    """(status, store key) of the stage-1 teacher of a model that has one (EGRA): 'file',
    'stored' or 'to train (<Teacher>)'; (None, None) for every other model. `seen` memoises
    the store lookup per key (every grid combination of one seed shares its teacher)."""
    if cfg["teacher_model"] is None:
        return None, None
    if cfg["teacher_embeddings_file"]:
        return "file", None
    from .artifacts import artifact_dir_for, open_store
    from .pipeline import export_key, teacher_config_for
    tcfg = teacher_config_for(cfg)
    key = export_key(fingerprint, tcfg, str(cfg["teacher_embedding"] or "final"))
    if key not in seen:            # get() also checks that the entry unpacks: a corrupt one is retrained
        store_dir = artifact_dir_for(cfg)
        seen[key] = (store_dir / "data.mdb").is_file() and open_store(store_dir).get(key) is not None
    return ("stored" if seen[key] else f"to train ({tcfg['model']})"), key


def plan_combinations(model: str, dataset: str, opts: Dict[str, Any], cache: Dict[str, str],
                      teachers: Optional[Dict[str, bool]] = None) -> List[Dict[str, Any]]:
    """One row per combination that `runner.run(model, dataset, opts)` would train
    (`cache`: dataset fingerprints, `teachers`: teacher lookups, both shared across calls)."""
    teachers = {} if teachers is None else teachers
    from .runner import (combinations_to_run, combo_key, combo_name, make_config, resume_plan,
                         run_root_for)
    config = make_config(model, dataset, dict(opts))
    fp = _fingerprint(config, cache)
    root = run_root_for(config)
    rows = []
    for combo in combinations_to_run(config):
        cfg = config.for_combination(combo)
        key = combo_key(cfg, fp)
        run_dir = root / combo_name(combo, key)
        prev = _read_json(run_dir / "result.json")
        how = resume_plan(prev, key, cfg["epochs"]) if prev and "result" in prev else "fresh"
        teacher, teacher_key = _teacher_status(cfg, fp, teachers)
        row: Dict[str, Any] = {"model": config["model"], "combination": combo, "dir": str(run_dir),
                               "teacher": teacher, "teacher_key": teacher_key}
        holder = None if how == "reuse" else _running(run_dir)
        if how == "reuse":
            res = prev["result"]
            row.update(status="finished", best_epoch=res.get("best_epoch"), epochs_done=res.get("epochs_run"),
                       valid=res.get("best_valid", {}).get(str(cfg["valid_metric"]).lower()))
        elif holder is not None:
            row.update(status="running", epochs_done=_epochs_done(run_dir), holder=holder)
        elif (run_dir / "last.pt").is_file() or how == "continue":
            row.update(status="partial", epochs_done=_epochs_done(run_dir))
        else:
            row.update(status="new", epochs_done=0)
        rows.append(row)
    return rows


def model_cost(run_root: Path) -> Optional[Tuple[float, float]]:
    """(median epochs run, median seconds per epoch) over the finished runs in a model's
    folder, or None when it has none with timings."""
    epochs, spe = [], []
    for path in run_root.glob("*/result.json"):
        res = (_read_json(path) or {}).get("result") or {}
        if res.get("epochs_run") and res.get("seconds_per_epoch"):
            epochs.append(float(res["epochs_run"]))
            spe.append(float(res["seconds_per_epoch"]))
    if not epochs:
        return None
    return float(np.median(epochs)), float(np.median(spe))


def plan_entries(entries: Sequence[Entry], dataset: str, seeds: Sequence[int], overrides: Dict[str, Any],
                 full_grid: bool = False, grid_max: Optional[int] = None) -> List[Dict[str, Any]]:
    """Every run of `compare` with these arguments, with its status and estimated seconds left."""
    from .compare import cut_grid_opts, entry_opts
    cache: Dict[str, str] = {}
    teachers: Dict[str, bool] = {}
    costs: Dict[str, Optional[Tuple[float, float]]] = {}
    out = []
    for label, model, entry_over in entries:
        for seed in seeds:
            opts = entry_opts(label, model, entry_over, overrides, seed, full_grid)
            for single in (cut_grid_opts(model, dataset, opts, grid_max) if grid_max else [opts]):
                for row in plan_combinations(model, dataset, single, cache, teachers):
                    root = str(Path(row["dir"]).parent)
                    if root not in costs:
                        costs[root] = model_cost(Path(root))
                    cost = costs[root]
                    left = None
                    if row["status"] != "finished" and cost is not None:
                        left = max(cost[0] - row["epochs_done"], 0.0) * cost[1]
                    out.append(dict(row, label=label, seed=seed, seconds_left=left))
    get_logger().info("plan: %d run(s)", len(out))
    return out


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def plan_markdown(rows: List[Dict[str, Any]]) -> str:
    """The plan as a markdown table plus totals per status and the estimated time left."""
    lines = ["| entry | seed | combination | status | epochs done | best epoch | valid | stage-1 teacher | est. left |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        combo = ", ".join(f"{k}={v}" for k, v in r["combination"].items() if k != "seed") or "(no grid)"
        valid = "" if r.get("valid") is None else f"{r['valid']:.4f}"
        left = "" if r["status"] == "finished" else ("unknown" if r["seconds_left"] is None
                                                      else _hours(r["seconds_left"]))
        lines.append(f"| {r['label']} | {r['seed']} | {combo} | {r['status']} | {r['epochs_done'] or 0} | "
                     f"{'' if r.get('best_epoch') is None else r['best_epoch']} | {valid} | {r['teacher'] or ''} | "
                     f"{left} |")
    n = {s: sum(r["status"] == s for r in rows) for s in ("finished", "running", "partial", "new")}
    known = [r["seconds_left"] for r in rows if r["status"] != "finished" and r["seconds_left"] is not None]
    unknown = sum(r["status"] != "finished" and r["seconds_left"] is None for r in rows)
    # runs of one seed share their teacher: count each export once
    teachers = len({r["teacher_key"] for r in rows if (r["teacher"] or "").startswith("to train")})
    total = (f"\n{len(rows)} run(s): {n['finished']} finished (reused), {n['running']} running now (another "
             f"process), {n['partial']} partial (resumed), {n['new']} new. Estimated time left for {len(known)} "
             f"of them: {_hours(sum(known))} of training, one run at a time, at the speed of each model's "
             f"finished runs in this checkpoint_dir")
    if unknown:
        total += f"; {unknown} run(s) of models with no finished run here: unknown"
    if teachers:
        total += f"; {teachers} stage-1 teacher(s) to train first (not in the estimate)"
    return "\n".join(lines) + total + "."
