"""Deterministic generator of the built-in `demo` dataset (no download needed).

Planted structure: items have 16-d latent factors grouped in 24 topics; users prefer
one or two topics; the probability that a user picks an item is softmax(u.v / 2 + b_i)
with a Zipf-like popularity bias b_i, so popularity is skewed and most items are in the
long tail. Two modalities are noisy projections of the item factors (image: 128-d,
non-negative after a ReLU, like CNN features; text: 64-d, Gaussian noise), so a model
that reads the features can place rarely seen items better than one that cannot.
Each user's items are split 8:1:1 at random (at least one valid and one test item).

Default size: 2,000 users, 1,500 items, ~40k interactions; a few seconds to generate.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..utils import get_logger

DEMO_VERSION = 1


def generate_demo(out_dir: str | Path, n_users: int = 2000, n_items: int = 1500, seed: int = 2024,
                  latent_dim: int = 16, n_topics: int = 24, mean_len: float = 20.0) -> Path:
    """Write demo.inter, image_feat.npy and text_feat.npy into `out_dir` (atomically)."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_topics, latent_dim))
    item_topic = rng.integers(0, n_topics, size=n_items)
    V = centers[item_topic] + 0.6 * rng.normal(size=(n_items, latent_dim))
    # users: a mixture of one or two topics
    t1 = rng.integers(0, n_topics, size=n_users)
    t2 = rng.integers(0, n_topics, size=n_users)
    mix = rng.uniform(0.5, 1.0, size=(n_users, 1))
    U = mix * centers[t1] + (1 - mix) * centers[t2] + 0.5 * rng.normal(size=(n_users, latent_dim))
    pop_rank = rng.permutation(n_items)
    bias = -1.1 * np.log1p(pop_rank / 8.0)             # Zipf-like skew in popularity
    lengths = np.minimum(5 + rng.geometric(1.0 / (mean_len - 4), size=n_users), n_items // 4)

    users, items = [], []
    block = 500
    for s in range(0, n_users, block):                 # bounded [block, n_items] score blocks
        e = min(n_users, s + block)
        logits = U[s:e] @ V.T / 2.0 + bias
        gumbel = logits - np.log(-np.log(rng.uniform(1e-12, 1.0, size=logits.shape)))
        top = np.argsort(-gumbel, axis=1)
        L = lengths[s:e]
        mask = np.arange(n_items)[None, :] < L[:, None]
        users.append(np.repeat(np.arange(s, e), L))
        items.append(top[mask])
    users = np.concatenate(users)
    items = np.concatenate(items)

    # per-user 8:1:1 split: rank each user's rows by a random key
    key = rng.random(len(users))
    order = np.lexsort((key, users))
    users, items = users[order], items[order]
    start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    pos = np.arange(len(users)) - start
    n_va = np.maximum(1, np.round(0.1 * lengths)).astype(int)
    n_te = np.maximum(1, np.round(0.1 * lengths)).astype(int)
    Lr, va, te = np.repeat(lengths, lengths), np.repeat(n_va, lengths), np.repeat(n_te, lengths)
    label = np.zeros(len(users), dtype=np.int64)
    label[pos >= Lr - va - te] = 1
    label[pos >= Lr - te] = 2

    W_img = rng.normal(size=(latent_dim, 128)) / np.sqrt(latent_dim)
    image = np.maximum(0.0, V @ W_img + 1.0 * rng.normal(size=(n_items, 128))).astype(np.float32)
    W_txt = rng.normal(size=(latent_dim, 64)) / np.sqrt(latent_dim)
    text = (V @ W_txt + 1.2 * rng.normal(size=(n_items, 64))).astype(np.float32)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        with open(tmp / "demo.inter", "w") as fh:
            fh.write("userID\titemID\trating\ttimestamp\tx_label\n")
            rows = np.column_stack([users, items, np.ones_like(users), np.arange(len(users)), label])
            np.savetxt(fh, rows, fmt="%d", delimiter="\t")
        np.save(tmp / "image_feat.npy", image)
        np.save(tmp / "text_feat.npy", text)
        (tmp / "VERSION").write_text(f"{DEMO_VERSION}\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def ensure_demo(out_dir: str | Path) -> Path:
    """Generate the demo dataset into `out_dir` unless an up-to-date copy is there."""
    out_dir = Path(out_dir)
    version = out_dir / "VERSION"
    if version.is_file() and version.read_text().strip() == str(DEMO_VERSION) and (out_dir / "demo.inter").is_file():
        return out_dir
    get_logger().info("generating the built-in demo dataset in %s", out_dir)
    return generate_demo(out_dir)
