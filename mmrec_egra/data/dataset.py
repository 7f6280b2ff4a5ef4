"""Reading and validating an MMRec-format dataset: `<name>.inter` + feature files.

This is the only module that parses dataset files. Every problem in a file is reported
as one MMRecError naming the file, the line or key, what was found and what is expected.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..config import modality_files, modality_origin
from ..utils import MMRecError, get_logger

SPLITS = {"train": 0, "valid": 1, "test": 2}
MAX_ID_SLACK = 10_000_000     # ids may have gaps; tables of up to this many unused rows are accepted


def _or(value, default):
    """`default` only when the key is missing (None); an explicit value is kept."""
    return default if value is None else value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_int_table(path: Path, sep: str, columns) -> Optional[pd.DataFrame]:
    """Fast path: the columns parsed as int64 by pandas' C parser (MMRec files hold integer
    ids), or None when any value is not a plain non-negative integer below 2**62 or the file
    does not parse. Then the caller reads the file again as text (`_read_table`), which
    accepts the same files as before (e.g. '1.0') and gives the same error messages.
    20M rows: about 0.5 GiB of int64 instead of 60M Python strings (several GiB, minutes)."""
    try:
        df = pd.read_csv(path, sep=sep, usecols=columns, dtype={c: np.int64 for c in columns}, engine="c")
    except (ValueError, OverflowError, TypeError, OSError):    # incl. parser/UTF-8 errors: the text path reports them
        return None
    for col in columns:
        if df[col].dtype != np.int64:
            return None
        v = df[col].to_numpy()
        if v.size and (v.min() < 0 or v.max() >= 2 ** 62):     # _to_int's bounds: let it name the row
            return None
    return df


def _read_table(path: Path, sep: str, columns) -> pd.DataFrame:
    """The id columns as strings; a parse or encoding problem is one MMRecError naming the line."""
    try:
        return pd.read_csv(path, sep=sep, usecols=columns, dtype=str, keep_default_na=False, engine="c")
    except UnicodeDecodeError as exc:
        line = "?"
        with open(path, "rb") as fh:        # error path only: find the first line that is not UTF-8
            for n, raw in enumerate(fh, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    line = n
                    break
        raise MMRecError(f"{path}, line {line}: bytes that are not UTF-8 text ({exc.reason}). Save the file "
                         f"as UTF-8 (or remove those bytes).") from None
    except pd.errors.ParserError as exc:
        quote = None
        with open(path, "rb") as fh:        # error path only: a stray quote is the usual cause
            for n, raw in enumerate(fh, 1):
                if b'"' in raw:
                    quote = n
                    break
        where = f" (line {quote} holds a quote character \", which makes the parser read across line ends: " \
            f"remove it)" if quote else ""
        raise MMRecError(f"cannot parse {path}: {_first_line(exc)}{where}. Each line must hold the header's "
                         f"columns separated by {sep!r}.") from None
    except (ValueError, OSError) as exc:
        raise MMRecError(f"cannot read {path}: {_first_line(exc)}") from None


class RecDataset:
    """Interactions split into train/valid/test plus per-modality item features.

    n_users = max userID + 1 and n_items = max itemID + 1 over all rows (ids are not
    remapped, as in MMRec). Valid/test rows of users without training rows are dropped
    when `filter_out_cod_start_users` is true.
    """

    def __init__(self, config):
        self.config = config
        self.name = str(config["dataset"])
        self.data_dir = Path(str(config["data_path"])) / self.name
        self.inter_path = self.data_dir / _or(config["inter_file_name"], f"{self.name}.inter")
        self.uid = _or(config["USER_ID_FIELD"], "userID")
        self.iid = _or(config["ITEM_ID_FIELD"], "itemID")
        self.label = _or(config["inter_splitting_label"], "x_label")
        self.item_ids_original: Optional[np.ndarray] = None    # set when remap_ids renumbers items
        self._read_inter(_or(config["field_separator"], "\t"))
        self.features: "OrderedDict[str, np.ndarray]" = self._read_features()
        self._hash: Optional[str] = None

    # ---- interactions ----------------------------------------------------
    def _read_inter(self, sep: str) -> None:
        path = self.inter_path
        if not path.is_file():
            parent = self.data_dir.parent
            have = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
            raise MMRecError(
                f"interaction file not found: {path}. Expected <data_path>/<dataset>/{path.name} in MMRec format. "
                f"Datasets under {parent}: {', '.join(have) or 'none'}. Use --data_path to point at the folder "
                f"that holds '{self.name}/' (e.g. --data_path ../shared/data/), or -d demo for the built-in data.")
        try:
            header = pd.read_csv(path, sep=sep, nrows=0).columns.tolist()
        except UnicodeDecodeError as exc:
            raise MMRecError(f"cannot read {path}: byte {exc.object[exc.start:exc.start + 1]!r} at offset "
                             f"{exc.start} of the header is not UTF-8 text. Save the file as UTF-8.") from None
        except Exception as exc:
            raise MMRecError(f"cannot read {path}: {_first_line(exc)}. Expected a {sep!r}-separated file with a "
                             f"header line.") from None
        missing = [c for c in (self.uid, self.iid, self.label) if c not in header]
        if missing:
            raise MMRecError(f"{path}: header has columns {header}; missing {missing}. The header must name "
                             f"{self.uid}, {self.iid} and {self.label} (set USER_ID_FIELD / ITEM_ID_FIELD / "
                             f"inter_splitting_label or field_separator if your file differs).")
        names = [self.uid, self.iid, self.label]
        df = _read_int_table(path, sep, names)
        if df is None:
            df = _read_table(path, sep, names)
        self._sep = sep
        if len(df) == 0:
            raise MMRecError(f"{path}: no interaction rows after the header")
        cols = {}
        for col in (self.uid, self.iid, self.label):
            cols[col] = self._to_int(df[col], path, col)
        u, i, lab = cols[self.uid], cols[self.iid], cols[self.label]
        u = self._check_id_range(u, df[self.uid], path, self.uid, "users")
        i = self._check_id_range(i, df[self.iid], path, self.iid, "items")
        bad = np.flatnonzero(~np.isin(lab, [0, 1, 2]))
        if bad.size:
            r = bad[0]
            raise MMRecError(f"{path}, line {r + 2}: {self.label} is {lab[r]}; expected 0 (train), 1 (valid) "
                             f"or 2 (test) ({bad.size} such rows)")
        self.n_users = int(u.max()) + 1
        self.n_items = int(i.max()) + 1
        train = lab == 0
        if not train.any():
            raise MMRecError(f"{path}: the train split is empty (no row has {self.label} = 0); "
                             f"at least one training interaction is needed")
        self.train_users, self.train_items = u[train], i[train]
        has_train = np.zeros(self.n_users, dtype=bool)
        has_train[self.train_users] = True
        self.n_filtered = {}
        for name in ("valid", "test"):
            m = lab == SPLITS[name]
            su, si = u[m], i[m]
            if self.config["filter_out_cod_start_users"] is not False:
                keep = has_train[su]
                self.n_filtered[name] = int((~keep).sum())
                su, si = su[keep], si[keep]
            setattr(self, f"{name}_users", su)
            setattr(self, f"{name}_items", si)

    @staticmethod
    def _to_int(col: pd.Series, path: Path, name: str) -> np.ndarray:
        if col.dtype == np.int64:       # `_read_int_table` already checked the bounds
            return col.to_numpy()
        vals = pd.to_numeric(col, errors="coerce")
        arr = vals.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.floor(arr)) | (arr < 0) | (arr >= 2.0 ** 62))
        if bad.size:
            r = bad[0]
            raise MMRecError(f"{path}, line {r + 2}: column {name} holds {col.iloc[r]!r}; expected a non-negative "
                             f"integer id ({bad.size} bad rows). Remove or fix those rows.")
        return arr.astype(np.int64)

    def _check_id_range(self, ids: np.ndarray, col: pd.Series, path: Path, name: str, what: str) -> np.ndarray:
        """Ids index per-id tables (embeddings, masks, features) of size max id + 1, so a stray
        huge id (1e9) would allocate gigabytes: catch it before anything proportional to it
        is built, or renumber the ids 0..n-1 when `remap_ids` is true."""
        uniq = np.unique(ids)
        top = int(uniq[-1])
        if self.config["remap_ids"]:
            if what == "items":
                self.item_ids_original = uniq
            if top + 1 != len(uniq):
                get_logger().info("remap_ids: %d %s renumbered 0..%d (largest id was %d)", len(uniq), what,
                                  len(uniq) - 1, top)
            return np.searchsorted(uniq, ids).astype(np.int64)
        limit = max(4 * len(uniq), len(uniq) + MAX_ID_SLACK)
        if top + 1 > limit:
            r = int(np.argmax(ids))
            if col.dtype != object:     # fast path (int64): quote the id as the file writes it (error path only)
                col = _read_table(path, self._sep, [name])[name]
            raise MMRecError(
                f"{path}, line {r + 2}: {name} {col.iloc[r]} is far beyond the {len(uniq)} distinct {what} of the "
                f"file: ids are used as row numbers (0..n-1, MMRec format), so it would allocate tables for "
                f"{top + 1:,} {what}. Fix that id, or set remap_ids: true (--remap_ids true) to renumber ids "
                f"0..n-1 (feature rows are then read at the original item ids).")
        return ids

    # ---- features --------------------------------------------------------
    def _read_features(self) -> "OrderedDict[str, np.ndarray]":
        feats: "OrderedDict[str, np.ndarray]" = OrderedDict()
        for name, fname in modality_files(self.config).items():
            path = self.data_dir / fname
            if not path.is_file():
                origin = modality_origin(self.config, name)
                if origin:      # named by a yaml or the command line: the dataset claims it, so it must exist
                    raise MMRecError(f"feature file {path} of modality '{name}' does not exist, but {origin} "
                                     f"names it ({fname}). Put the file there, or remove modality '{name}' "
                                     f"from {origin}.")
                continue        # overall.yaml's MMRec default names: read only when present
            remapped = self.item_ids_original is not None
            try:
                # remapped ids read only the rows they need from a memory map
                arr = np.load(path, allow_pickle=False, mmap_mode="r" if remapped else None)
            except Exception as exc:
                raise MMRecError(f"cannot read feature file {path} ({name}): {_first_line(exc)}. Expected a .npy "
                                 f"float array [n_items, d] saved with np.save (a truncated file must be "
                                 f"written again).") from None
            if not isinstance(arr, np.ndarray):      # np.load returns an archive for .npz content
                inner = list(getattr(arr, "files", []))
                if hasattr(arr, "close"):
                    arr.close()
                raise MMRecError(f"feature file {path} ({name}) is an .npz archive (arrays: {', '.join(inner)}), "
                                 f"not a .npy array. Save one array with np.save(path, arr), or extract it: "
                                 f"np.save('{path.name}', np.load('{path.name}')['{inner[0] if inner else 'arr_0'}'])")
            if remapped and arr.ndim == 2:
                if arr.shape[0] <= int(self.item_ids_original[-1]):
                    raise MMRecError(f"feature file {path} ({name}) has {arr.shape[0]} rows; with remap_ids its "
                                     f"rows are read at the original item ids, up to "
                                     f"{int(self.item_ids_original[-1])}: one row per original item id is needed")
                arr = np.asarray(arr[self.item_ids_original])
            if arr.ndim != 2:
                raise MMRecError(f"feature file {path} ({name}) has shape {arr.shape}; expected a 2-D array "
                                 f"[n_items={self.n_items}, d]")
            if arr.shape[0] != self.n_items:
                raise MMRecError(f"feature file {path} ({name}) has {arr.shape[0]} rows; expected {self.n_items} "
                                 f"(max itemID + 1 in {self.inter_path.name}), one row per item id")
            if not np.issubdtype(arr.dtype, np.number):
                raise MMRecError(f"feature file {path} ({name}) has dtype {arr.dtype}; expected floats")
            arr = arr.astype(np.float32, copy=False)
            finite = np.isfinite(arr)
            if not finite.all():
                r, c = np.argwhere(~finite)[0]
                raise MMRecError(f"feature file {path} ({name}) holds {arr[r, c]} at row {r}, column {c} "
                                 f"({int((~finite).sum())} non-finite values); expected finite numbers. "
                                 f"Replace NaN/inf (e.g. with 0) and save again.")
            feats[name] = arr
        return feats

    # ---- MMRec dataset interface ----------------------------------------
    def get_user_num(self) -> int:
        return self.n_users

    def get_item_num(self) -> int:
        return self.n_items

    def split(self, name: str):
        """(users, items) arrays of a split: 'train', 'valid' or 'test'."""
        return getattr(self, f"{name}_users"), getattr(self, f"{name}_items")

    def inter_matrix(self, form: str = "coo", split: str = "train") -> sp.spmatrix:
        """[n_users, n_items] scipy matrix of a split, value 1 (duplicates collapsed)."""
        u, i = self.split(split)
        m = sp.csr_matrix((np.ones(len(u), dtype=np.float32), (u, i)), shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        if form == "csr":
            return m
        if form == "coo":
            return m.tocoo()
        raise MMRecError(f"inter_matrix form must be 'coo' or 'csr', found {form!r}")

    def item_popularity(self) -> np.ndarray:
        """Training interaction count per item."""
        return np.bincount(self.train_items, minlength=self.n_items)

    def content_hash(self) -> str:
        """Hash of the interaction file and every feature file used (for artifact keys)."""
        if self._hash is None:
            h = hashlib.blake2b(digest_size=16)
            files = [self.inter_path] + [self.data_dir / f for n, f in modality_files(self.config).items()
                                         if n in self.features]
            for f in files:
                h.update(f.name.encode())
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 22), b""):
                        h.update(chunk)
            self._hash = h.hexdigest()
        return self._hash

    def summary(self) -> str:
        n_tr, n_va, n_te = len(self.train_users), len(self.valid_users), len(self.test_users)
        mods = ", ".join(f"{k} {v.shape[1]}-d" for k, v in self.features.items()) or "no feature files"
        dens = n_tr / max(1, self.n_users * self.n_items)
        return (f"dataset {self.name}: {self.n_users} users, {self.n_items} items, interactions "
                f"{n_tr} train / {n_va} valid / {n_te} test (train density {dens:.5f}); modalities: {mods}")


def load_dataset(config) -> RecDataset:
    """Build the dataset, generating the demo data first when `-d demo` has no files yet."""
    if str(config["dataset"]) == "demo":
        from .demo import ensure_demo
        ensure_demo(Path(str(config["data_path"])) / "demo")
    ds = RecDataset(config)
    log = get_logger()
    log.info(ds.summary())
    for name, n in getattr(ds, "n_filtered", {}).items():
        if n:
            log.info("dropped %d %s rows of cold-start users (filter_out_cod_start_users)", n, name)
    return ds
