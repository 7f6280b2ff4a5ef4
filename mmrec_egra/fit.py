"""Resolve a configuration and fit one grid combination: the layer below `runner` (grids,
run folders, summaries) and `pipeline` (EGRA's stage 1), which both build on it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .config import Config, available_names
from .evaluation import popularity_groups
from .registry import canonical_name, get_model
from .trainer import Trainer
from .utils import MMRecError, get_logger, init_seed, resolve_device


def make_config(model: str, dataset: str, overrides: Optional[Dict[str, Any]] = None) -> Config:
    """Resolve the model class name and dataset, then merge the configuration."""
    cls = get_model(model)
    config = Config(canonical_name(model), dataset, overrides, model_config_file=getattr(cls, "config_file", None),
                    extra_keys=getattr(cls, "config_keys", ()))
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



def build_model(config: Config, dataset, loaders, model_factory=None):
    """Seed, run the model class's `prepare` hook if any (e.g. EGRA's stage 1: teacher
    training / reuse), seed again, and construct the model on config['device']."""
    train_loader = loaders[0]
    seed = int(config["seed"])
    deterministic = config["deterministic"] is not False
    init_seed(seed, deterministic)
    train_loader.set_seed(seed)
    cls = model_factory or get_model(config["model"])
    prepare = getattr(cls, "prepare", None)
    if prepare is not None:
        prepare(config, dataset, loaders)
        init_seed(seed, deterministic)
        train_loader.set_seed(seed)
    return cls(config, train_loader).to(config["device"])


def train_combination(config: Config, dataset, loaders, run_dir: Optional[Path], resume: bool = False,
                      model_factory=None):
    """Seed, build, fit one combination; returns (model, trainer, result dict)."""
    train_loader, valid_loader, test_loader = loaders
    if config["threads"]:
        torch.set_num_threads(int(config["threads"]))
    model = build_model(config, dataset, loaders, model_factory)
    trainer = Trainer(config, model, run_dir)
    if config["longtail_eval"]:
        ratio = config["longtail_head_ratio"]
        trainer.item_groups = popularity_groups(dataset.item_popularity(), float(0.2 if ratio is None else ratio))
    resume_path = run_dir / "last.pt" if (resume and run_dir is not None) else None
    result = trainer.fit(train_loader, valid_loader, test_loader, resume_path=resume_path)
    trainer.load_best()
    return model, trainer, result
