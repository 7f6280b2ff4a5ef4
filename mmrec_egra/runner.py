"""Run a model on a dataset over its grid: MMRec's quick_start, with results saved.

Layout of a run (under `checkpoint_dir`, default saved/):
  saved/<Model>-<dataset>/
    run.log                       console log of every invocation (appended)
    summary.json / summary.md / summary.csv   one row per combination, best marked
    <combination>/config.json     resolved configuration of that combination
                 /history.json    per-epoch loss, valid and test metrics, timings
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
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .config import Config, available_names
from .data import EvalDataLoader, build_loaders, load_dataset
from .evaluation import TopKEvaluator, popularity_groups
from .registry import canonical_name, get_model
from .trainer import Trainer
from .utils import MMRecError, add_log_file, atomic_write, get_logger, init_seed, resolve_device, write_json

VOLATILE_KEYS = {"show_progress", "epochs", "checkpoint_dir", "save_model", "device", "eval_batch_size", "resume",
                 "save_recommended_topk", "use_gpu", "_combo_key", "config_dir"}


def make_config(model: str, dataset: str, overrides: Optional[Dict[str, Any]] = None) -> Config:
    """Resolve the model class name and dataset, then merge the configuration."""
    cls = get_model(model)
    config = Config(canonical_name(model), dataset, overrides, model_config_file=getattr(cls, "config_file", None))
    if not config.dataset_config_found:
        data_dir = Path(config["data_path"]) / dataset
        if not data_dir.is_dir():
            known = available_names(config.config_dir, "dataset")
            raise MMRecError(f"unknown dataset '{dataset}': no configs/dataset/{dataset}.yaml and no folder "
                             f"{data_dir}. Known datasets: {', '.join(known)}. Add a dataset yaml or point "
                             f"--data_path at the folder holding '{dataset}/'.")
        get_logger().warning("no configs/dataset/%s.yaml; using overall defaults for %s", dataset, data_dir)
    if getattr(cls, "is_multimodal", False):
        config["is_multimodal_model"] = True
    config["device"] = resolve_device(config["device"])
    return config


def combo_name(index: int, combo: Dict[str, Any]) -> str:
    text = "_".join(f"{k}={v}" for k, v in combo.items())
    text = re.sub(r"[^A-Za-z0-9_.=+-]", "", text)[:80]
    return f"{index:03d}_{text}"


def combo_key(config: Config) -> str:
    blob = {k: v for k, v in config.items() if k not in VOLATILE_KEYS}
    return hashlib.blake2b(json.dumps(blob, sort_keys=True, default=str).encode(), digest_size=10).hexdigest()


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
    from .artifacts import artifact_dir_for, open_store
    from .pipeline import export_items, export_key
    kind = str(config["teacher_embedding"] or "final")
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


def train_combination(config: Config, dataset, loaders, run_dir: Optional[Path], resume: bool = False,
                      model_factory=None):
    """Seed, build, fit one combination; returns (model, trainer, result dict)."""
    train_loader, valid_loader, test_loader = loaders
    seed = int(config["seed"])
    if config["threads"]:
        torch.set_num_threads(int(config["threads"]))
    init_seed(seed, config["deterministic"] is not False)
    train_loader.set_seed(seed)
    cls = model_factory or get_model(config["model"])
    prepare = getattr(cls, "prepare", None)
    if prepare is not None:            # e.g. EGRA's stage 1 (teacher training / reuse)
        prepare(config, dataset, loaders)
        init_seed(seed, config["deterministic"] is not False)
        train_loader.set_seed(seed)
    model = cls(config, train_loader).to(config["device"])
    trainer = Trainer(config, model, run_dir)
    if config["longtail_eval"]:
        trainer.item_groups = popularity_groups(dataset.item_popularity(), float(config["longtail_head_ratio"] or 0.2))
    resume_path = run_dir / "last.pt" if (resume and run_dir is not None) else None
    result = trainer.fit(train_loader, valid_loader, test_loader, resume_path=resume_path)
    trainer.load_best()
    return model, trainer, result


def run(model: str, dataset: str, overrides: Optional[Dict[str, Any]] = None, resume: bool = False,
        save: bool = True) -> Dict[str, Any]:
    """Run every grid combination of `model` on `dataset`; returns the summary dict."""
    log = get_logger()
    config = make_config(model, dataset, overrides)
    name = config["model"]
    out_root = Path(str(config["checkpoint_dir"] or "saved/"))
    if not out_root.is_absolute():
        out_root = Path.cwd() / out_root
    run_root = out_root / f"{name}-{dataset}"
    handler = add_log_file(run_root / "run.log") if save else None
    try:
        log.info("model %s on %s (device %s); configs: %s", name, dataset, config["device"],
                 ", ".join(config.sources))
        ds = load_dataset(config)
        loaders = build_loaders(config, ds)
        grid = config.grid()
        if str(config["grid"] or "full").lower() == "first":
            grid = grid[:1] if len(grid) <= 1 else [dict(zip(config.grid_keys, [config[k][0] for k in config.grid_keys]))]
        log.info("grid over %s: %d combination(s)", config.grid_keys, len(grid))
        rows: List[Dict[str, Any]] = []
        for idx, combo in enumerate(grid):
            cfg = config.for_combination(combo)
            cfg["_combo_key"] = combo_key(cfg)
            run_dir = run_root / combo_name(idx, combo) if save else None
            log.info("=== combination %d/%d: %s", idx + 1, len(grid), combo)
            if resume and run_dir is not None and (run_dir / "result.json").is_file():
                prev = json.loads((run_dir / "result.json").read_text())
                if prev.get("config_key") == cfg["_combo_key"]:
                    log.info("already finished (resume): best epoch %s", prev["result"]["best_epoch"])
                    rows.append(prev)
                    continue
            if run_dir is not None:
                write_json(run_dir / "config.json", {k: v for k, v in cfg.items() if not isinstance(v, np.ndarray)})
            t0 = time.time()
            model_obj, trainer, result = train_combination(cfg, ds, loaders, run_dir, resume=resume)
            result["total_seconds"] = round(time.time() - t0, 2)
            row = {"index": idx, "combination": combo, "config_key": cfg["_combo_key"], "result": result,
                   "dir": str(run_dir) if run_dir else None}
            if cfg["export_item_embeddings"]:
                row["export"] = export_combination(model_obj, cfg, ds, run_dir)
            if run_dir is not None:
                write_json(run_dir / "result.json", row)
                if cfg["save_recommended_topk"]:
                    k = max(int(x) for x in cfg["topk"])
                    save_topk(model_obj, ds, cfg, run_dir / "topk.tsv", k)
                    log.info("top-%d recommendations written to %s", k, run_dir / "topk.tsv")
            rows.append(row)
            log.info("combination %d: best epoch %s, valid %s, test %s", idx + 1, result["best_epoch"],
                     _fmt(result["best_valid"]), _fmt(result["best_test"]))
        summary = summarize(rows, config)
        if save:
            write_summary(run_root, summary, config)
        log.info("\n%s", summary_markdown(summary, config))
        return summary
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _fmt(metrics: Dict[str, float], keys=("recall@10", "recall@20", "ndcg@10", "ndcg@20")) -> str:
    return " ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


def summarize(rows: List[Dict[str, Any]], config: Config) -> Dict[str, Any]:
    vm = str(config["valid_metric"]).lower()
    scored = [r for r in rows if r["result"]["best_valid"]]
    best = max(scored, key=lambda r: r["result"]["best_valid"][vm]) if scored else None
    return {"model": config["model"], "dataset": config["dataset"], "valid_metric": vm, "rows": rows,
            "best_index": best["index"] if best else None, "best": best}


def summary_markdown(summary: Dict[str, Any], config: Config) -> str:
    keys = [f"{m.lower()}@{k}" for m in ("recall", "ndcg") for k in (10, 20) if k in (config["topk"] or [])]
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
