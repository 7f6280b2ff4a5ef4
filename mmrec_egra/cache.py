"""Content-keyed cache for graphs built from features or interactions.

A cache key is a hash of (a) the content of every array the graph was built from and
(b) every parameter that shapes it, so a cached graph can never be stale: change one
feature value or `knn_k` and the key changes. Entries live in the LMDB artifact store
(artifacts.py) of the dataset, written atomically and checksummed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import scipy.sparse as sp
import torch

from .utils import get_logger

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


class GraphCache:
    """get_or_build(kind, params, inputs, builder) -> scipy CSR, stored in the artifact store.

    The key hashes the content of every input array and every parameter, so a cached
    graph is never stale; a corrupt entry is detected by the store's checksum and rebuilt.
    """

    def __init__(self, directory: Optional[os.PathLike | str], enabled: bool = True):
        self.dir = Path(directory) if directory is not None else None
        self.enabled = enabled and directory is not None

    def get_or_build(self, kind: str, params: Dict[str, Any], inputs: Dict[str, Any],
                     builder: Callable[[], sp.spmatrix]) -> sp.csr_matrix:
        if not self.enabled:
            return sp.csr_matrix(builder())
        from .artifacts import open_store
        key = "graph/" + make_key(kind, params, inputs)
        store = open_store(self.dir)
        hit = store.get(key)
        if hit is not None:
            arrays, meta = hit
            return sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(meta["shape"]))
        graph = sp.csr_matrix(builder())
        graph.sort_indices()
        try:
            store.put(key, {"indptr": graph.indptr, "indices": graph.indices, "data": graph.data},
                      {"kind": kind, "params": params, "shape": list(graph.shape)})
        except Exception as exc:  # a full disk must not stop training
            get_logger().warning("could not store graph %s in %s: %s", key, self.dir, exc)
        return graph
