"""Helpers shared by the multimodal baselines (not a model: the leading underscore keeps
the auto-discovery in models/__init__.py from importing it as one).

Features are FIXED inputs by default (`freeze_features: true`): the reference toolbox
(MMRec) wraps them in trainable embedding tables, so Adam rewrites a [n_items, d] table
every step (tens of millions of parameters on Amazon-sized features) for a small or no
gain. `freeze_features: false` restores that behaviour (the tables start at the raw
features and are trained with the model); graphs built from the raw features stay fixed
either way.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict

import torch
import torch.nn as nn


def setup_feature_inputs(model: nn.Module, config) -> None:
    """Create `model.feat_tables` (trainable copies) when `freeze_features` is false."""
    model.freeze_features = config["freeze_features"] is not False
    if not model.freeze_features:
        model.feat_tables = nn.ParameterDict(
            {name: nn.Parameter(f.detach().clone()) for name, f in model.mm_feats.items()})


def feature(model: nn.Module, name: str) -> torch.Tensor:
    """The current feature matrix of modality `name` ([n_items, d_m])."""
    if getattr(model, "freeze_features", True):
        return model.mm_feats[name]
    return model.feat_tables[name]


def feature_projections(model: nn.Module, dim: int, init: str = "default") -> nn.ModuleDict:
    """One Linear(d_m -> dim) per available modality ('xavier_normal' init or torch's default)."""
    layers: Dict[str, nn.Module] = OrderedDict()
    for name, f in model.mm_feats.items():
        lin = nn.Linear(f.shape[1], dim)
        if init == "xavier_normal":
            nn.init.xavier_normal_(lin.weight)
        layers[name] = lin
    return nn.ModuleDict(layers)

