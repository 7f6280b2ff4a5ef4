"""MMRec-compatible base class for every model.

A model is built as `Model(config, dataloader)` and must work both in our host and in
a real MMRec checkout. It may only rely on:
  config[key]                        (missing key -> None; grid values already scalars)
  dataloader.dataset.get_user_num() / get_item_num()
  dataloader.inter_matrix(form='coo'|'csr')   (training rows, value 1)
The host calls pre_epoch_processing(), calculate_loss(batch), post_epoch_processing()
and full_sort_predict(batch) (batch[0] = user ids); masking happens outside the model.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn

from ..artifacts import artifact_dir_for
from ..cache import GraphCache
from ..config import modality_files
from ..utils import MMRecError


def _device_of(config) -> torch.device:
    dev = config["device"]
    if isinstance(dev, torch.device):
        return dev
    if dev is None or str(dev).lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(dev))


def _load_features_mmrec_way(config, n_items: int) -> "OrderedDict[str, np.ndarray]":
    """Foreign host: read <data_path><dataset>/<file> for each modality file that exists."""
    root = os.path.abspath(str(config["data_path"] or "") + str(config["dataset"] or ""))
    feats: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for name, fname in modality_files(config).items():
        path = os.path.join(root, fname)
        if os.path.isfile(path):
            arr = np.load(path, allow_pickle=False)
            if arr.ndim != 2 or arr.shape[0] != n_items:
                raise MMRecError(f"feature file {path} has shape {arr.shape}; expected [{n_items}, d] "
                                 f"(one row per item id)")
            feats[name] = arr.astype(np.float32, copy=False)
    return feats


class GeneralRecommender(nn.Module):
    """Base of all models: MMRec attributes plus helpers shared by our models.

    Attributes: n_users, n_items, device, batch_size, config, and for multimodal models
    `mm_feats` (ordered name -> float tensor [n_items, d] on device) with MMRec's
    `v_feat` (image) and `t_feat` (text, or the second modality when there is no text,
    as MMRec users do with TikTok's audio) for code written against MMRec.
    """

    #: set True in subclasses that need at least one modality
    is_multimodal: bool = False
    #: 'pairwise' models train on [3, B] batches (user, pos, neg); 'pointwise' on [2, B]
    input_type: str = "pairwise"

    def __init__(self, config, dataloader):
        super().__init__()
        self.config = config
        dataset = dataloader.dataset
        self.n_users = int(dataset.get_user_num())
        self.n_items = int(dataset.get_item_num())
        self.batch_size = config["train_batch_size"]
        self.device = _device_of(config)
        self._eval_cache: Dict[str, Any] = {}
        self.mm_feats: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self.v_feat: Optional[torch.Tensor] = None
        self.t_feat: Optional[torch.Tensor] = None
        if self.is_multimodal or config["is_multimodal_model"]:
            self._init_features(config, dataset)

    # ---- features ------------------------------------------------------
    def _init_features(self, config, dataset) -> None:
        feats = getattr(dataset, "features", None)
        if feats is None:
            feats = _load_features_mmrec_way(config, self.n_items)
        if not feats:
            where = getattr(dataset, "data_dir", None) or (str(config["data_path"]) + str(config["dataset"]))
            raise MMRecError(f"{type(self).__name__} is a multimodal model but no feature file was found in {where} "
                             f"(looked for {', '.join(modality_files(config).values()) or 'nothing'}). Put the "
                             f"*_feat.npy files there, set `modalities` in the dataset yaml, or choose an ID-only "
                             f"model such as LightGCN.")
        for name, arr in feats.items():
            self.mm_feats[name] = torch.as_tensor(np.asarray(arr, dtype=np.float32)).to(self.device)
        names = list(self.mm_feats)
        self.v_feat = self.mm_feats.get("image")
        self.t_feat = self.mm_feats.get("text")
        if self.t_feat is None:
            others = [n for n in names if n != "image"]
            self.t_feat = self.mm_feats[others[0]] if others else None
        if self.v_feat is None and "image" not in names:
            others = [n for n in names if self.mm_feats[n] is not self.t_feat]
            self.v_feat = self.mm_feats[others[0]] if others else None

    # ---- helpers for subclasses ----------------------------------------
    def graph_cache(self) -> GraphCache:
        """Content-keyed cache for graphs (disabled with `graph_cache: false`)."""
        enabled = self.config["graph_cache"] is not False
        return GraphCache(artifact_dir_for(self.config) if enabled else None, enabled=enabled)

    def cached(self, key: str, fn: Callable[[], Any]) -> Any:
        """Memoise `fn()` while in eval mode (cleared on every train()/eval() switch).

        Full-ranking evaluation calls full_sort_predict once per user batch; caching the
        propagated embeddings avoids re-running the graph for every batch.
        """
        if self.training:
            return fn()
        if key not in self._eval_cache:
            self._eval_cache[key] = fn()
        return self._eval_cache[key]

    def train(self, mode: bool = True):
        self._eval_cache = {}
        return super().train(mode)

    # ---- MMRec interface -------------------------------------------------
    def pre_epoch_processing(self) -> None:
        """Called before each training epoch (edge dropout, graph refresh ...)."""

    def post_epoch_processing(self) -> Optional[str]:
        """Called after each training epoch; may return a string to log."""
        return None

    def calculate_loss(self, interaction: torch.Tensor):
        raise NotImplementedError

    def full_sort_predict(self, interaction) -> torch.Tensor:
        raise NotImplementedError

    def item_representations(self, kind: str = "final") -> torch.Tensor:
        """Item vectors used for scoring, [n_items, d] (teachers for EGRA implement this).

        `kind`: 'final' (the scoring vectors), 'behaviour' or 'modality' where the model has them.
        """
        raise MMRecError(f"{type(self).__name__} does not expose item representations; choose a teacher "
                         f"model that implements item_representations(), e.g. MGCN")


class PairForwardRecommender(GeneralRecommender):
    """A model whose forward() returns (user embeddings, item embeddings): scoring is their dot
    product (cached between training steps) and the item vectors are its representations."""

    def full_sort_predict(self, interaction):
        u_all, i_all = self.cached("forward", self.forward)
        return u_all[interaction[0]] @ i_all.t()

    def item_representations(self, kind: str = "final") -> torch.Tensor:
        was = self.training
        self.eval()
        with torch.no_grad():
            _, i_all = self.forward()
        self.train(was)
        return i_all


def inter_matrix_csr(dataloader) -> sp.csr_matrix:
    """Training interactions as float32 CSR with value 1 (from any MMRec-style loader)."""
    R = sp.csr_matrix(dataloader.inter_matrix(form="csr"), dtype=np.float32)
    R.data[:] = 1.0
    R.sum_duplicates()
    R.data[:] = 1.0
    return R
