"""Content-keyed cache for graphs built from features or interactions.

A cache key is a hash of (a) the content of every array the graph was built from and
(b) every parameter that shapes it, so a cached graph can never be stale: change one
feature value or `knn_k` and the key changes. Entries are .npz files written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import scipy.sparse as sp
import torch

from .utils import atomic_write, get_logger

CACHE_VERSION = 1  # bump when a builder's mathematics changes


def array_digest(arr) -> str:
    """blake2b of an array's dtype, shape and bytes (torch tensors are read on CPU)."""
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    elif sp.issparse(arr):
        c = sp.csr_matrix(arr)
        h = hashlib.blake2b(digest_size=16)
        for part in (c.indptr, c.indices, c.data):
            h.update(array_digest(part).encode())
        h.update(str(c.shape).encode())
        return h.hexdigest()
    arr = np.ascontiguousarray(arr)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(arr.dtype).encode())
    h.update(str(arr.shape).encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def make_key(kind: str, params: Dict[str, Any], inputs: Dict[str, Any]) -> str:
    """Key from a graph kind, its parameters and its input arrays (hashed by content)."""
    digests = {name: array_digest(v) for name, v in sorted(inputs.items())}
    blob = json.dumps({"v": CACHE_VERSION, "kind": kind, "params": params, "inputs": digests},
                      sort_keys=True, default=str)
    return f"{kind}-{hashlib.blake2b(blob.encode(), digest_size=12).hexdigest()}"


def default_cache_dir(data_path: Optional[str], dataset: Optional[str]) -> Path:
    """<data_path>/<dataset>/.cache when writable, else ~/.cache/mmrec_egra/<dataset>."""
    if data_path and dataset:
        d = Path(str(data_path)) / str(dataset) / ".cache"
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            pass
    base = Path(os.environ.get("MMREC_EGRA_CACHE", Path.home() / ".cache" / "mmrec_egra"))
    d = base / str(dataset or "default")
    d.mkdir(parents=True, exist_ok=True)
    return d


class GraphCache:
    """get_or_build(kind, params, inputs, builder) -> scipy CSR, cached on disk by content."""

    def __init__(self, directory: Optional[os.PathLike | str], enabled: bool = True):
        self.dir = Path(directory) if directory is not None else None
        self.enabled = enabled and directory is not None

    def get_or_build(self, kind: str, params: Dict[str, Any], inputs: Dict[str, Any],
                     builder: Callable[[], sp.spmatrix]) -> sp.csr_matrix:
        if not self.enabled:
            return sp.csr_matrix(builder())
        key = make_key(kind, params, inputs)
        path = self.dir / f"{key}.npz"
        if path.is_file():
            try:
                return sp.load_npz(path).tocsr()
            except Exception as exc:  # a truncated or foreign file: rebuild, never use it
                get_logger().warning("graph cache entry %s is unreadable (%s); rebuilding", path, exc)
        graph = sp.csr_matrix(builder())
        try:
            atomic_write(path, lambda fh: sp.save_npz(fh, graph, compressed=False), mode="wb")
        except OSError as exc:
            get_logger().warning("could not write graph cache %s: %s", path, exc)
        return graph
