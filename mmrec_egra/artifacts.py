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
LMDB_MAGIC = 0xBEEFC0DE
# LMDB meta page (64-bit build): 16-byte page header, then mm_magic u32, mm_version u32,
# mm_address, mm_mapsize, two 48-byte MDB_db records (the first one's md_pad is the page
# size), mm_last_pg u64, mm_txnid u64.
_META_MAGIC, _META_PSIZE, _META_LAST_PG = 16, 40, 136


def check_lmdb_file(directory: os.PathLike | str) -> Optional[str]:
    """Why `<directory>/data.mdb` cannot be mapped safely, or None if it looks whole.

    LMDB maps the file and trusts its own metadata: a truncated file (a copy cut short, a
    full disk) makes the first read past its end kill the process with a bus error, no
    message. So before opening, compare the file size with the size its newest meta page
    records ((last page + 1) x page size).
    """
    path = Path(directory) / "data.mdb"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None                    # LMDB initialises an empty file
    with open(path, "rb") as fh:
        head = fh.read(2 * 65536)
    best = None
    psize0 = struct.unpack_from("<I", head, _META_PSIZE)[0] if len(head) >= 44 else 0
    for off in sorted({0, psize0, 4096, 8192, 16384, 65536}):
        if off + _META_LAST_PG + 16 > len(head):
            continue
        magic = struct.unpack_from("<I", head, off + _META_MAGIC)[0]
        if magic != LMDB_MAGIC:
            continue
        psize = struct.unpack_from("<I", head, off + _META_PSIZE)[0]
        last_pg, txnid = struct.unpack_from("<QQ", head, off + _META_LAST_PG)
        if best is None or txnid > best[2]:
            best = (psize, last_pg, txnid)
    if best is None:
        return f"{path} is not an LMDB file (no valid meta page; {size} bytes)"
    psize, last_pg, _ = best
    if not 512 <= psize <= 65536 or size < 2 * psize:
        return f"{path} has a damaged header (page size {psize}, file {size} bytes)"
    need = (last_pg + 1) * psize
    if size < need:
        return f"{path} is truncated: {size} bytes, its metadata says {need}"
    return None


def quarantine_store(directory: os.PathLike | str, reason: str) -> Path:
    """Move a damaged store folder aside (`<dir>.damaged-<time>`) so a fresh one can be made."""
    src = Path(directory)
    dst = src.with_name(f"{src.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while dst.exists():
        dst = src.with_name(f"{src.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    src.rename(dst)
    get_logger().warning("artifact store %s is damaged (%s): moved it to %s and starting an empty store; "
                         "its graphs and teacher exports will be rebuilt. Delete %s when you no longer need it.",
                         src, reason, dst, dst)
    return dst


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
        problem = check_lmdb_file(self.dir)
        if problem is not None:           # checked before mapping: a short file would crash the process
            quarantine_store(self.dir, problem)
            self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.env = self._open(lmdb, readonly)
        except (lmdb.InvalidError, lmdb.CorruptedError, lmdb.VersionMismatchError, lmdb.PageNotFoundError) as exc:
            quarantine_store(self.dir, f"LMDB says: {exc}")
            self.dir.mkdir(parents=True, exist_ok=True)
            self.env = self._open(lmdb, readonly)

    def _open(self, lmdb, readonly: bool):
        try:
            return lmdb.open(str(self.dir), map_size=MAP_SIZE, subdir=True, readonly=readonly,
                             lock=not readonly, max_readers=64)
        except (lmdb.InvalidError, lmdb.CorruptedError, lmdb.VersionMismatchError, lmdb.PageNotFoundError):
            raise
        except lmdb.Error as exc:
            raise MMRecError(f"cannot open the artifact store {self.dir}: {exc}. Set artifact_dir to another "
                             f"folder, or delete {self.dir} (it only holds rebuildable caches).") from None

    def close(self) -> None:
        _OPEN.pop(str(self.dir.resolve()), None)
        self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def put(self, key: str, arrays: Dict[str, np.ndarray], meta: Optional[Dict[str, Any]] = None) -> None:
        """Store a bundle atomically (replaces an existing entry with the same key)."""
        import lmdb
        value = _pack(arrays, dict(meta or {}))
        try:
            with self.env.begin(write=True) as txn:
                txn.put(key.encode(), value)
        except lmdb.Error as exc:       # the transaction is aborted: the old entry (if any) stays
            hint = "free disk space" if ("space" in str(exc).lower() or "full" in str(exc).lower()) else \
                "set artifact_dir to another folder"
            raise MMRecError(f"cannot write {key} ({len(value) / 2 ** 20:.1f} MiB) to the artifact store "
                             f"{self.dir}: {exc}. {hint[0].upper() + hint[1:]} and rerun.") from None

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
