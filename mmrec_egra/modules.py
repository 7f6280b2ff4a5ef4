"""Shared building blocks for models (not models themselves).

- `SparseMatrix`: a FIXED sparse matrix with a fast, autograd-aware product `A @ x`.
- `modality_knn_graphs`: per-modality raw-feature kNN item graphs, built once and cached.
- `normalized_interactions`: R_norm = D_u^-1/2 R D_i^-1/2 (the user-item block of A_ui).
- `ModalityBranch`: MGCN's modality side (Yu et al., ACM MM'23) for any number of
  modalities; reused by MGCN, EGRA and SIGE.

Why `SparseMatrix`: `torch.sparse.mm(coo, x)` with x requiring grad computes the
backward `A^T @ g` by transposing and re-coalescing A on every call, which dominates a
graph model's step on CPU. Graphs here never change during training, so A and A^T are
converted to CSR once and the backward is a single CSR product (on CPU through addmm
into an uninitialised output, which skips torch.sparse.mm's zero-fill and copy).
A `SparseMatrix` is a plain object, not a buffer: build it on the model's device (as
the models do in __init__); `model.to(other_device)` does not move it.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn

from .graphs import knn_cache_params, knn_graph, resolve_knn_backend, sym_normalize, to_torch_sparse

SparseLike = Union[torch.Tensor, sp.spmatrix, "SparseMatrix"]


# ---------------------------------------------------------------------------------------
# fast fixed sparse matrix
# ---------------------------------------------------------------------------------------
def _csr_mm(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """CSR @ dense. On CPU, addmm into a fresh output with beta=0 goes straight to the
    sparse BLAS kernel; torch.sparse.mm first zero-fills and copies the output (measured
    1.3-3x slower for a 16k x 16k graph with 64 columns on 2 cores)."""
    if a.device.type != "cpu":
        return torch.sparse.mm(a, x)
    out = x.new_empty((a.shape[0], x.shape[1]))
    return torch.addmm(out, a, x, beta=0, out=out)   # beta=0: the uninitialised input is ignored


class _FixedSparseMM(torch.autograd.Function):
    """y = A @ x for a constant A; the backward uses the precomputed CSR of A^T."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.a_t = a_t
        return _csr_mm(a, x.contiguous())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _csr_mm(ctx.a_t, grad.contiguous()), None, None


class SparseMatrix:
    """A constant sparse matrix (no gradient w.r.t. its values) used as `A @ x`.

    Built from scipy sparse, a torch sparse tensor (COO or CSR) or a `graphs.SparseMat`
    (its values are then frozen). Stores A and A^T in
    CSR on `device` (A^T shares A when `symmetric`). `A @ x` is differentiable in x.
    """

    def __init__(self, adj: SparseLike, device: Optional[torch.device | str] = None, symmetric: bool = False):
        if isinstance(adj, SparseMatrix):
            adj = adj.to_scipy()
        elif all(hasattr(adj, k) for k in ("rows", "cols", "values", "shape")):   # graphs.SparseMat
            device = adj.values.device if device is None else device
            adj = sp.csr_matrix((adj.values.detach().cpu().numpy(),
                                 (adj.rows.cpu().numpy(), adj.cols.cpu().numpy())), shape=tuple(adj.shape))
        if isinstance(adj, torch.Tensor):
            device = adj.device if device is None else device
            adj = _torch_to_scipy(adj)
        csr = sp.csr_matrix(adj, dtype=np.float32)
        csr.sum_duplicates()
        csr.sort_indices()
        self.device = torch.device(device or "cpu")
        self.shape = tuple(csr.shape)
        self.a = _scipy_csr_to_torch(csr, self.device)
        self.a_t = self.a if symmetric else _scipy_csr_to_torch(sp.csr_matrix(csr.T), self.device)

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            return _FixedSparseMM.apply(x, self.a, self.a_t)
        return _csr_mm(self.a, x.contiguous())

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        return self @ x

    @property
    def nnz(self) -> int:
        return int(self.a.values().numel())

    def to_scipy(self) -> sp.csr_matrix:
        a = self.a.cpu()
        return sp.csr_matrix((a.values().numpy(), a.col_indices().numpy(), a.crow_indices().numpy()),
                             shape=self.shape)

    def to_dense(self) -> torch.Tensor:
        """Dense copy (tests and tiny graphs only)."""
        return self.a.to_dense()


def _torch_to_scipy(t: torch.Tensor) -> sp.csr_matrix:
    t = t.detach().cpu()
    if t.layout == torch.sparse_csr:
        return sp.csr_matrix((t.values().numpy(), t.col_indices().numpy(), t.crow_indices().numpy()),
                             shape=tuple(t.shape))
    if t.layout == torch.sparse_coo:
        t = t.coalesce()
        idx = t.indices().numpy()
        return sp.csr_matrix((t.values().numpy(), (idx[0], idx[1])), shape=tuple(t.shape))
    return sp.csr_matrix(t.numpy())


def _scipy_csr_to_torch(csr: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    with warnings.catch_warnings():  # "CSR support is in beta": products are all we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(csr.indptr.astype(np.int64)),
                                       torch.from_numpy(csr.indices.astype(np.int64)),
                                       torch.from_numpy(csr.data.astype(np.float32)),
                                       size=csr.shape, device=device, check_invariants=False)


def as_sparse_matrix(adj: SparseLike, device: Optional[torch.device | str] = None,
                     symmetric: bool = False) -> SparseMatrix:
    """Wrap anything sparse as a `SparseMatrix` (no copy when it already is one)."""
    if isinstance(adj, SparseMatrix) and (device is None or torch.device(device) == adj.device):
        return adj
    return SparseMatrix(adj, device, symmetric)


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
                        norm: str = "sym", as_torch: bool = True
                        ) -> "OrderedDict[str, Union[torch.Tensor, sp.csr_matrix]]":
    """Per-modality item-item kNN graphs of the RAW features in `model.mm_feats`.

    For each modality: top-k cosine neighbours per item (the item itself counts, as in
    MMRec, when `include_self`), cosine values (`weighted`, MGCN) or ones (FREEDOM), not
    symmetrised, then `norm='sym'` D^-1/2 S D^-1/2 with D the row sums (`'none'` keeps S
    raw, e.g. to mix it with another graph first). Built through `model.graph_cache()`
    keyed by the feature content and (k, weighted, include_self, norm).
    Returns name -> coalesced torch sparse COO on `model.device` (`as_torch`) or scipy CSR.
    """
    if norm not in ("sym", "none"):
        raise ValueError(f"norm must be 'sym' or 'none', found {norm!r}")
    cache = model.graph_cache()
    params = {"k": int(k), "weighted": bool(weighted), "include_self": bool(include_self), "norm": norm}
    out: "OrderedDict[str, Union[torch.Tensor, sp.csr_matrix]]" = OrderedDict()
    for name, feat in model.mm_feats.items():
        feat_cpu = feat.detach().cpu()
        backend = resolve_knn_backend(model.config["knn_backend"], feat_cpu.shape[0])   # part of the cache key

        def build(feat_cpu=feat_cpu, backend=backend) -> sp.csr_matrix:
            g = knn_graph(feat_cpu, int(k), weighted=weighted, include_self=include_self, backend=backend)
            return sym_normalize(g) if norm == "sym" else g

        g = cache.get_or_build("modality_knn", knn_cache_params(params, backend), {"features": feat_cpu}, build)
        out[name] = to_torch_sparse(g, model.device) if as_torch else g
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
        self.R = as_sparse_matrix(R_norm, device)
        self.n_users, self.n_items = self.R.shape
        self.set_item_graphs(item_graphs)

    # ---- configuration --------------------------------------------------
    def set_item_graphs(self, item_graphs: Mapping[str, SparseLike]) -> None:
        """Replace the per-modality item-item graphs (each [I, I]; kept fixed)."""
        device = self.R.device
        self.item_graphs: Dict[str, SparseMatrix] = {n: as_sparse_matrix(item_graphs[n], device)
                                                     for n in self.names}

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
