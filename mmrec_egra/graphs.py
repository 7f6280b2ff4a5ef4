"""Graph construction shared by every model: normalised adjacencies, blockwise kNN, edge pruning.

All graphs are scipy.sparse CSR on the host side and become `SparseMat` (the one sparse
type: fast fixed products, differentiable values) with `SparseMat.of(graph, device)`. No function here materialises a dense items x items matrix: kNN is
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
    user-item part and S apart and adds them, beta scaling the normalised S (normalising
    beta*S would cancel beta). With no S this is LightGCN's A_ui (no self loops).
    """
    R = sp.csr_matrix(inter, dtype=np.float32)
    R.data[:] = 1.0
    n_u, n_i = R.shape
    ui = sp.bmat([[None, R], [R.T, None]], format="csr", dtype=np.float32)
    ui.resize((n_u + n_i, n_u + n_i))
    if item_item is None or beta == 0:
        return sym_normalize(ui) if normalize else ui
    S = sp.csr_matrix(item_item, dtype=np.float32)
    block = sp.bmat([[sp.csr_matrix((n_u, n_u)), None], [None, S]], format="csr", dtype=np.float32)
    if merge == "joint":
        full = ui + block * beta
        return sym_normalize(full) if normalize else full
    if merge == "separate":
        return sym_normalize(ui) + sym_normalize(block) * beta
    raise ValueError(f"merge must be 'joint' or 'separate', found {merge!r}")


def knn_graph(features, k: int, weighted: bool = True, include_self: bool = True,
              block_rows: Optional[int] = None, max_block_bytes: int = 256 * 2 ** 20,
              backend: Optional[str] = "exact") -> sp.csr_matrix:
    """Top-k cosine neighbours of each row of `features` ([n, d] numpy or torch).

    Each row of the result holds exactly min(k, n') entries (n' = n, or n - 1 without
    self), with cosine values (`weighted`) or ones. Computed in row blocks whose score
    matrix stays under `max_block_bytes`; features are never copied whole (norms are
    applied per block), so peak extra memory is one block plus the output.
    `backend`: 'exact' (this blockwise search), 'faiss' (approximate, `knn_graph_faiss`)
    or 'auto' (faiss above KNN_FAISS_MIN_ITEMS rows when faiss is installed).
    """
    if resolve_knn_backend(backend, len(features)) == "faiss":
        return knn_graph_faiss(features, k, weighted=weighted, include_self=include_self)
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


# ---- approximate kNN for large catalogs (faiss) --------------------------------------------
# Exact blockwise kNN costs n^2 d: fine for the benchmark catalogs (<= 25k items, under a
# minute), hours at 1M items. Above KNN_FAISS_MIN_ITEMS items `auto` switches to a faiss
# inverted-file index (IVF-Flat, inner product on unit vectors = cosine), whose search
# scans only `nprobe` of `nlist` clusters per query. 50k is where exact search on 2 CPU
# cores passes a few minutes for 4096-d features (Amazon Electronics has 63k items).
KNN_FAISS_MIN_ITEMS = 50_000
KNN_BACKENDS = ("auto", "exact", "faiss")
# every setting that shapes a faiss graph: part of the graph cache key (see knn_cache_params)
FAISS_DEFAULTS = {"index": "ivf", "nlist": None, "nprobe": 32, "train_per_list": 40, "kmeans_iter": 10, "seed": 0,
                  "hnsw_m": 32, "ef_search": 128}


def faiss_available() -> bool:
    """True when the optional `faiss` package can be imported (checked without importing it)."""
    import importlib.util
    return importlib.util.find_spec("faiss") is not None


def _import_faiss():
    try:
        import faiss  # noqa: F401  (optional dependency, imported only when used)
    except ImportError:
        from .utils import MMRecError
        raise MMRecError("knn_backend 'faiss' needs the faiss package, which is not installed: run "
                         "`pip install faiss-cpu` (or `pip install 'mmrec_egra[faiss]'`; faiss-gpu on CUDA "
                         "machines), or set knn_backend: exact") from None
    return faiss


def resolve_knn_backend(backend: Optional[str], n_items: int) -> str:
    """'exact' or 'faiss' for config value `backend` (None means 'auto') and a catalog size.

    'auto' picks faiss when n_items > KNN_FAISS_MIN_ITEMS and faiss is importable, exact
    otherwise (small catalogs always stay exact, so their graphs are unchanged).
    """
    b = "auto" if backend is None else str(backend).lower()
    if b not in KNN_BACKENDS:
        from .utils import MMRecError
        raise MMRecError(f"config key knn_backend is {backend!r}; expected one of {', '.join(KNN_BACKENDS)}")
    if b == "auto":
        return "faiss" if n_items > KNN_FAISS_MIN_ITEMS and faiss_available() else "exact"
    return b


def knn_cache_params(params: dict, backend: str) -> dict:
    """Graph cache parameters extended by the kNN backend. Exact graphs keep their old
    keys (nothing added), so caches built before backends existed stay valid; a faiss
    graph's key holds the backend and every faiss setting."""
    if backend == "exact":
        return dict(params)
    return dict(params, knn_backend=backend, faiss=dict(FAISS_DEFAULTS))


def _unit_rows(features, start, stop: Optional[int] = None) -> np.ndarray:
    """Rows [start, stop) (or the rows listed in the array `start`) of `features` (numpy,
    memmap or torch) as a contiguous unit-norm float32 copy."""
    if stop is None:
        sel = np.asarray(start, dtype=np.int64)
        blk = features[torch.from_numpy(sel)] if isinstance(features, torch.Tensor) else features[sel]
    else:
        blk = features[start:stop]
    blk = blk.detach().cpu().numpy() if isinstance(blk, torch.Tensor) else np.asarray(blk)
    blk = np.array(blk, dtype=np.float32, order="C", copy=True)
    blk /= np.maximum(np.linalg.norm(blk, axis=1, keepdims=True), 1e-12)
    return blk


def exact_knn_rows(features, rows: np.ndarray, k: int, include_self: bool = True,
                   col_block: int = 65536) -> tuple:
    """Exact top-k cosine neighbours of the given rows against ALL rows of `features`.

    Streams the catalog in column blocks and keeps a running top-k, so memory is
    O(len(rows) * (k + col_block)): the reference for recall measurements at any size and
    the fallback for rows an approximate search could not fill. Returns (ids, cosines),
    both [len(rows), min(k, n')].
    """
    n = len(features)
    rows = np.asarray(rows, dtype=np.int64)
    kk = min(k, n if include_self else n - 1)
    q = torch.from_numpy(_unit_rows(features, rows))
    best_v = torch.full((len(rows), kk), -float("inf"))
    best_i = torch.zeros((len(rows), kk), dtype=torch.long)
    rows_t = torch.from_numpy(rows)
    for start in range(0, n, col_block):
        stop = min(n, start + col_block)
        sim = q @ torch.from_numpy(_unit_rows(features, start, stop)).t()
        if not include_self:
            inside = (rows_t >= start) & (rows_t < stop)
            sim[inside.nonzero().squeeze(1), rows_t[inside] - start] = -float("inf")
        v = torch.cat([best_v, sim], 1)
        i = torch.cat([best_i, torch.arange(start, stop).expand(len(rows), -1)], 1)
        best_v, pos = torch.topk(v, kk, dim=1)
        best_i = torch.gather(i, 1, pos)
    return best_i.numpy(), best_v.numpy()


def knn_graph_faiss(features, k: int, weighted: bool = True, include_self: bool = True,
                    index: str = FAISS_DEFAULTS["index"], nlist: Optional[int] = FAISS_DEFAULTS["nlist"],
                    nprobe: int = FAISS_DEFAULTS["nprobe"], train_per_list: int = FAISS_DEFAULTS["train_per_list"],
                    seed: int = FAISS_DEFAULTS["seed"], block_rows: int = 65536) -> sp.csr_matrix:
    """Approximate top-k cosine neighbours with faiss, same output contract as `knn_graph`.

    `index='ivf'` (default): IVF-Flat on unit vectors with `nlist` clusters (default
    min(4 sqrt(n), n / 39), faiss's minimum of 39 training points per cluster), trained by
    10 k-means rounds on `train_per_list * nlist` rows drawn with `seed` (deterministic), searching
    `nprobe` clusters per query. `index='hnsw'`: HNSW graph (M=32, efSearch 128; its
    multi-threaded build is not bit-reproducible). `index='flat'`: faiss exact search.
    Features are added and queried in blocks of `block_rows` (numpy memmaps are never read
    whole at once); the index holds one float32 copy of the unit-normalised features.
    A row whose search returns fewer than k valid neighbours is recomputed exactly.
    """
    faiss = _import_faiss()
    n, d = int(features.shape[0]), int(features.shape[1])
    kk = min(k, n if include_self else n - 1)
    if kk <= 0:
        return sp.csr_matrix((n, n), dtype=np.float32)
    if index == "ivf":
        nlist = int(nlist or max(1, min(int(4 * np.sqrt(n)), n // 39)))
        idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.cp.seed = int(seed)
        idx.cp.niter = int(FAISS_DEFAULTS["kmeans_iter"])   # 10 k-means rounds: enough for routing queries
        m = min(n, nlist * int(train_per_list))
        sample = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
        train = _unit_rows(features, sample)
        idx.train(train)
        del train
        idx.nprobe = int(min(nprobe, nlist))
    elif index == "hnsw":
        idx = faiss.IndexHNSWFlat(d, int(FAISS_DEFAULTS["hnsw_m"]), faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efSearch = max(int(FAISS_DEFAULTS["ef_search"]), 2 * kk)
    elif index == "flat":
        idx = faiss.IndexFlatIP(d)
    else:
        raise ValueError(f"faiss index must be 'ivf', 'hnsw' or 'flat', found {index!r}")
    for start in range(0, n, block_rows):
        idx.add(_unit_rows(features, start, min(n, start + block_rows)))
    q_k = kk if include_self else kk + 1          # one extra: the item itself is dropped afterwards
    cols = np.empty((n, kk), dtype=np.int64)
    vals = np.empty((n, kk), dtype=np.float32)
    redo = []
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        D, I = idx.search(_unit_rows(features, start, stop), q_k)
        bad = (I < 0).any(axis=1)
        if not include_self:
            keep = I != np.arange(start, stop)[:, None]
            keep[keep.all(axis=1), -1] = False        # self not returned: drop the weakest instead
            I = I[keep].reshape(stop - start, kk)
            D = D[keep].reshape(stop - start, kk)
        cols[start:stop], vals[start:stop] = I, D
        redo.append(np.flatnonzero(bad) + start)
    del idx
    redo = np.concatenate(redo)
    for s in range(0, len(redo), 1024):                # rare: clusters too small to hold k neighbours
        part = redo[s:s + 1024]
        cols[part], vals[part] = exact_knn_rows(features, part, kk, include_self)
    rows = np.repeat(np.arange(n, dtype=np.int64), kk)
    if not weighted:
        vals = np.ones_like(vals)
    return sp.csr_matrix((vals.reshape(-1), (rows, cols.reshape(-1))), shape=(n, n), dtype=np.float32)


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


# ---- the one sparse-matrix type: fast fixed products, differentiable values ---------------
# torch.sparse.mm on COO is slow on CPU, and its backward re-coalesces A^T on every call
# (about 10x scipy on the TikTok graph); CSR kernels are fast, and a fixed pattern lets the
# transpose be computed once so that the backward product is a CSR product too.

import warnings as _warnings

_warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow, col, values, tuple(shape), check_invariants=False)


def _csr_mm(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """CSR a @ dense x. On CPU `a @ x` zero-fills, then copies the result three times
    (2-3x slower than the kernel itself); addmm into a fresh buffer with beta=0 does not."""
    if x.device.type != "cpu":
        return a @ x
    out = torch.empty((a.shape[0], x.shape[1]), dtype=x.dtype)
    return torch.addmm(out, a, x, beta=0.0, out=out)


def _pattern_mm(mat: "SparseMat", values: torch.Tensor, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """A @ x (or A^T @ x) for A = `mat`'s pattern carrying `values` in its entry order."""
    if not transpose:
        return _csr_mm(_csr(mat.crow, mat.cols, values, mat.shape), x)
    perm, crow_t, col_t = mat.transpose_structure()
    return _csr_mm(_csr(crow_t, col_t, values.index_select(0, perm), (mat.shape[1], mat.shape[0])), x)


class _FixedSpMM(torch.autograd.Function):
    """y = A x for a constant A; dL/dx = A^T g with the CSR of A^T built once."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.a_t = a_t
        return _csr_mm(a, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _csr_mm(ctx.a_t, grad.contiguous()), None, None


class _SpMM(torch.autograd.Function):
    """out = A x for A = SparseMat(values) with values requiring grad: gradients reach x
    (via A^T) and the values."""

    @staticmethod
    def forward(ctx, values, x, mat):
        ctx.mat = mat
        ctx.save_for_backward(values, x)
        return _pattern_mm(mat, values, x)

    @staticmethod
    def backward(ctx, grad):
        values, x = ctx.saved_tensors
        mat = ctx.mat
        grad = grad.contiguous()
        g_values = g_x = None
        if ctx.needs_input_grad[1]:
            g_x = _pattern_mm(mat, values, grad, transpose=True)
        if ctx.needs_input_grad[0]:
            g_values = pattern_dots(mat, grad, x)       # dL/dA_rc = <grad_r, x_c>, on the pattern only
        return g_values, g_x, None


class _PatternDots(torch.autograd.Function):
    """s_e = <a_r, b_c> for every entry e = (r, c) of a pattern; dL/da = S b and
    dL/db = S^T a with S the pattern carrying dL/ds (two CSR products, no scatter)."""

    @staticmethod
    def forward(ctx, a, b, mat):
        ctx.mat = mat
        ctx.save_for_backward(a, b)
        return pattern_dots(mat, a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        mat = ctx.mat
        grad = grad.contiguous()
        g_a = g_b = None
        if ctx.needs_input_grad[0]:
            g_a = _pattern_mm(mat, grad, b.contiguous())
        if ctx.needs_input_grad[1]:
            g_b = _pattern_mm(mat, grad, a.contiguous(), transpose=True)
        return g_a, g_b, None


def pattern_dots(mat: "SparseMat", a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a_r, b_c> for every stored entry (r, c) of `mat`, in its (row, col) order (not
    differentiable). On CPU one sampled dense-dense product (torch.sparse.sampled_addmm: no
    gathered [nnz, d] copies, ~9x faster than gathering at d=64); elsewhere gathers in
    bounded chunks of entries. Either way each value is one dot product: deterministic."""
    if a.device.type == "cpu" and a.dtype == b.dtype and a.dtype in (torch.float32, torch.float64):
        pattern = _csr(mat.crow, mat.cols, torch.zeros(mat.nnz, dtype=a.dtype), mat.shape)
        return torch.sparse.sampled_addmm(pattern, a.contiguous(), b.t(), beta=0.0).values()
    return _gathered_dots(mat, a, b)


def _gathered_dots(mat: "SparseMat", a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """pattern_dots by gathering rows, in chunks of entries bounded to ~4M gathered floats."""
    out = torch.empty(mat.nnz, dtype=a.dtype, device=a.device)
    step = max(1, (1 << 22) // max(1, a.shape[1]))
    for s in range(0, mat.nnz, step):
        e = min(mat.nnz, s + step)
        out[s:e] = (a.index_select(0, mat.rows[s:e]) * b.index_select(0, mat.cols[s:e])).sum(-1)
    return out


class SparseMat:
    """A sparse [n, m] matrix (rows, cols, values): the one sparse type of the package.

    Entries are kept sorted by (row, col) with duplicates summed (so the arrays are a valid
    CSR). `A @ x` (or `A.mm(x)`) is differentiable in x; when `values` require grad
    (learned graphs) it back-propagates into them too. For constant values (every fixed
    graph) the CSR of A and of A^T are built once and reused, so a product and its backward
    are single CSR kernels (`symmetric=True` promises A^T == A and skips the transpose).
    Summing duplicates uses a sort and segment sums, not atomics, so it is deterministic on
    CUDA too. Nothing here is dense: memory is O(nnz). Build with `SparseMat.of(anything
    sparse, device)`; a SparseMat is a plain object, not a buffer: `model.to()` does not
    move it, so models build it on their device.
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape, coalesce: bool = True,
                 symmetric: bool = False):
        n, m = int(shape[0]), int(shape[1])
        rows, cols = rows.long(), cols.long()
        if coalesce and rows.numel():
            keys = rows * m + cols
            keys, order = torch.sort(keys, stable=True)
            uniq, counts = torch.unique_consecutive(keys, return_counts=True)
            values = values.index_select(0, order)   # deterministic backward, unlike values[order]
            if uniq.numel() != keys.numel():
                values = torch.segment_reduce(values, "sum", lengths=counts)
            rows, cols = uniq // m, uniq % m
        self.rows, self.cols, self.values = rows, cols, values
        self.shape = (n, m)
        self.symmetric = bool(symmetric) and n == m
        self.crow = torch.zeros(n + 1, dtype=torch.long, device=rows.device)
        self.crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
        self._t = None
        self._fixed = None

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_scipy(cls, adj: sp.spmatrix, device: torch.device | str = "cpu", symmetric: bool = False) -> "SparseMat":
        csr = sp.csr_matrix(adj, dtype=np.float32)
        csr.sum_duplicates()
        csr.sort_indices()
        rows = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
        t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a).astype(dt)).to(device)
        return cls(t(rows, np.int64), t(csr.indices, np.int64), t(csr.data, np.float32), csr.shape, coalesce=False,
                   symmetric=symmetric)

    @classmethod
    def of(cls, adj, device: Optional[torch.device | str] = None, symmetric: bool = False) -> "SparseMat":
        """Any sparse matrix (scipy, torch sparse COO/CSR, SparseMat) as a SparseMat on
        `device` (default: where it is; CPU for scipy); no copy when it already is one there."""
        if isinstance(adj, SparseMat):
            if device is None or torch.device(device) == adj.device:
                return adj
            return cls.from_scipy(adj.to_scipy(), device, symmetric or adj.symmetric)
        if isinstance(adj, torch.Tensor):
            device = adj.device if device is None else device
            adj = _torch_to_scipy(adj)
        return cls.from_scipy(adj, "cpu" if device is None else device, symmetric)

    def with_values(self, values: torch.Tensor) -> "SparseMat":
        """Same pattern, new values (shares the index arrays and the cached transpose)."""
        out = SparseMat.__new__(SparseMat)
        out.rows, out.cols, out.values, out.shape, out.crow, out._t = \
            self.rows, self.cols, values, self.shape, self.crow, self._t
        out.symmetric, out._fixed = False, None
        return out

    def detach(self) -> "SparseMat":
        return self.with_values(self.values.detach())

    # ---- products -------------------------------------------------------------------
    def transpose_structure(self):
        """(perm, crow_t, col_t): CSR of A^T whose values are values[perm] (cached)."""
        if self._t is None:
            n, m = self.shape
            perm = torch.sort(self.cols * n + self.rows, stable=True)[1]
            crow_t = torch.zeros(m + 1, dtype=torch.long, device=self.rows.device)
            crow_t[1:] = torch.cumsum(torch.bincount(self.cols, minlength=m), 0)
            self._t = (perm, crow_t, self.rows[perm].contiguous())
        return self._t

    def _fixed_csr(self):
        """(A, A^T) as torch CSR tensors for constant values, built on first use."""
        if self._fixed is None:
            a = _csr(self.crow, self.cols, self.values, self.shape)
            if self.symmetric:
                a_t = a
            else:
                perm, crow_t, col_t = self.transpose_structure()
                a_t = _csr(crow_t, col_t, self.values[perm].contiguous(), (self.shape[1], self.shape[0]))
            self._fixed = (a, a_t)
        return self._fixed

    def mm(self, x: torch.Tensor) -> torch.Tensor:
        """A @ x for dense x [m, d] (autograd through x and, when they require grad, the values)."""
        if x.dtype != self.values.dtype:
            x = x.to(self.values.dtype)
        x = x.contiguous()
        if self.values.requires_grad and torch.is_grad_enabled():
            return _SpMM.apply(self.values, x, self)
        a, a_t = self._fixed_csr()
        if x.requires_grad and torch.is_grad_enabled():
            return _FixedSpMM.apply(x, a, a_t)
        return _csr_mm(a, x)

    __matmul__ = mm

    def edge_dots(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """<a_r, b_c> for every stored entry (r, c), in (row, col) order: a [n, d], b [m, d].
        Differentiable in a and b; the products of gathering the rows (summed in another
        order on the CPU), without the [nnz, d] gathered copies (see pattern_dots)."""
        if a.shape[0] != self.shape[0] or b.shape[0] != self.shape[1] or a.shape[1] != b.shape[1]:
            raise ValueError(f"edge_dots: a {tuple(a.shape)} and b {tuple(b.shape)} do not fit a "
                             f"{self.shape} matrix (expected [{self.shape[0]}, d] and [{self.shape[1]}, d])")
        if b.dtype != a.dtype:
            b = b.to(a.dtype)
        if (a.requires_grad or b.requires_grad) and torch.is_grad_enabled():
            return _PatternDots.apply(a, b, self)
        return pattern_dots(self, a, b)

    # ---- properties and conversions -------------------------------------------------
    @property
    def nnz(self) -> int:
        return int(self.rows.numel())

    @property
    def device(self) -> torch.device:
        return self.values.device

    def row_sums(self) -> torch.Tensor:
        return torch.zeros(self.shape[0], dtype=self.values.dtype, device=self.device).index_add(
            0, self.rows, self.values) if self.device.type == "cpu" else \
            torch.segment_reduce(self.values, "sum", offsets=self.crow)

    def sym_normalized(self) -> "SparseMat":
        """D^-1/2 A D^-1/2 with D the row sums (as `sym_normalize`; rows with sum <= 0 give 0)."""
        deg = self.row_sums()
        inv = torch.where(deg > 0, deg.clamp_min(1e-12).pow(-0.5), torch.zeros_like(deg))
        return self.with_values(self.values * inv.index_select(0, self.rows) * inv.index_select(0, self.cols))

    @staticmethod
    def add(mats, weights=None) -> "SparseMat":
        """sum_j weights[j] * mats[j] (weights may be tensors with grad); patterns are merged."""
        weights = [1.0] * len(mats) if weights is None else list(weights)
        rows = torch.cat([a.rows for a in mats])
        cols = torch.cat([a.cols for a in mats])
        vals = torch.cat([a.values * w for a, w in zip(mats, weights)])
        return SparseMat(rows, cols, vals, mats[0].shape, coalesce=True)

    def to_torch(self) -> torch.Tensor:
        """torch sparse COO tensor (values keep their grad)."""
        idx = torch.stack([self.rows, self.cols])
        return torch.sparse_coo_tensor(idx, self.values, self.shape, check_invariants=False, is_coalesced=True)

    def to_scipy(self) -> sp.csr_matrix:
        v = self.values.detach().cpu().numpy()
        return sp.csr_matrix((v, (self.rows.cpu().numpy(), self.cols.cpu().numpy())), shape=self.shape)

    def to_dense(self) -> torch.Tensor:
        """Dense copy (tests and tiny graphs only)."""
        return self.to_torch().to_dense()


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


def propagate(adj: SparseMat, x: torch.Tensor, n_layers: int, mean: bool = True) -> torch.Tensor:
    """LightGCN propagation: x, Ax, A^2x, ...; the mean (or sum) over layers 0..n_layers."""
    if not isinstance(adj, SparseMat):
        raise TypeError(f"propagate needs a graphs.SparseMat, found {type(adj).__name__}: "
                        f"wrap the graph once with SparseMat.of(adj, device)")
    out = x
    acc = x
    for _ in range(n_layers):
        out = adj @ out
        acc = acc + out
    return acc / (n_layers + 1) if mean else acc


def knn_graph_torch(x: torch.Tensor, k: int, include_self: bool = True, block_rows: Optional[int] = None,
                    max_block_bytes: int = 64 * 2 ** 20) -> SparseMat:
    """Top-k cosine neighbours of each row of x ([n, d] torch) as a SparseMat of cosines.

    The neighbour indices are chosen blockwise without grad (a bounded [block, n] score
    matrix, never n x n); the kept values are then recomputed as cosine(x_r, x_c) from x
    itself, so gradients flow into x through the kept similarities (the top-k selection
    is discrete and has none). Exactly min(k, n') entries per row.
    """
    n = x.shape[0]
    kk = min(k, n if include_self else n - 1)
    if block_rows is None:
        block_rows = max(1, min(n, max_block_bytes // (4 * max(n, 1))))
    with torch.no_grad():
        xn = torch.nn.functional.normalize(x.detach().float(), dim=1)
        cols = torch.empty(n, kk, dtype=torch.long, device=x.device)
        for start in range(0, n, block_rows):
            stop = min(n, start + block_rows)
            sim = xn[start:stop] @ xn.t()
            if not include_self:
                idx = torch.arange(start, stop, device=x.device)
                sim[idx - start, idx] = -float("inf")
            cols[start:stop] = torch.topk(sim, kk, dim=1)[1]
            del sim
    rows = torch.arange(n, device=x.device).repeat_interleave(kk)
    cols = cols.reshape(-1)
    z = torch.nn.functional.normalize(x.float(), dim=1)
    vals = (z.index_select(0, rows) * z.index_select(0, cols)).sum(-1)
    return SparseMat(rows, cols, vals, (n, n), coalesce=True)


# ---- collaborative item-item graph (SIGE's infusion source; any model may reuse it) -------

def co_interaction_graph(inter: sp.spmatrix, k: int, norm: str = "count", symmetric: bool = False,
                         max_block_nnz: int = 2 ** 20) -> sp.csr_matrix:
    """Top-k co-interaction neighbours of every item, [n_items, n_items] float32 CSR.

    C = R^T R on the binarised interaction matrix R [n_users, n_items] (C_ij = number of
    users who interacted with both i and j), diagonal removed. `norm='cosine'` uses
    C_ij / sqrt(d_i d_j) with d_i = C_ii (item degree), i.e. the cosine of the two items'
    user columns; `norm='count'` keeps the counts. Each row keeps its k largest entries;
    ties are broken by the LOWER item id, so the result is deterministic. A row with
    fewer than k co-interacting items keeps all of them (no zero-weight edges are
    invented) and an item no other item shares a user with stays an empty row.
    `symmetric=True` then returns max(A, A^T) (an edge kept by either endpoint); the
    caller normalises, e.g. with `sym_normalize`.

    Never dense: R[:, block]^T R is computed for blocks of item rows whose product has at
    most `max_block_nnz` entries (bounded above by the sum, over the block's items, of
    their users' degrees), so peak memory is O(max_block_nnz + n_items * k) (the 1M-entry
    default keeps a block's working set at tens of MiB and in cache).
    """
    if norm not in ("count", "cosine"):
        raise ValueError(f"co_interaction_graph norm must be 'count' or 'cosine', found {norm!r}")
    if int(k) < 1:
        raise ValueError(f"co_interaction_graph needs k >= 1, found {k}")
    k = int(k)
    # float64 keeps the counts exact and makes the cosine ranking reproducible bit for bit
    R = sp.csr_matrix(inter, dtype=np.float64)
    R.sum_duplicates()
    R.data[:] = 1.0
    R.eliminate_zeros()
    n_items = R.shape[1]
    Rt = sp.csr_matrix(R.T)                                   # [I, U]
    item_deg = np.diff(Rt.indptr).astype(np.float64)          # = diag(R^T R)
    user_deg = np.diff(R.indptr).astype(np.float64)
    row_bound = Rt @ user_deg                                 # >= nnz of each row of R^T R
    # block boundaries: consecutive items whose bounds sum to <= max_block_nnz (>= 1 item)
    bounds = [0]
    csum = np.cumsum(row_bound)
    while bounds[-1] < n_items:
        start = bounds[-1]
        base = csum[start - 1] if start > 0 else 0.0
        stop = int(np.searchsorted(csum, base + max_block_nnz, side="right"))
        bounds.append(min(n_items, max(stop, start + 1)))
    out_rows, out_cols, out_vals = [], [], []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        block = sp.coo_matrix(Rt[start:stop] @ R)             # [block, I] co-interaction counts
        rows = block.row.astype(np.int64) + start
        cols = block.col.astype(np.int64)
        vals = block.data
        off = rows != cols                                    # drop the diagonal (self co-occurrence)
        rows, cols, vals = rows[off], cols[off], vals[off]
        if norm == "cosine":
            vals = vals / np.sqrt(item_deg[rows] * item_deg[cols])
        # sort by row, then value descending, then column ascending (the tie rule)
        order = np.lexsort((cols, -vals, rows))
        rows, cols, vals = rows[order], cols[order], vals[order]
        first = np.searchsorted(rows, rows, side="left")      # index of each row's first entry
        keep = (np.arange(rows.shape[0]) - first) < k
        out_rows.append(rows[keep])
        out_cols.append(cols[keep])
        out_vals.append(vals[keep].astype(np.float32))
    rows = np.concatenate(out_rows) if out_rows else np.zeros(0, np.int64)
    cols = np.concatenate(out_cols) if out_cols else np.zeros(0, np.int64)
    vals = np.concatenate(out_vals) if out_vals else np.zeros(0, np.float32)
    graph = sp.csr_matrix((vals, (rows, cols)), shape=(n_items, n_items), dtype=np.float32)
    return symmetrize(graph, "max") if symmetric else graph
