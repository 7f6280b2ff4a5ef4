"""Rebuild a finished run's model from its folder and export its item vectors.

A run folder (`saved/<Model>-<dataset>/<combination>/`) holds config.json (the resolved
configuration) and best.pt (the best-valid weights). `load_run` rebuilds the model from
them; `export_run_items` writes `model.item_representations(kind)` as an .npy, which EGRA
reads with `--teacher_embeddings_file`: a finished run of any model serves as EGRA's
teacher without retraining it (`mmrec-egra export-items RUN_DIR`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .data import build_loaders, load_dataset
from .fit import build_model, make_config
from .pipeline import EXPORT_KINDS, export_items
from .utils import MMRecError, atomic_write, get_logger, torch_load_safe


def _read_config(run_dir: Path) -> Dict[str, Any]:
    path = run_dir / "config.json"
    if not path.is_file():
        raise MMRecError(f"{run_dir} is not a run folder: no config.json. Give a combination folder, "
                         f"e.g. saved/MGCN-baby/seed=999_cl_loss=0.001-<hash>/")
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MMRecError(f"cannot read {path}: {exc}") from None
    if not isinstance(saved, dict) or not saved.get("model") or not saved.get("dataset"):
        raise MMRecError(f"{path} holds no 'model' and 'dataset' keys; it is not a config.json written by a run")
    return saved


def load_run(run_dir: str | Path, data_path: Optional[str] = None, device: str = "cpu"):
    """The model of a finished run with its best-valid weights, in eval mode; returns
    (model, config, dataset). `data_path` replaces the stored one (a run made elsewhere);
    the dataset files must be those the run was trained on (checked by content hash)."""
    run_dir = Path(run_dir)
    saved = _read_config(run_dir)
    best = run_dir / "best.pt"
    if not best.is_file():
        raise MMRecError(f"{run_dir} has no best.pt (the run saved no weights: save_model false, or it stopped "
                         f"before its first evaluation); rerun it with save_model true")
    overrides = {k: v for k, v in saved.items() if not k.startswith("_") and k not in ("model", "dataset")}
    overrides["device"] = device
    if data_path is not None:
        overrides["data_path"] = data_path
    config = make_config(saved["model"], saved["dataset"], overrides)
    for k, v in overrides.items():   # grid keys come back as one-point lists: set the run's own values
        config[k] = v
    dataset = load_dataset(config)
    trained_on = saved.get("_dataset_fingerprint")
    if trained_on and dataset.content_hash() != trained_on:
        raise MMRecError(f"the dataset files under {config['data_path']} differ from those {run_dir} was trained "
                         f"on (content hash {dataset.content_hash()} vs {trained_on}); point --data_path at the "
                         f"run's dataset")
    # as in training; EGRA's prepare hook finds its teacher vectors (stored export or file)
    model = build_model(config, dataset, build_loaders(config, dataset))
    state = torch_load_safe(best, "best-valid checkpoint")
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise MMRecError(f"{best} does not fit {config['model']} as configured in {run_dir / 'config.json'}: "
                         f"{str(exc).splitlines()[0]}") from None
    model.eval()
    config["_best_epoch"] = state.get("epoch")
    return model, config, dataset


def export_run_items(run_dir: str | Path, out: Optional[str | Path] = None, kind: str = "final",
                     data_path: Optional[str] = None) -> Tuple[Path, np.ndarray]:
    """Write a finished run's best-valid item vectors ([n_items, d] float32 .npy, default
    <run_dir>/item_embeddings.npy); returns (path, array)."""
    if kind not in EXPORT_KINDS:
        raise MMRecError(f"kind must be one of {', '.join(EXPORT_KINDS)}, found {kind!r}")
    model, config, _ = load_run(run_dir, data_path=data_path)
    emb = export_items(model, kind)
    path = Path(out) if out is not None else Path(run_dir) / "item_embeddings.npy"
    atomic_write(path, lambda fh: np.save(fh, emb), mode="wb")
    get_logger().info("%s: %s item representations %s of %s (best epoch %s)", path, kind, emb.shape,
                      config["model"], config["_best_epoch"])
    return path, emb
