"""Deterministic synthetic datasets at scale (up to ~1M users x 1M items x 20M interactions).

Written as an MMRec-format dataset folder (`<out>/<name>.inter`, `text_feat.npy`,
`image_feat.npy`), so every loader, model and benchmark reads it like real data.

Model (all vectorised; the same seed gives byte-identical files):
- items belong to `n_topics` topics and have a `latent_dim` factor v_i = c_topic + noise;
  item popularity is a power law q_i ~ (rank_i + 1)^-item_alpha over a random ranking;
- user activity is a power law too: user u (in a random activity ranking) gets
  L_u = min_len + share of the remaining interactions proportional to (rank_u + 1)^-user_alpha,
  capped at `max_len_ratio` of the catalog; the lengths sum exactly to `n_inter`;
- each interaction of user u picks, with probability `topic_affinity`, an item of u's
  favourite topic, else any item, in both cases proportionally to q (inverse-CDF
  sampling on one topic-ordered cumulative sum); duplicate (user, item) pairs are
  redrawn until none is left, so there are exactly `n_inter` distinct pairs;
- each user's rows are split 8:1:1 at random (at least one valid and one test row when
  the user has three or more);
- text features (`text_dim`, default 384, Gaussian) and image features (`image_dim`,
  default 4096, non-negative after a ReLU, like CNN features) are noisy linear
  projections of v_i. They are written in fixed blocks of rows into memory-mapped .npy
  files (np.lib.format.open_memmap), so a 1M x 4096 float32 file (16 GiB) is never held
  in memory; each block has its own seeded generator, which keeps the values independent
  of how much memory the machine has. `image_dim=0` (or `text_dim=0`) skips a modality.

CLI: `python -m mmrec_egra.data.synth --out data/synth --users 100000 --items 100000
--inter 2000000 [--image_dim 0] [--seed 0]`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ..utils import MMRecError

SYNTH_VERSION = 1
FEATURE_BLOCK = 8192          # rows per seeded feature block: part of the output's definition, not a tuning knob
_STREAM = {"structure": 0, "lengths": 1, "items": 2, "split": 3, "text": 4, "image": 5}


def _rng(seed: int, stream: str, block: int = 0) -> np.random.Generator:
    """An independent generator per (seed, purpose, block): one stage's draws never shift another's."""
    return np.random.default_rng([int(seed), _STREAM[stream], int(block)])


def power_law_lengths(n_users: int, n_inter: int, min_len: int, alpha: float, cap: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Per-user interaction counts: min_len each plus a power-law share of the rest, capped
    at `cap`, summing exactly to n_inter (largest remainders get the leftover units)."""
    if n_users * min_len > n_inter:
        raise MMRecError(f"synth: {n_users} users x min_len {min_len} = {n_users * min_len} interactions exceeds "
                         f"n_inter={n_inter}; raise --inter or lower --min_len")
    if n_inter > n_users * cap:
        raise MMRecError(f"synth: n_inter={n_inter} does not fit {n_users} users with at most {cap} items each; "
                         f"raise --items or --users")
    rank = rng.permutation(n_users)
    w = (rank + 1.0) ** -alpha
    lengths = np.full(n_users, min_len, dtype=np.int64)
    rest = n_inter - lengths.sum()
    # water-filling: spread the rest proportionally to w; users at the cap drop out of later rounds
    while rest > 0:
        room = cap - lengths
        open_ = room > 0
        share = np.where(open_, w, 0.0)
        share = share / share.sum() * rest
        add = np.minimum(np.floor(share).astype(np.int64), room)
        if add.sum() == 0:     # leftover units < number of open users: give one each to the heaviest
            idx = np.flatnonzero(open_)
            idx = idx[np.argsort(-w[idx], kind="stable")][:rest]
            add = np.zeros(n_users, dtype=np.int64)
            add[idx] = 1
        lengths += add
        rest = n_inter - lengths.sum()
    return lengths


def _split_labels(users: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x_label per row (rows grouped by user): a random 8:1:1 split of each user's rows."""
    key = rng.random(len(users))
    order = np.lexsort((key, users))        # random position of each row inside its user
    pos = np.empty(len(users), dtype=np.int64)
    start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    pos[order] = np.arange(len(users)) - start
    L = np.repeat(lengths, lengths)
    n_va = np.where(lengths >= 3, np.maximum(1, np.round(0.1 * lengths)), 0).astype(np.int64)
    va, te = np.repeat(n_va, lengths), np.repeat(n_va, lengths)
    label = np.zeros(len(users), dtype=np.int8)
    label[pos >= L - va - te] = 1
    label[pos >= L - te] = 2
    return label


def _write_features(path: Path, V: np.ndarray, dim: int, seed: int, stream: str, nonneg: bool,
                    noise: float) -> None:
    """[n_items, dim] float32 .npy written block by block through a memory map."""
    n, latent = V.shape
    W = _rng(seed, stream, 2 ** 31 - 1).normal(size=(latent, dim)).astype(np.float32) / np.float32(np.sqrt(latent))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for b, start in enumerate(range(0, n, FEATURE_BLOCK)):
        stop = min(n, start + FEATURE_BLOCK)
        block = V[start:stop] @ W
        block += np.float32(noise) * _rng(seed, stream, b).standard_normal(size=block.shape, dtype=np.float32)
        if nonneg:
            np.maximum(block, 0.0, out=block)
        out[start:stop] = block
    out.flush()
    del out


# preset sizes (users, items, interactions); every value can also be given explicitly
SIZES: Dict[str, tuple] = {
    "tiny": (2_000, 2_000, 40_000),
    "100k": (100_000, 100_000, 2_000_000),
    "300k": (300_000, 300_000, 6_000_000),
    "1m": (1_000_000, 1_000_000, 20_000_000),
}

_ROW_CHUNK = 1 << 21          # rows drawn per vectorised chunk (bounds the float64 temporaries to ~16 MiB each)


class _ItemSampler:
    """Inverse-CDF sampling of items proportionally to popularity, globally or inside a topic."""

    def __init__(self, item_topic: np.ndarray, popularity: np.ndarray, n_topics: int):
        self.order = np.argsort(item_topic, kind="stable")          # items grouped by topic
        self.cum = np.cumsum(popularity[self.order])
        counts = np.bincount(item_topic, minlength=n_topics)
        self.hi_idx = np.cumsum(counts) - 1                          # last position of each topic
        self.lo_idx = self.hi_idx - counts + 1                       # first position
        self.has = counts > 0
        prev = np.concatenate([[0.0], self.cum])
        self.cum_lo = prev[self.lo_idx]
        self.cum_hi = prev[self.hi_idx + 1]

    def draw(self, topics: np.ndarray, use_topic: np.ndarray, r: np.ndarray) -> np.ndarray:
        use_topic = use_topic & self.has[topics]
        lo = np.where(use_topic, self.cum_lo[topics], 0.0)
        hi = np.where(use_topic, self.cum_hi[topics], self.cum[-1])
        pos = np.searchsorted(self.cum, lo + r * (hi - lo), side="right")
        # float rounding at a range end must not leave the topic (or the array)
        pos = np.where(use_topic, np.clip(pos, self.lo_idx[topics], self.hi_idx[topics]),
                       np.minimum(pos, len(self.cum) - 1))
        return self.order[pos]


def _draw(sampler: _ItemSampler, topics: np.ndarray, affinity: float, rng: np.random.Generator,
          n_items: int, uniform: bool = False) -> np.ndarray:
    out = np.empty(len(topics), dtype=np.int64)
    for s in range(0, len(topics), _ROW_CHUNK):
        e = min(len(topics), s + _ROW_CHUNK)
        if uniform:
            out[s:e] = rng.integers(0, n_items, size=e - s)
        else:
            out[s:e] = sampler.draw(topics[s:e], rng.random(e - s) < affinity, rng.random(e - s))
    return out


def _dedupe(users: np.ndarray, items: np.ndarray, sampler: _ItemSampler, user_topic: np.ndarray,
            affinity: float, rng: np.random.Generator, n_users: int, n_items: int) -> int:
    """Redraw repeated (user, item) pairs in place until all pairs are distinct; returns rounds.

    Only the rows of users that had a repeat are re-checked in later rounds. After 30
    rounds the redraws become uniform over items, which ends the loop for any user with
    fewer rows than items (guaranteed by the length cap).
    """
    check = np.arange(len(users))
    rounds = 0
    while check.size:
        keys = users[check].astype(np.int64) * n_items + items[check]
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        dup_sorted = np.flatnonzero(sk[1:] == sk[:-1]) + 1
        if dup_sorted.size == 0:
            break
        redo = check[order[dup_sorted]]
        rounds += 1
        items[redo] = _draw(sampler, user_topic[users[redo]], affinity, rng, n_items, uniform=rounds > 30)
        affected = np.zeros(n_users, dtype=bool)
        affected[users[redo]] = True
        check = check[affected[users[check]]]
    return rounds


def generate_synth(out_dir: str | Path, n_users: int, n_items: int, n_inter: int, seed: int = 0,
                   text_dim: int = 384, image_dim: int = 4096, n_topics: int = 200, latent_dim: int = 32,
                   user_alpha: float = 0.8, item_alpha: float = 0.9, min_len: int = 5,
                   max_len_ratio: float = 0.2, topic_affinity: float = 0.7, name: Optional[str] = None) -> Path:
    """Write `<name>.inter`, `text_feat.npy`, `image_feat.npy` and `synth.json` into `out_dir`.

    Atomic: everything is written into a temporary sibling folder that is renamed at the
    end, so a failure leaves no half-written dataset. Returns `out_dir`.
    """
    out_dir = Path(out_dir)
    name = name or out_dir.name
    n_users, n_items, n_inter = int(n_users), int(n_items), int(n_inter)
    for key, val, low in (("n_users", n_users, 1), ("n_items", n_items, 2), ("n_inter", n_inter, 1),
                          ("min_len", min_len, 1), ("n_topics", n_topics, 1), ("latent_dim", latent_dim, 1)):
        if val < low:
            raise MMRecError(f"synth: {key} must be >= {low}, found {val}")
    if text_dim < 0 or image_dim < 0:
        raise MMRecError(f"synth: feature dims must be >= 0 (0 skips the modality), found text_dim={text_dim}, "
                         f"image_dim={image_dim}")
    cap = max(min_len, int(max_len_ratio * n_items))
    params = dict(n_users=n_users, n_items=n_items, n_inter=n_inter, seed=int(seed), text_dim=int(text_dim),
                  image_dim=int(image_dim), n_topics=int(n_topics), latent_dim=int(latent_dim),
                  user_alpha=float(user_alpha), item_alpha=float(item_alpha), min_len=int(min_len),
                  max_len_ratio=float(max_len_ratio), topic_affinity=float(topic_affinity), version=SYNTH_VERSION)

    rs = _rng(seed, "structure")
    centers = rs.normal(size=(n_topics, latent_dim)).astype(np.float32)
    item_topic = rs.integers(0, n_topics, size=n_items)
    V = centers[item_topic] + np.float32(0.6) * rs.standard_normal(size=(n_items, latent_dim), dtype=np.float32)
    popularity = (rs.permutation(n_items) + 1.0) ** -float(item_alpha)
    user_topic = rs.integers(0, n_topics, size=n_users)

    lengths = power_law_lengths(n_users, n_inter, int(min_len), float(user_alpha), cap, _rng(seed, "lengths"))
    users = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    sampler = _ItemSampler(item_topic, popularity, n_topics)
    ri = _rng(seed, "items")
    items = _draw(sampler, user_topic[users], topic_affinity, ri, n_items)
    rounds = _dedupe(users, items, sampler, user_topic, topic_affinity, ri, n_users, n_items)
    label = _split_labels(users, lengths, _rng(seed, "split"))
    del sampler

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    tmp.chmod(0o755)      # mkdtemp makes it private; the dataset folder should read like any other
    try:
        _write_inter(tmp / f"{name}.inter", users, items, label)
        if text_dim:
            _write_features(tmp / "text_feat.npy", V, int(text_dim), seed, "text", nonneg=False, noise=1.0)
        if image_dim:
            _write_features(tmp / "image_feat.npy", V, int(image_dim), seed, "image", nonneg=True, noise=1.0)
        stats = dict(params, name=name, dedupe_rounds=rounds, n_train=int((label == 0).sum()),
                     n_valid=int((label == 1).sum()), n_test=int((label == 2).sum()),
                     max_user_len=int(lengths.max()), max_item_count=int(np.bincount(items, minlength=n_items).max()))
        (tmp / "synth.json").write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_inter(path: Path, users: np.ndarray, items: np.ndarray, label: np.ndarray) -> None:
    """Tab-separated userID, itemID, x_label with a header, written in bounded chunks."""
    import pandas as pd
    with open(path, "w") as fh:
        fh.write("userID\titemID\tx_label\n")
        for s in range(0, len(users), _ROW_CHUNK):
            e = min(len(users), s + _ROW_CHUNK)
            pd.DataFrame({"u": users[s:e], "i": items[s:e], "l": label[s:e]}).to_csv(
                fh, sep="\t", header=False, index=False)


def synth_params(out_dir: str | Path) -> Optional[dict]:
    """The parameters recorded in an existing synthetic folder (None when there is none)."""
    meta = Path(out_dir) / "synth.json"
    if not meta.is_file():
        return None
    return json.loads(meta.read_text())


def ensure_synth(out_dir: str | Path, **kwargs) -> Path:
    """`generate_synth` unless `out_dir` already holds a dataset made with the same parameters."""
    have = synth_params(out_dir)
    if have is not None:
        want = dict(kwargs)
        if all(have.get(k) == (v if not isinstance(v, float) else float(v)) for k, v in want.items() if k != "name") \
                and have.get("version") == SYNTH_VERSION:
            return Path(out_dir)
    return generate_synth(out_dir, **kwargs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m mmrec_egra.data.synth --out DIR (--size 100k | --users U --items I --inter N) ...`."""
    p = argparse.ArgumentParser(prog="python -m mmrec_egra.data.synth",
                                description="Write a deterministic synthetic MMRec-format dataset folder")
    p.add_argument("--out", required=True, help="dataset folder to write, e.g. data/synth (its name is the dataset name)")
    p.add_argument("--size", choices=sorted(SIZES), default=None,
                   help="preset (users, items, interactions): " + ", ".join(f"{k}={v}" for k, v in SIZES.items()))
    p.add_argument("--users", type=int, default=None)
    p.add_argument("--items", type=int, default=None)
    p.add_argument("--inter", type=int, default=None, help="number of distinct (user, item) pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text_dim", type=int, default=384, help="0 skips text_feat.npy")
    p.add_argument("--image_dim", type=int, default=4096, help="0 skips image_feat.npy (4096 x 1M items is 16 GiB on disk)")
    p.add_argument("--topics", type=int, default=200)
    p.add_argument("--user_alpha", type=float, default=0.8, help="power-law exponent of user activity")
    p.add_argument("--item_alpha", type=float, default=0.9, help="power-law exponent of item popularity")
    p.add_argument("--min_len", type=int, default=5, help="interactions of the least active user")
    p.add_argument("--topic_affinity", type=float, default=0.7)
    a = p.parse_args(argv)
    u, i, n = SIZES[a.size] if a.size else (None, None, None)
    u, i, n = a.users or u, a.items or i, a.inter or n
    try:
        if u is None or i is None or n is None:
            raise MMRecError("synth: give --size or all of --users, --items and --inter")
        out = generate_synth(a.out, u, i, n, seed=a.seed, text_dim=a.text_dim, image_dim=a.image_dim,
                             n_topics=a.topics, user_alpha=a.user_alpha, item_alpha=a.item_alpha,
                             min_len=a.min_len, topic_affinity=a.topic_affinity)
    except MMRecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}: " + json.dumps(synth_params(out), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
