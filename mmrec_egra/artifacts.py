"""On-disk artifact store (LMDB): exported embeddings and built graphs, keyed by content.

One LMDB environment per dataset (`<data_path>/<dataset>/.artifacts`, or a user cache
folder when the data folder is read-only, or `artifact_dir`). An entry is a bundle of
named numpy arrays plus small JSON metadata, stored as one LMDB value:

    MAGIC | u32 header length | header JSON | array bytes ...

The header holds each array's dtype, shape, byte offset and a blake2b checksum of the
payload. Writes are single LMDB transactions (atomic: readers see the old entry or the
new one, never half of it). On read, a bad magic, unparsable header or checksum
mismatch (a corrupt or foreign entry) is reported with a warning, deleted and treated
as absent, so the caller rebuilds it: a damaged entry is never used.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .utils import MMRecError, get_logger

MAGIC = b"MMREGRA1"
MAP_SIZE = 1 << 36          # 64 GiB of address space; the file grows only as needed


def _writable_dir(path: Path) -> bool:
    """Writable for us AND not marked read-only by its mode bits (root ignores those, but a
    folder shipped read-only, like ../shared/data, must not receive our files)."""
    try:
        return os.access(path, os.W_OK) and bool(path.stat().st_mode & stat.S_IWUSR)
    except OSError:
        return False


def default_artifact_dir(data_path: Optional[str], dataset: Optional[str]) -> Path:
    """<data_path>/<dataset>/.artifacts when that dataset folder is writable, else
    ~/.cache/mmrec_egra/<dataset>-<hash of the dataset path>/artifacts (env MMREC_EGRA_CACHE)."""
    if data_path and dataset:
        ds_dir = Path(str(data_path)) / str(dataset)
        if ds_dir.is_dir() and _writable_dir(ds_dir):
            d = ds_dir / ".artifacts"
            d.mkdir(exist_ok=True)
            return d
    base = Path(os.environ.get("MMREC_EGRA_CACHE", Path.home() / ".cache" / "mmrec_egra"))
    tag = hashlib.blake2b(str(Path(str(data_path or "")).resolve()).encode(), digest_size=4).hexdigest()
    d = base / f"{dataset or 'default'}-{tag}" / "artifacts"
    d.mkdir(parents=True, exist_ok=True)
    return d


def artifact_dir_for(config) -> Path:
    """The store folder for a run: `artifact_dir` if set, else the default for its dataset."""
    return Path(config["artifact_dir"]) if config["artifact_dir"] else \
        default_artifact_dir(config["data_path"], config["dataset"])


def content_key(*parts: Any) -> str:
    """A short hex key from JSON-serialisable parts (dataset hash, producing config ...)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def _pack(arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> bytes:
    entries, chunks, offset = [], [], 0
    h = hashlib.blake2b(digest_size=16)
    for name, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        raw = a.tobytes()
        entries.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset,
                        "nbytes": len(raw)})
        chunks.append(raw)
        h.update(raw)
        offset += len(raw)
    header = json.dumps({"arrays": entries, "meta": meta, "checksum": h.hexdigest(),
                         "created": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + b"".join(chunks)


def _unpack(value: bytes) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Inverse of _pack; raises ValueError on any inconsistency."""
    if len(value) < len(MAGIC) + 4 or value[:len(MAGIC)] != MAGIC:
        raise ValueError("not an mmrec_egra artifact (bad magic)")
    (hlen,) = struct.unpack("<I", value[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    try:
        header = json.loads(value[start:start + hlen].decode())
    except Exception as exc:
        raise ValueError(f"unreadable header ({exc})") from None
    payload = memoryview(value)[start + hlen:]
    if hashlib.blake2b(payload, digest_size=16).hexdigest() != header.get("checksum"):
        raise ValueError("checksum mismatch")
    arrays = {}
    for e in header["arrays"]:
        buf = payload[e["offset"]:e["offset"] + e["nbytes"]]
        arrays[e["name"]] = np.frombuffer(buf, dtype=np.dtype(e["dtype"])).reshape(e["shape"]).copy()
    return arrays, header.get("meta", {})


_OPEN: Dict[str, "ArtifactStore"] = {}


def open_store(directory: os.PathLike | str) -> "ArtifactStore":
    """The process-wide store for `directory` (LMDB forbids opening one environment twice)."""
    key = str(Path(directory).resolve())
    if key not in _OPEN:
        _OPEN[key] = ArtifactStore(key)
    return _OPEN[key]


class ArtifactStore:
    """put/get of array bundles with metadata in one LMDB environment (use open_store)."""

    def __init__(self, directory: os.PathLike | str, readonly: bool = False):
        import lmdb  # a core dependency; imported here so a bare import of the package stays light
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.env = lmdb.open(str(self.dir), map_size=MAP_SIZE, subdir=True, readonly=readonly,
                                 lock=not readonly, max_readers=64)
        except lmdb.Error as exc:
            raise MMRecError(f"cannot open the artifact store {self.dir}: {exc}. Remove the folder "
                             f"(mmrec-egra artifacts clear) or set artifact_dir to another folder.") from None

    def close(self) -> None:
        _OPEN.pop(str(self.dir.resolve()), None)
        self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def put(self, key: str, arrays: Dict[str, np.ndarray], meta: Optional[Dict[str, Any]] = None) -> None:
        """Store a bundle atomically (replaces an existing entry with the same key)."""
        value = _pack(arrays, dict(meta or {}))
        with self.env.begin(write=True) as txn:
            txn.put(key.encode(), value)

    def get(self, key: str) -> Optional[Tuple[Dict[str, np.ndarray], Dict[str, Any]]]:
        """(arrays, meta) or None when absent. A corrupt entry is deleted, warned about, and None."""
        with self.env.begin() as txn:
            value = txn.get(key.encode())
            value = bytes(value) if value is not None else None
        if value is None:
            return None
        try:
            return _unpack(value)
        except (ValueError, KeyError, TypeError) as exc:
            get_logger().warning("artifact %s in %s is corrupt or foreign (%s): discarding it; it will be rebuilt",
                                 key, self.dir, exc)
            self.delete(key)
            return None

    def delete(self, key: str) -> bool:
        with self.env.begin(write=True) as txn:
            return txn.delete(key.encode())

    def list(self) -> List[Dict[str, Any]]:
        """One dict per entry: key, size, arrays (name: shape dtype), meta (or an error)."""
        out = []
        with self.env.begin() as txn:
            for k, v in txn.cursor():
                item: Dict[str, Any] = {"key": k.decode(errors="replace"), "bytes": len(v)}
                try:
                    hlen = struct.unpack("<I", bytes(v[len(MAGIC):len(MAGIC) + 4]))[0]
                    header = json.loads(bytes(v[len(MAGIC) + 4:len(MAGIC) + 4 + hlen]).decode())
                    item["arrays"] = {e["name"]: f"{tuple(e['shape'])} {np.dtype(e['dtype']).name}"
                                      for e in header["arrays"]}
                    item["meta"] = header.get("meta", {})
                    item["created"] = header.get("created")
                except Exception as exc:
                    item["error"] = f"unreadable ({exc})"
                out.append(item)
        return out

    def clear(self, prefix: str = "") -> int:
        """Delete every entry whose key starts with `prefix`; returns how many."""
        n = 0
        with self.env.begin(write=True) as txn:
            keys = [k for k, _ in txn.cursor() if k.decode(errors="replace").startswith(prefix)]
            for k in keys:
                txn.delete(k)
                n += 1
        return n
