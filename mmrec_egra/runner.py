"""Run a model on a dataset over its grid: MMRec's quick_start, with results saved.

Layout of a run (under `checkpoint_dir`, default saved/):
  saved/<Model>-<dataset>/
    run.log                       console log of every invocation (appended)
    summary.json / summary.md / summary.csv   one row per combination, best marked
    <combination>/config.json     resolved configuration of that combination
      (folder name: the grid values, then a hash of the full resolved configuration and
      of the dataset files, so runs differing in any result-changing key never share one)
                 /history.json    per-epoch loss, valid and test metrics, timings (written at the stop;
                                  history.jsonl: the same, one line appended per epoch)
                 /result.json     best-valid epoch, its valid and test metrics
                 /best.pt         best-valid weights; last.pt: state for --resume
                 /topk.tsv        top-k recommendations (save_recommended_topk)
The best combination is chosen on VALIDATION (valid_metric), never on test.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from .artifacts import artifact_dir_for, open_store
from .config import Config
from .data import EvalDataLoader, build_loaders, load_dataset
from .distributed import current, init_from_env, shutdown
from .evaluation import TopKEvaluator
from .fit import make_config, train_combination   # noqa: F401  (also the public entry points)
from .pipeline import export_items, export_key
from .report import after_combination, check_log_backend, final_table
from .trainer import RunInterrupted
from .utils import MMRecError, add_log_file, atomic_write, clean_stale_temps, get_logger, write_json

# Keys left out of a combination's identity (its folder name and checkpoint key): they do
# not change what is learned (where files go, logging, evaluation batching, the device),
# or, for `epochs`, so that --resume can extend an interrupted run's budget. The dataset
# enters through the fingerprint of its files, not through data_path. Keys starting
# with "_" are run-time bookkeeping and are left out too.
VOLATILE_KEYS = {"show_progress", "epochs", "checkpoint_dir", "save_model", "device", "eval_batch_size", "resume",
                 "save_recommended_topk", "use_gpu", "config_dir", "log_backend", "data_path", "artifact_dir",
                 "graph_cache", "export_item_embeddings", "threads", "grid", "eval_chunk_elems", "checkpoint_every"}
RUN_OUTPUTS = ("result.json", "history.json", "history.jsonl", "last.pt", "best.pt", "topk.tsv",
               "item_embeddings.npy", "curves.png")


def combo_prefix(combo: Dict[str, Any]) -> str:
    """The readable part of a combination's folder name: its grid values."""
    text = "_".join(f"{k}={v}" for k, v in combo.items())
    return re.sub(r"[^A-Za-z0-9_.=+-]", "", text)[:80]


def combo_name(combo: Dict[str, Any], key: str) -> str:
    """Folder of a combination: grid values (to find it) + identity hash (to never share it)."""
    return f"{combo_prefix(combo)}-{key[:12]}"


def run_root_for(config: Config) -> Path:
    """<checkpoint_dir>/<Model>-<dataset>: the folder of a model's runs on a dataset."""
    out_root = Path(str(config["checkpoint_dir"] if config["checkpoint_dir"] is not None else "saved/"))
    if not out_root.is_absolute():
        out_root = Path.cwd() / out_root
    return out_root / f"{config['model']}-{config['dataset']}"


def combinations_to_run(config: Config) -> List[Dict[str, Any]]:
    """The grid combinations run() trains: the whole grid, or only its first with `grid: first`."""
    grid = config.grid()
    if str(config["grid"] if config["grid"] is not None else "full").lower() == "first" and len(grid) > 1:
        grid = [dict(zip(config.grid_keys, [config[k][0] for k in config.grid_keys]))]
    return grid


def combo_key(config: Config, dataset_fingerprint: Optional[str] = None) -> str:
    """Hash of the full resolved configuration (minus VOLATILE_KEYS) and the dataset files."""
    blob = {k: v for k, v in config.items() if k not in VOLATILE_KEYS and not str(k).startswith("_")}
    blob["_dataset"] = dataset_fingerprint
    return hashlib.blake2b(json.dumps(blob, sort_keys=True, default=str).encode(), digest_size=10).hexdigest()


@contextmanager
def run_dir_lock(run_dir: Path):
    """Exclusive lock on a combination's folder: a second process on the same configuration
    fails at once with a clear message instead of mixing its files with the first's."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:                # not POSIX: no lock (the hash still separates configurations)
        yield
        return
    fh = open(run_dir / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            who = fh.read().strip() or "another process"
            raise MMRecError(f"{run_dir} is in use by {who} running the same configuration; wait for it to "
                             f"finish (then rerun with --resume to reuse its result) or use another "
                             f"checkpoint_dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        fh.close()                     # closing releases the lock, also when the process is killed


def read_result(run_dir: Path) -> Optional[Dict[str, Any]]:
    """result.json of a finished combination, or None (absent; or unreadable: warned, moved aside)."""
    path = run_dir / "result.json"
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
        row["result"]["best_epoch"]
        return row
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        path.replace(path.with_name("result.json.damaged"))
        get_logger().warning("%s is unreadable (%s): moved it to result.json.damaged; training this combination "
                             "again", path, exc)
        return None


def resume_plan(prev: Optional[Dict[str, Any]], key: str, epochs: Any) -> str:
    """'reuse' a finished result, 'continue' from last.pt (a larger epoch budget), or 'fresh'."""
    if prev is None or prev.get("config_key") != key:
        return "fresh"
    res = prev["result"]
    budget, done = prev.get("epochs"), int(res.get("epochs_run") or 0)
    cur = int(epochs) if epochs is not None else 1000
    if budget is None or budget == cur:
        return "reuse"
    if done < budget and done <= cur:   # stopped early (or NaN) inside both budgets: the same result
        return "reuse"
    # "capped": ran its whole budget ("finished" in result.json files of earlier versions)
    if budget < cur and done == budget and res.get("status") in ("capped", "finished"):
        return "continue"
    return "fresh"


def _note_changed_dataset(run_root: Path, prefix: str, fingerprint: str, run_dir: Path) -> None:
    """On --resume, say so when an earlier run of these grid values used other dataset files."""
    for other in run_root.glob(f"{_glob_escape(prefix)}-*"):
        if other == run_dir or not (other / "config.json").is_file():
            continue
        try:
            old = json.loads((other / "config.json").read_text()).get("_dataset_fingerprint")
        except (ValueError, OSError):
            continue
        if old and old != fingerprint:
            get_logger().warning("the dataset files changed since the run in %s (fingerprint %s, now %s): its "
                                 "results are not reused; training afresh in %s", other, old, fingerprint, run_dir)
            return


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _clear_outputs(run_dir: Path) -> None:
    """Remove a previous attempt's outputs before a fresh start, so no file of it can be
    mistaken for this run's (the folder is this configuration's: nothing of another is lost)."""
    old = [f for f in RUN_OUTPUTS if (run_dir / f).is_file()]
    for f in old:
        (run_dir / f).unlink()
    if old:
        get_logger().info("fresh start in %s: removed the previous attempt's %s", run_dir, ", ".join(old))


def save_topk(model, dataset, config, path: Path, k: int) -> None:
    """Top-k items (training items masked) for every user with training rows, as TSV."""
    loader = EvalDataLoader(config, dataset, "valid")
    train = dataset.inter_matrix("csr", "train")
    loader.users = np.flatnonzero(np.diff(train.indptr) > 0)
    ev = TopKEvaluator(config)
    ev.max_k = k
    users, top = ev.rank(model, loader)

    def write(fh):
        fh.write("userID\titemIDs\n")
        for u, row in zip(users, top):
            fh.write(f"{u}\t{','.join(map(str, row))}\n")
    atomic_write(path, write)


def export_combination(model, config: Config, dataset, run_dir: Optional[Path]) -> Dict[str, Any]:
    """--export_item_embeddings: best-valid item vectors to <combo>/item_embeddings.npy and the store."""
    kind = str(config["teacher_embedding"] if config["teacher_embedding"] is not None else "final")
    emb = export_items(model, kind)
    key = export_key(dataset.content_hash(), config, kind)
    open_store(artifact_dir_for(config)).put(key, {"items": emb}, {"teacher": config["model"], "kind": kind,
                                                                  "seed": config["seed"],
                                                                  "protocol": "valid-early-stopping"})
    out = {"key": key, "shape": list(emb.shape)}
    if run_dir is not None:
        path = run_dir / "item_embeddings.npy"
        atomic_write(path, lambda fh: np.save(fh, emb), mode="wb")
        out["file"] = str(path)
    get_logger().info("exported %s item representations %s: %s (store key %s)", kind, emb.shape,
                      out.get("file", "(not saved to a file)"), key)
    return out


def run(model: str, dataset: str, overrides: Optional[Dict[str, Any]] = None, resume: bool = False,
        save: bool = True) -> Dict[str, Any]:
    """Run every grid combination of `model` on `dataset`; returns the summary dict."""
    log = get_logger()
    config = make_config(model, dataset, overrides)
    name = config["model"]
    run_root = run_root_for(config)
    handler = add_log_file(run_root / "run.log") if save else None
    try:
        log.info("model %s on %s (device %s); configs: %s", name, dataset, config["device"],
                 ", ".join(config.sources))
        check_log_backend(config)          # before any training: a missing tensorboard fails now
        if save:
            clean_stale_temps(run_root)    # orphans of a run killed mid-write
        ds = load_dataset(config)
        loaders = build_loaders(config, ds)
        # identity of the dataset files: a changed .inter or feature file never reuses old results
        fingerprint = ds.content_hash() if save else None
        grid = combinations_to_run(config)
        log.info("grid over %s: %d combination(s)", config.grid_keys, len(grid))
        rows: List[Dict[str, Any]] = []
        for idx, combo in enumerate(grid):
            cfg = config.for_combination(combo)
            cfg["_combo_key"] = combo_key(cfg, fingerprint)
            cfg["_dataset_fingerprint"] = fingerprint
            run_dir = run_root / combo_name(combo, cfg["_combo_key"]) if save else None
            log.info("=== combination %d/%d: %s", idx + 1, len(grid), combo)
            if run_dir is None:
                row = _train_row(cfg, ds, loaders, None, idx, combo, resume=False)
            else:
                with run_dir_lock(run_dir):
                    prev = read_result(run_dir) if resume else None
                    plan = resume_plan(prev, cfg["_combo_key"], cfg["epochs"]) if resume else "fresh"
                    if plan == "reuse":
                        row = prev
                        row["index"] = idx
                        log.info("already finished (resume): best epoch %s in %s", row["result"]["best_epoch"],
                                 run_dir)
                        rows.append(row)
                        continue
                    if resume and plan == "fresh" and not (run_dir / "last.pt").is_file():
                        _note_changed_dataset(run_root, combo_prefix(combo), fingerprint, run_dir)
                    if plan == "continue":
                        log.info("resume: the epoch budget grew to %s; continuing from %s", cfg["epochs"],
                                 run_dir / "last.pt")
                        (run_dir / "result.json").unlink()
                    elif not resume or prev is not None:
                        _clear_outputs(run_dir)       # no stale file may mix with this run's
                    write_json(run_dir / "config.json",
                               {k: v for k, v in cfg.items() if not isinstance(v, np.ndarray)})
                    row = _train_row(cfg, ds, loaders, run_dir, idx, combo, resume=resume)
            result = row["result"]
            rows.append(row)
            log.info("combination %d: best epoch %s, valid %s, test %s", idx + 1, result["best_epoch"],
                     _fmt(result["best_valid"]), _fmt(result["best_test"]))
        summary = summarize(rows, config)
        if save:
            write_summary(run_root, summary, config)
        log.info("\n%s", summary_markdown(summary, config))
        log.info("\n%s", final_table(summary, run_root if save else None))
        return summary
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _train_row(cfg: Config, ds, loaders, run_dir: Optional[Path], idx: int, combo: Dict[str, Any],
               resume: bool) -> Dict[str, Any]:
    """Train one combination and write its outputs; returns its summary row."""
    log = get_logger()
    t0 = time.time()
    model_obj, trainer, result = train_combination(cfg, ds, loaders, run_dir, resume=resume)
    # with the time of earlier processes when resumed (seconds per epoch come from the full history)
    result["total_seconds"] = round(time.time() - t0 + trainer.prior_seconds, 2)
    row = {"index": idx, "combination": combo, "config_key": cfg["_combo_key"], "epochs": cfg["epochs"],
           "dataset_fingerprint": cfg["_dataset_fingerprint"], "result": result,
           "dir": str(run_dir) if run_dir else None}
    if cfg["export_item_embeddings"]:
        row["export"] = export_combination(model_obj, cfg, ds, run_dir)
    if run_dir is not None:
        if cfg["save_recommended_topk"]:
            k = max(int(x) for x in cfg["topk"])
            save_topk(model_obj, ds, cfg, run_dir / "topk.tsv", k)
            log.info("top-%d recommendations written to %s", k, run_dir / "topk.tsv")
        after_combination(run_dir, cfg)    # curves.png (+ TensorBoard events)
        write_json(run_dir / "result.json", row)   # last: its presence means "finished, all files written"
    if trainer._stop_signal is not None:   # a signal in the epoch that ended this combination: stop now
        raise RunInterrupted(f"{signal.Signals(trainer._stop_signal).name}: stopped after combination {idx} "
                             f"finished; rerun the same command with --resume to continue", trainer._stop_signal)
    return row


def _fmt(metrics: Dict[str, float], keys=("recall@10", "recall@20", "ndcg@10", "ndcg@20")) -> str:
    return " ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


def summarize(rows: List[Dict[str, Any]], config: Config) -> Dict[str, Any]:
    vm = str(config["valid_metric"]).lower()
    scored = [r for r in rows if r["result"]["best_valid"]]
    best = max(scored, key=lambda r: r["result"]["best_valid"][vm]) if scored else None
    return {"model": config["model"], "dataset": config["dataset"], "valid_metric": vm, "rows": rows,
            "best_index": best["index"] if best else None, "best": best}


def summary_markdown(summary: Dict[str, Any], config: Config) -> str:
    keys = [f"{m.lower()}@{k}" for m in ("recall", "ndcg") for k in (10, 20) if k in (config["topk"] if config["topk"] is not None else [])]
    head = ["#", "combination", "status", "best epoch", f"valid {summary['valid_metric']}"] + [f"test {k}" for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        res = r["result"]
        mark = " **best**" if r["index"] == summary["best_index"] else ""
        cells = [str(r["index"]) + mark, json.dumps(r["combination"]), res["status"], str(res["best_epoch"]),
                 f"{res['best_valid'].get(summary['valid_metric'], float('nan')):.4f}"]
        cells += [f"{res['best_test'].get(k, float('nan')):.4f}" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(run_root: Path, summary: Dict[str, Any], config: Config) -> None:
    write_json(run_root / "summary.json", summary)
    atomic_write(run_root / "summary.md", lambda fh: fh.write(
        f"# {summary['model']} on {summary['dataset']} (best chosen on valid {summary['valid_metric']})\n\n"
        + summary_markdown(summary, config) + "\n"))
    buf = io.StringIO()
    w = csv.writer(buf)
    metric_keys = sorted({k for r in summary["rows"] for k in r["result"]["best_test"]})
    w.writerow(["index", "combination", "status", "best_epoch", "seconds_per_epoch", "best"] +
               [f"valid_{k}" for k in metric_keys] + [f"test_{k}" for k in metric_keys])
    for r in summary["rows"]:
        res = r["result"]
        w.writerow([r["index"], json.dumps(r["combination"]), res["status"], res["best_epoch"],
                    res.get("seconds_per_epoch"), r["index"] == summary["best_index"]] +
                   [res["best_valid"].get(k) for k in metric_keys] + [res["best_test"].get(k) for k in metric_keys])
    atomic_write(run_root / "summary.csv", lambda fh: fh.write(buf.getvalue()))


def run_distributed(model: str, dataset: str, overrides: Optional[Dict[str, Any]] = None,
                    resume: bool = False, save: bool = True) -> Dict[str, Any]:
    """`runner.run` as one rank of a torchrun job: rank 0 writes and logs, all ranks train."""
    if resume:
        raise MMRecError("--resume is not supported with --distributed (every rank must take the same "
                         "reuse/continue decision); rerun the interrupted grid without --distributed --resume, "
                         "or start it afresh")
    overrides = dict(overrides or {})
    owns_group = current() is None       # a caller that set up the group keeps it for further runs
    ctx = current() or init_from_env(overrides.get("device"))
    log = get_logger()
    level = log.level
    try:
        overrides["device"] = str(ctx.device)
        if ctx.device.type == "cpu" and not overrides.get("threads"):
            # the ranks share the machine's cores
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
            overrides["threads"] = max(1, (os.cpu_count() or 1) // local_world)
        if not ctx.is_main:
            log.setLevel(logging.WARNING)
            overrides["show_progress"] = False
        log.info("distributed: %d processes (%s), global batch split across ranks", ctx.world_size, ctx.backend)
        return run(model, dataset, overrides, resume=False, save=save and ctx.is_main)
    finally:
        log.setLevel(level)
        if owns_group:
            shutdown()
