"""Shared building blocks for models (not models themselves).

- `modality_knn_graphs`: per-modality raw-feature kNN item graphs, built once and cached.
- `normalized_interactions`: R_norm = D_u^-1/2 R D_i^-1/2 (the user-item block of A_ui).
- `ModalityBranch`: MGCN's modality side (Yu et al., ACM MM'23) for any number of
  modalities; reused by MGCN, EGRA and SIGE.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn

from .graphs import SparseMat, knn_cache_params, knn_graph, resolve_knn_backend, sym_normalize

SparseLike = Union[torch.Tensor, sp.spmatrix, SparseMat]


# ---------------------------------------------------------------------------------------
# graphs for the modality branch
# ---------------------------------------------------------------------------------------
def normalized_interactions(inter: sp.spmatrix) -> sp.csr_matrix:
    """R_norm [n_users, n_items] with value 1/sqrt(d_u d_i): the user-item block of
    D^-1/2 [[0, R], [R^T, 0]] D^-1/2 (zero-degree rows/columns stay zero)."""
    R = sp.csr_matrix(inter, dtype=np.float32)
    R.data[:] = 1.0
    du = np.asarray(R.sum(axis=1)).ravel()
    di = np.asarray(R.sum(axis=0)).ravel()
    with np.errstate(divide="ignore"):
        iu = np.where(du > 0, du ** -0.5, 0.0).astype(np.float32)
        ii = np.where(di > 0, di ** -0.5, 0.0).astype(np.float32)
    return sp.csr_matrix(sp.diags(iu) @ R @ sp.diags(ii), dtype=np.float32)


def modality_knn_graphs(model, k: int, weighted: bool = True, include_self: bool = True,
                        norm: str = "sym", on_device: bool = True
                        ) -> "OrderedDict[str, Union[SparseMat, sp.csr_matrix]]":
    """Per-modality item-item kNN graphs of the RAW features in `model.mm_feats`.

    For each modality: top-k cosine neighbours per item (the item itself counts, as in
    MMRec, when `include_self`), cosine values (`weighted`, MGCN) or ones (FREEDOM), not
    symmetrised, then `norm='sym'` D^-1/2 S D^-1/2 with D the row sums (`'none'` keeps S
    raw, e.g. to mix it with another graph first). Built through `model.graph_cache()`
    keyed by the feature content and (k, weighted, include_self, norm).
    Returns name -> a `graphs.SparseMat` on `model.device` (`on_device`) or scipy CSR.
    """
    if norm not in ("sym", "none"):
        raise ValueError(f"norm must be 'sym' or 'none', found {norm!r}")
    cache = model.graph_cache()
    params = {"k": int(k), "weighted": bool(weighted), "include_self": bool(include_self), "norm": norm}
    out: "OrderedDict[str, Union[SparseMat, sp.csr_matrix]]" = OrderedDict()
    for name, feat in model.mm_feats.items():
        feat_cpu = feat.detach().cpu()
        backend = resolve_knn_backend(model.config["knn_backend"], feat_cpu.shape[0])   # part of the cache key

        def build(feat_cpu=feat_cpu, backend=backend) -> sp.csr_matrix:
            g = knn_graph(feat_cpu, int(k), weighted=weighted, include_self=include_self, backend=backend)
            return sym_normalize(g) if norm == "sym" else g

        g = cache.get_or_build("modality_knn", knn_cache_params(params, backend), {"features": feat_cpu}, build)
        out[name] = SparseMat.of(g, model.device) if on_device else g
    return out


# ---------------------------------------------------------------------------------------
# MGCN's modality branch
# ---------------------------------------------------------------------------------------
class ModalityBranch(nn.Module):
    """MGCN's modality side for any number M >= 1 of modalities.

    Per modality m (features X_m fixed, [I, f_m]):
      h_m   = Linear_m(X_m)                                    projection to d
      p_m   = item_id_emb * sigmoid(G_m(h_m))                  behaviour-guided purifier
      i_m   = S_m^L p_m (plain repeated products, last layer)  item-item graph S_m
      u_m   = R_norm i_m                                       users from their items
      e_m   = [u_m; i_m]                                       [U+I, d]
    Fusion over modalities (q shared: Linear(d,d) -> Tanh -> Linear(d,1, no bias)):
      a_m      = softmax_m(q(e_m))                             attention, sums to 1
      common   = sum_m a_m e_m
      specific = sigmoid(P_m(behaviour)) * (e_m - common)      preference gates
      side     = (sum_m specific_m + common) / (M + 1)

    Modality order is the order of `feats`; submodules are indexed by that order, so
    names need not be valid attribute names. `freeze_features=False` makes the raw
    features trainable parameters (MMRec's behaviour); default True keeps them as fixed
    inputs (same forward maths, no optimizer state for a large table).
    """

    def __init__(self, feats: Mapping[str, torch.Tensor], item_graphs: Mapping[str, SparseLike],
                 R_norm: SparseLike, dim: int, n_layers: int = 1, freeze_features: bool = True):
        super().__init__()
        if not feats:
            raise ValueError("ModalityBranch needs at least one modality")
        missing = [n for n in feats if n not in item_graphs]
        if missing:
            raise ValueError(f"no item graph for modality(ies) {missing}; item_graphs has {list(item_graphs)}")
        self.names: List[str] = list(feats)
        self.dim = int(dim)
        self.n_layers = int(n_layers)
        self.freeze_features = bool(freeze_features)
        first = next(iter(feats.values()))
        device = first.device
        for i, name in enumerate(self.names):
            x = feats[name].detach().float()
            if self.freeze_features:
                # non-persistent: features come from the data, checkpoints stay small
                self.register_buffer(f"feat_{i}", x, persistent=False)
            else:
                setattr(self, f"feat_{i}", nn.Parameter(x.clone()))
        self.proj = nn.ModuleList([nn.Linear(feats[n].shape[1], dim) for n in self.names])
        self.purifier = nn.ModuleList([nn.Linear(dim, dim) for _ in self.names])
        self.prefer_gate = nn.ModuleList([nn.Linear(dim, dim) for _ in self.names])
        self.query = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))
        self.R = SparseMat.of(R_norm, device)
        self.n_users, self.n_items = self.R.shape
        self.set_item_graphs(item_graphs)

    # ---- configuration --------------------------------------------------
    def set_item_graphs(self, item_graphs: Mapping[str, SparseLike]) -> None:
        """Replace the per-modality item-item graphs (each [I, I]; kept fixed)."""
        device = self.R.device
        self.item_graphs: Dict[str, SparseMat] = {n: SparseMat.of(item_graphs[n], device) for n in self.names}

    def features(self, m: int) -> torch.Tensor:
        """Raw features of modality index m, [I, f_m]."""
        return getattr(self, f"feat_{m}")

    # ---- computation ----------------------------------------------------
    def modality_embeddings(self, item_id_emb: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """e_m = [u_m; i_m] for every modality, each [U+I, d] (before fusion)."""
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for m, name in enumerate(self.names):
            h = self.proj[m](self.features(m))               # all items: needed by the graph anyway
            x = item_id_emb * torch.sigmoid(self.purifier[m](h))
            graph = self.item_graphs[name]
            for _ in range(self.n_layers):
                x = graph @ x
            out[name] = torch.cat([self.R @ x, x], dim=0)
        return out

    def attention(self, stacked: torch.Tensor) -> torch.Tensor:
        """Attention weights a [M, N, 1] over modalities for stacked e_m [M, N, d]."""
        return torch.softmax(self.query(stacked), dim=0)

    def fuse(self, per_modality: Mapping[str, torch.Tensor], behaviour: torch.Tensor) -> torch.Tensor:
        """side [N, d] from e_m [N, d] and the behaviour embeddings of the same N rows."""
        stacked = torch.stack([per_modality[n] for n in self.names], dim=0)
        common = (self.attention(stacked) * stacked).sum(0)
        side = common
        for m in range(len(self.names)):
            gate = torch.sigmoid(self.prefer_gate[m](behaviour))
            side = side + gate * (stacked[m] - common)
        return side / (len(self.names) + 1)

    def forward(self, item_id_emb: torch.Tensor, behaviour: torch.Tensor
                ) -> Tuple[torch.Tensor, "OrderedDict[str, torch.Tensor]"]:
        """(side [U+I, d], {modality: e_m [U+I, d]}) from item ID embeddings [I, d] and the
        behaviour-view embeddings [U+I, d] (users first) that drive the preference gates."""
        per = self.modality_embeddings(item_id_emb)
        return self.fuse(per, behaviour), per
