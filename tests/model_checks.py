"""Common behavioural checks every model test runs on the demo data."""
from __future__ import annotations

import numpy as np
import torch

from mmrec_egra.evaluation import TopKEvaluator
from mmrec_egra.registry import get_model
from mmrec_egra.trainer import Trainer
from mmrec_egra.utils import init_seed


def build(make_env, name: str, **overrides):
    config, ds, loaders = make_env(name, **overrides)
    init_seed(int(config["seed"]))
    loaders[0].set_seed(int(config["seed"]))
    model = get_model(name)(config, loaders[0])
    return config, ds, loaders, model


def train_epochs(config, model, loaders, n: int):
    """Train n epochs with the real trainer; returns per-epoch total losses."""
    trainer = Trainer(config, model)
    losses = []
    for epoch in range(n):
        model.pre_epoch_processing()
        (total, _), _ = trainer._train_epoch(loaders[0], epoch)
        trainer.scheduler.step()
        model.post_epoch_processing()
        losses.append(total)
    return losses


def check_model(make_env, name: str, epochs: int = 5, **overrides):
    """Registers; loss decreases; full_sort_predict is [B, n_items]; beats random on valid."""
    assert get_model(name.lower()) is get_model(name)
    config, ds, loaders, model = build(make_env, name, **overrides)
    losses = train_epochs(config, model, loaders, epochs)
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], f"{name}: loss did not decrease: {losses}"
    model.eval()
    users = torch.arange(7)
    with torch.no_grad():
        scores = model.full_sort_predict((users, None))
    assert scores.shape == (7, ds.n_items)
    assert torch.isfinite(scores).all()
    ev = TopKEvaluator(config)
    res = ev.evaluate(model, loaders[1])
    # a random ranker's expected Recall@20 is about 20 / n_items
    random_recall = 20 / ds.n_items
    assert res["recall@20"] > 3 * random_recall, f"{name}: recall@20 {res['recall@20']:.4f} vs random {random_recall:.4f}"
    return config, ds, loaders, model, losses, res
