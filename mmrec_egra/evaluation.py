"""Full-ranking top-k evaluation with MMRec's metric definitions, batched over users.

For each evaluated user (one with positives in the split) all items are scored, the
user's training items are masked, and the top max(topk) items are taken with
torch.topk. With hits h_1..h_K (1 if the item at rank r is a positive) and P positives:
  Recall@k    = sum_{r<=k} h_r / P                (not capped at k)
  Precision@k = sum_{r<=k} h_r / k
  NDCG@k      = sum_{r<=k} h_r / log2(r+1)  /  sum_{r<=min(k,P)} 1 / log2(r+1)
  MAP@k       = sum_{r<=k} h_r * Precision@r  /  min(k, P)
each averaged over users. Keys look like 'recall@20'.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import scipy.sparse as sp
import torch

METRICS = ("recall", "ndcg", "precision", "map")


def hit_matrix(topk_items: np.ndarray, users: np.ndarray, positives: sp.csr_matrix) -> np.ndarray:
    """[B, K] bool: is topk_items[b, r] a positive of users[b]? (vectorised, searchsorted)."""
    n_items = positives.shape[1]
    sub = positives[users]
    sub.sort_indices()
    rows = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(sub.indptr))
    keys = rows * n_items + sub.indices.astype(np.int64)     # sorted because rows and indices are
    q = np.arange(len(users), dtype=np.int64)[:, None] * n_items + topk_items.astype(np.int64)
    if keys.size == 0:
        return np.zeros(q.shape, dtype=bool)
    pos = np.searchsorted(keys, q)
    pos[pos == len(keys)] = 0
    return keys[pos] == q


def metrics_from_hits(hits: np.ndarray, n_pos: np.ndarray, metrics: Sequence[str],
                      topk: Sequence[int]) -> Dict[str, float]:
    """Mean of each metric@k over rows of `hits` ([U, K] bool) with `n_pos` positives each."""
    hits = hits.astype(np.float64)
    n_pos = n_pos.astype(np.float64)
    U, K = hits.shape
    out: Dict[str, float] = {}
    if U == 0:
        return {f"{m.lower()}@{k}": 0.0 for m in metrics for k in topk}
    ranks = np.arange(1, K + 1, dtype=np.float64)
    cum_hits = np.cumsum(hits, axis=1)
    disc = 1.0 / np.log2(ranks + 1.0)
    dcg = np.cumsum(hits * disc, axis=1)
    idcg_table = np.concatenate([[0.0], np.cumsum(disc)])        # idcg_table[n] = sum_{r<=n} disc
    prec_at_r = cum_hits / ranks
    ap_cum = np.cumsum(hits * prec_at_r, axis=1)
    for m in metrics:
        name = m.lower()
        for k in topk:
            if k > K:
                raise ValueError(f"k={k} exceeds the {K} ranked items")
            c = cum_hits[:, k - 1]
            if name == "recall":
                v = c / n_pos
            elif name == "precision":
                v = c / k
            elif name == "ndcg":
                v = dcg[:, k - 1] / idcg_table[np.minimum(k, n_pos).astype(int)]
            elif name == "map":
                v = ap_cum[:, k - 1] / np.minimum(k, n_pos)
            else:
                raise ValueError(f"unknown metric '{m}'; known: {', '.join(METRICS)}")
            out[f"{name}@{k}"] = float(v.mean())
    return out


def _same_matrix(a: sp.spmatrix, b: sp.spmatrix) -> bool:
    return a is b or (a.shape == b.shape and a.nnz == b.nnz and (a != b).nnz == 0)


class TopKEvaluator:
    """Runs full ranking over an EvalDataLoader and returns metric@k means."""

    def __init__(self, config):
        self.metrics = [m.lower() for m in (config["metrics"] or ["Recall", "NDCG"])]
        for m in self.metrics:
            if m not in METRICS:
                from .utils import MMRecError
                raise MMRecError(f"unknown metric '{m}' in config key metrics; known: Recall, NDCG, Precision, MAP")
        self.topk = sorted(int(k) for k in (config["topk"] or [10, 20]))
        self.max_k = max(self.topk)
        self.chunk_elems = int(config.get("eval_chunk_elems") or 2 ** 23)
        # Sampled-user evaluation (quick validation at scale; off by default). Only the valid
        # split is sampled unless `eval_sample_test: true`; every sampled result carries
        # 'sampled_users' / 'sampled_from' so it can never pass for a full-ranking result.
        self.sample_users = int(config.get("eval_sample_users") or 0)
        self.sample_test = bool(config.get("eval_sample_test") or False)
        self.sample_seed = int(config.get("eval_sample_seed") or 0)
        if self.sample_users < 0:
            from .utils import MMRecError
            raise MMRecError(f"config key eval_sample_users is {self.sample_users}; expected a positive number of "
                             f"users, or null for full evaluation")
        if self.sample_users:
            from .utils import get_logger
            get_logger().warning(
                "eval_sample_users=%d: %s metrics are computed on a fixed random sample of %d users per split "
                "(SAMPLED quick validation, not comparable to full-ranking results)%s", self.sample_users,
                "valid and test" if self.sample_test else "valid", self.sample_users,
                "" if self.sample_test else "; test stays full ranking")

    def sampled(self, loader):
        """`loader` restricted to a fixed random sample of its users when sampling applies to
        its split (valid; test too with eval_sample_test), else `loader` itself. The sample is
        drawn with `eval_sample_seed`, so every epoch ranks the same users."""
        split = getattr(loader, "split", None)
        if not self.sample_users or not hasattr(loader, "users") or len(loader.users) <= self.sample_users \
                or split not in (("valid", "test") if self.sample_test else ("valid",)):
            return loader
        import copy
        rng = np.random.default_rng([self.sample_seed, 0 if split == "valid" else 1])
        view = copy.copy(loader)
        view.users = np.sort(rng.choice(loader.users, size=self.sample_users, replace=False))
        view.sampled_from = len(loader.users)
        return view

    @staticmethod
    def _label(result: Dict[str, float], loader) -> Dict[str, float]:
        if hasattr(loader, "sampled_from"):
            result["sampled_users"] = int(len(loader.users))
            result["sampled_from"] = int(loader.sampled_from)
        return result

    @torch.no_grad()
    def rank(self, model, loader) -> tuple[np.ndarray, np.ndarray]:
        """(users [U], top-k item ids [U, K]) over all batches of `loader`.

        Each loader batch is scored in row chunks of about `chunk_elems` scores (32 MiB):
        masking and top-k on a cache-sized block are markedly faster than on a
        [4096, n_items] matrix, and models cache their propagated embeddings in eval
        mode, so the extra full_sort_predict calls cost only their matrix product.
        """
        users_all: List[np.ndarray] = []
        topk_all: List[np.ndarray] = []
        # known item count -> chunked from the first call (else the first call scores a whole
        # loader batch: 4096 x 1M items would be 16 GiB)
        n_items = getattr(model, "n_items", None)
        n_items = int(n_items) if isinstance(n_items, (int, np.integer)) and n_items > 0 else None
        for users, (mrow, mcol) in loader:
            dev = getattr(model, "device", torch.device("cpu"))
            step = len(users) if n_items is None else max(1, self.chunk_elems // n_items)
            start = 0
            while start < len(users):
                stop = min(len(users), start + step)
                sel = (mrow >= start) & (mrow < stop)
                scores = model.full_sort_predict((users[start:stop].to(dev), (mrow[sel] - start, mcol[sel])))
                if n_items is None:          # first call tells the item count; chunk from now on
                    n_items = scores.shape[1]
                scores = scores.float()
                scores[(mrow[sel] - start).to(scores.device), mcol[sel].to(scores.device)] = -float("inf")
                k = min(self.max_k, scores.shape[1])
                topk_all.append(torch.topk(scores, k, dim=1).indices.cpu().numpy())
                users_all.append(users[start:stop].numpy())
                start = stop
                step = max(1, self.chunk_elems // n_items)
        if not users_all:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.max_k), dtype=np.int64)
        return np.concatenate(users_all), np.concatenate(topk_all)

    def evaluate(self, model, loader, item_groups: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, float]:
        """Metrics on `loader`'s split. `item_groups` (name -> bool mask over items) adds
        per-group metrics such as 'tail/recall@20', computed over each group's positives.
        """
        model.eval()
        loader = self.sampled(loader)
        users, top = self.rank(model, loader)
        return self._label(self.metrics_for(users, top, loader.positives, item_groups), loader)

    def evaluate_splits(self, model, loaders: Sequence[Any],
                        item_groups: Optional[Dict[str, np.ndarray]] = None) -> List[Dict[str, float]]:
        """`evaluate` for several splits (valid, test) with one ranking pass.

        Both splits mask the same training items (the MMRec protocol), so a user's top-k is
        the same in each: it is computed once for the union of their users, halving the
        score products and top-k of an epoch's evaluation. Loaders without that structure
        (no `users` / `train_csr`, or different training matrices) are ranked one by one.
        """
        from .data.loaders import masked_user_batches
        loaders = [self.sampled(l) for l in loaders]
        shared = all(hasattr(l, "users") and hasattr(l, "train_csr") and hasattr(l, "positives")
                     for l in loaders) and all(_same_matrix(loaders[0].train_csr, l.train_csr) for l in loaders)
        if not shared or len(loaders) < 2:
            return [self.evaluate(model, l, item_groups) for l in loaders]
        model.eval()
        union = np.unique(np.concatenate([l.users for l in loaders]))
        batch = max(int(getattr(l, "batch_size", 4096)) for l in loaders)
        users, top = self.rank(model, masked_user_batches(union, loaders[0].train_csr, batch))
        out = []
        for l in loaders:
            idx = np.searchsorted(users, l.users)
            out.append(self._label(self.metrics_for(l.users, top[idx], l.positives, item_groups), l))
        return out

    def metrics_for(self, users: np.ndarray, top: np.ndarray, positives: sp.csr_matrix,
                    item_groups: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, float]:
        hits = hit_matrix(top, users, positives)
        n_pos = np.diff(positives.indptr)[users]
        result = metrics_from_hits(hits, n_pos, self.metrics, self.topk)
        for gname, gmask in (item_groups or {}).items():
            gpos = positives.multiply(sp.csr_matrix(gmask.astype(np.float32)[None, :])).tocsr()
            gpos.eliminate_zeros()
            g_n = np.diff(gpos.indptr)[users]
            keep = g_n > 0
            g_hits = hit_matrix(top[keep], users[keep], gpos)
            for k, v in metrics_from_hits(g_hits, g_n[keep], self.metrics, self.topk).items():
                result[f"{gname}/{k}"] = v
            result[f"{gname}/n_users"] = int(keep.sum())
        return result


def popularity_groups(train_item_counts: np.ndarray, head_ratio: float = 0.2) -> Dict[str, np.ndarray]:
    """'head' = the top `head_ratio` of items by training popularity; 'tail' = the rest."""
    n = len(train_item_counts)
    n_head = max(1, int(round(n * head_ratio)))
    order = np.argsort(-train_item_counts, kind="stable")
    head = np.zeros(n, dtype=bool)
    head[order[:n_head]] = True
    return {"head": head, "tail": ~head}
