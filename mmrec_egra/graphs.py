"""Graph construction shared by every model: normalised adjacencies, blockwise kNN, edge pruning.

All graphs are scipy.sparse CSR on the host side and become torch sparse tensors with
`to_torch_sparse`. No function here materialises a dense items x items matrix: kNN is
computed over bounded row blocks.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch


def sym_normalize(adj: sp.spmatrix) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 with D the row sums (zero-degree rows/cols stay zero)."""
    adj = sp.csr_matrix(adj, dtype=np.float32)
    deg = np.asarray(adj.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        inv = np.where(deg > 0, deg ** -0.5, 0.0).astype(np.float32)
    d = sp.diags(inv)
    return sp.csr_matrix(d @ adj @ d, dtype=np.float32)


def row_normalize(adj: sp.spmatrix) -> sp.csr_matrix:
    """D^-1 A (rows sum to 1; empty rows stay zero)."""
    adj = sp.csr_matrix(adj, dtype=np.float32)
    deg = np.asarray(adj.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        inv = np.where(deg > 0, 1.0 / deg, 0.0).astype(np.float32)
    return sp.csr_matrix(sp.diags(inv) @ adj, dtype=np.float32)


def bipartite_adjacency(inter: sp.spmatrix, item_item: Optional[sp.spmatrix] = None, beta: float = 1.0,
                        merge: str = "joint", normalize: bool = True) -> sp.csr_matrix:
    """The (U+I) x (U+I) behaviour graph [[0, R], [R^T, beta*S]] normalised D^-1/2 A D^-1/2.

    `merge='joint'` normalises the whole matrix at once; `merge='separate'` normalises the
    user-item part and the item-item block S apart and adds them. With no S this is
    LightGCN's A_ui (no self loops).
    """
    R = sp.csr_matrix(inter, dtype=np.float32)
    R.data[:] = 1.0
    n_u, n_i = R.shape
    ui = sp.bmat([[None, R], [R.T, None]], format="csr", dtype=np.float32)
    ui.resize((n_u + n_i, n_u + n_i))
    if item_item is None or beta == 0:
        return sym_normalize(ui) if normalize else ui
    S = sp.csr_matrix(item_item, dtype=np.float32)
    block = sp.bmat([[sp.csr_matrix((n_u, n_u)), None], [None, S * beta]], format="csr", dtype=np.float32)
    if merge == "joint":
        full = ui + block
        return sym_normalize(full) if normalize else full
    if merge == "separate":
        return sym_normalize(ui) + sym_normalize(block)
    raise ValueError(f"merge must be 'joint' or 'separate', found {merge!r}")


def knn_graph(features, k: int, weighted: bool = True, include_self: bool = True,
              block_rows: Optional[int] = None, max_block_bytes: int = 256 * 2 ** 20) -> sp.csr_matrix:
    """Top-k cosine neighbours of each row of `features` ([n, d] numpy or torch).

    Each row of the result holds exactly min(k, n') entries (n' = n, or n - 1 without
    self), with cosine values (`weighted`) or ones. Computed in row blocks whose score
    matrix stays under `max_block_bytes`; features are never copied whole (norms are
    applied per block), so peak extra memory is one block plus the output.
    """
    x = torch.as_tensor(features)
    if x.dtype != torch.float32:
        x = x.float()
    n = x.shape[0]
    norms = x.norm(dim=1).clamp_min(1e-12)
    kk = min(k, n if include_self else n - 1)
    if block_rows is None:
        block_rows = max(1, min(n, max_block_bytes // (4 * max(n, 1))))
    rows = np.repeat(np.arange(n, dtype=np.int64), kk)
    cols = np.empty(n * kk, dtype=np.int64)
    vals = np.empty(n * kk, dtype=np.float32)
    xt = x.t()
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        sim = (x[start:stop] @ xt)
        sim /= norms[start:stop, None]
        sim /= norms[None, :]
        if not include_self:
            idx = torch.arange(start, stop)
            sim[idx - start, idx] = -float("inf")
        v, c = torch.topk(sim, kk, dim=1)
        cols[start * kk:stop * kk] = c.reshape(-1).numpy()
        vals[start * kk:stop * kk] = v.reshape(-1).numpy()
        del sim
    if not weighted:
        vals = np.ones_like(vals)
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n), dtype=np.float32)


def symmetrize(adj: sp.spmatrix, mode: str = "max") -> sp.csr_matrix:
    """Make A symmetric: 'max' keeps max(A_ij, A_ji) (an edge in either direction), 'sum' adds."""
    adj = sp.csr_matrix(adj)
    if mode == "max":
        return sp.csr_matrix(adj.maximum(adj.T))
    if mode == "sum":
        return sp.csr_matrix(adj + adj.T)
    raise ValueError(f"symmetrize mode must be 'max' or 'sum', found {mode!r}")


def degree_sensitive_prune(inter: sp.spmatrix, drop_ratio: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Keep (1 - drop_ratio) of the user-item edges, sampled without replacement with
    probability proportional to 1/sqrt(d_u d_i) (FREEDOM's degree-sensitive pruning: edges
    between high-degree nodes are the likeliest to be dropped). Returns the kept edges of R.

    Weighted sampling without replacement uses exponential keys (Efraimidis-Spirakis):
    the kept edges are the n_keep largest u^(1/w), computed as log(u)/w.
    """
    R = sp.coo_matrix(inter)
    n_edges = R.nnz
    n_keep = int(n_edges * (1.0 - drop_ratio))
    csr = sp.csr_matrix(R)
    du = np.asarray(csr.sum(axis=1)).ravel()
    di = np.asarray(csr.sum(axis=0)).ravel()
    w = 1.0 / np.sqrt(du[R.row] * di[R.col])
    keys = np.log(rng.random(n_edges)) / w
    keep = np.argpartition(-keys, n_keep - 1)[:n_keep] if 0 < n_keep < n_edges else np.arange(n_keep)
    return sp.csr_matrix((np.ones(len(keep), dtype=np.float32), (R.row[keep], R.col[keep])), shape=R.shape)


def to_torch_sparse(adj: sp.spmatrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """scipy sparse -> coalesced torch sparse COO float32 on `device`."""
    coo = sp.coo_matrix(adj)
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    val = torch.from_numpy(coo.data.astype(np.float32))
    return torch.sparse_coo_tensor(idx, val, coo.shape, device=device).coalesce()


def propagate(adj: torch.Tensor, x: torch.Tensor, n_layers: int, mean: bool = True) -> torch.Tensor:
    """LightGCN propagation: x, Ax, A^2x, ...; the mean (or sum) over layers 0..n_layers."""
    out = x
    acc = x
    for _ in range(n_layers):
        out = torch.sparse.mm(adj, out)
        acc = acc + out
    return acc / (n_layers + 1) if mean else acc
