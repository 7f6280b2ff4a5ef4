"""Train and evaluation loaders with MMRec's interfaces, fully vectorised.

TrainDataLoader yields LongTensor [3, B] (user, positive, negative), or [2, B] when
`use_neg_sampling` is false. Negatives are uniform over items seen in training and
never one of the user's own training items; they are drawn for a whole epoch at once
with rejection rounds over arrays (no Python loop per row).

EvalDataLoader yields (users, (mask_rows, mask_cols)): the user ids of the batch and
the positions of their training items in the batch's [B, n_items] score matrix.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import scipy.sparse as sp
import torch

from ..utils import MMRecError
from .dataset import RecDataset


class NegativeSampler:
    """Uniform negatives over training items, rejecting each user's training items."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int):
        self.n_items = int(n_items)
        self.pool = np.unique(items)                       # items seen in training
        self.keys = np.unique(users.astype(np.int64) * self.n_items + items)   # sorted (user, item) pairs

    def _is_positive(self, users: np.ndarray, cand: np.ndarray) -> np.ndarray:
        q = users.astype(np.int64) * self.n_items + cand
        pos = np.searchsorted(self.keys, q)
        pos[pos == len(self.keys)] = 0
        return self.keys[pos] == q

    def sample(self, users: np.ndarray, rng: np.random.Generator, max_rounds: int = 1000) -> np.ndarray:
        """One negative per entry of `users`."""
        neg = self.pool[rng.integers(0, len(self.pool), size=len(users))]
        todo = np.flatnonzero(self._is_positive(users, neg))
        rounds = 0
        while todo.size:
            rounds += 1
            if rounds > max_rounds:
                bad = np.unique(users[todo])[:5]
                raise MMRecError(f"cannot sample negatives for users {bad.tolist()}: they interacted with every "
                                 f"training item. Remove such users or set use_neg_sampling: false.")
            neg[todo] = self.pool[rng.integers(0, len(self.pool), size=todo.size)]
            todo = todo[self._is_positive(users[todo], neg[todo])]
        return neg


class TrainDataLoader:
    """Shuffled training batches with negatives; MMRec's `inter_matrix(form)` too."""

    def __init__(self, config, dataset: RecDataset, batch_size: Optional[int] = None, shuffle: bool = True):
        self.config = config
        self.dataset = dataset
        self.batch_size = int(_first_set(batch_size, config["train_batch_size"], 2048))
        self.shuffle = shuffle
        self.neg_sampling = config["use_neg_sampling"] is not False
        self.users = dataset.train_users.astype(np.int64)
        self.items = dataset.train_items.astype(np.int64)
        self.sampler = NegativeSampler(self.users, self.items, dataset.n_items) if self.neg_sampling else None
        self.rng = np.random.default_rng(int(_first(config["seed"], 0)))
        self._inter: Dict[str, sp.spmatrix] = {}

    def set_seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(int(seed))

    def get_rng_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def pretrain_setup(self) -> None:
        """MMRec calls this once before training; nothing to prepare here."""

    def inter_matrix(self, form: str = "coo") -> sp.spmatrix:
        if form not in self._inter:
            self._inter[form] = self.dataset.inter_matrix(form)
        return self._inter[form]

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.batch_size)

    def epoch_arrays(self) -> np.ndarray:
        """The whole epoch as a [3, N] (or [2, N]) int64 array, shuffled, negatives drawn."""
        order = self.rng.permutation(len(self.users)) if self.shuffle else np.arange(len(self.users))
        u, i = self.users[order], self.items[order]
        if not self.neg_sampling:
            return np.stack([u, i])
        return np.stack([u, i, self.sampler.sample(u, self.rng)])

    def __iter__(self) -> Iterator[torch.Tensor]:
        data = torch.from_numpy(self.epoch_arrays())
        for start in range(0, data.shape[1], self.batch_size):
            yield data[:, start:start + self.batch_size]


class EvalDataLoader:
    """Users of one split in batches, with the positions of their training items to mask."""

    def __init__(self, config, dataset: RecDataset, split: str = "valid", batch_size: Optional[int] = None):
        if split not in ("valid", "test"):
            raise MMRecError(f"evaluation split must be 'valid' or 'test', found {split!r}")
        self.config = config
        self.dataset = dataset
        self.split = split
        self.batch_size = int(_first_set(batch_size, config["eval_batch_size"], 4096))
        pos = dataset.inter_matrix("csr", split)
        self.positives: sp.csr_matrix = pos                     # ground truth per user
        self.users = np.flatnonzero(np.diff(pos.indptr) > 0).astype(np.int64)
        self.train_csr: sp.csr_matrix = dataset.inter_matrix("csr", "train")

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]]:
        return masked_user_batches(self.users, self.train_csr, self.batch_size)


def masked_user_batches(users: np.ndarray, train_csr: sp.csr_matrix, batch_size: int
                        ) -> Iterator[Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]]:
    """Batches (users, (rows, cols)) of `users` with the positions of their training items."""
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        sub = train_csr[batch]
        rows = np.repeat(np.arange(len(batch), dtype=np.int64), np.diff(sub.indptr))
        cols = sub.indices.astype(np.int64)
        yield torch.from_numpy(batch), (torch.from_numpy(rows), torch.from_numpy(cols))


def _first(v, default):
    if isinstance(v, (list, tuple)):
        return v[0] if v else default
    return default if v is None else v


def build_loaders(config, dataset: RecDataset):
    """(train, valid, test) loaders for a dataset, as MMRec's main flow builds them."""
    if len(dataset.valid_users) == 0:
        raise MMRecError(f"{dataset.inter_path}: the valid split is empty (no row with x_label = 1 whose user "
                         f"has training rows); early stopping needs validation data")
    train = TrainDataLoader(config, dataset)
    valid = EvalDataLoader(config, dataset, "valid")
    test = EvalDataLoader(config, dataset, "test")
    test.train_csr = valid.train_csr    # one mask matrix: the evaluator sees at once that both share it
    return train, valid, test


def _first_set(*values):
    """The first value that is not None (0 is a value, not "missing")."""
    return next(v for v in values if v is not None)
