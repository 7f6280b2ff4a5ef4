"""Evaluator: MMRec metric definitions on hand-computed cases."""
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmrec_egra.evaluation import TopKEvaluator, hit_matrix, metrics_from_hits, popularity_groups


def _disc(r):
    return 1 / math.log2(r + 1)


def test_hand_computed_single_user():
    # ranking hits at ranks 1 and 3 of 4; user has 2 positives
    hits = np.array([[1, 0, 1, 0]], dtype=bool)
    m = metrics_from_hits(hits, np.array([2]), ["recall", "precision", "ndcg", "map"], [1, 2, 3, 4])
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["precision@2"] == pytest.approx(0.5)
    assert m["precision@3"] == pytest.approx(2 / 3)
    assert m["ndcg@1"] == pytest.approx(1.0)
    assert m["ndcg@3"] == pytest.approx((_disc(1) + _disc(3)) / (_disc(1) + _disc(2)))
    # MAP@3 = (P@1 + P@3) / min(3, 2) = (1 + 2/3) / 2
    assert m["map@3"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["map@1"] == pytest.approx(1.0)


def test_more_positives_than_k():
    # 5 positives, k = 3, hits at ranks 2, 3: recall is not capped, NDCG/MAP ideal uses min(k, P)
    hits = np.array([[0, 1, 1]], dtype=bool)
    m = metrics_from_hits(hits, np.array([5]), ["recall", "ndcg", "map", "precision"], [3])
    assert m["recall@3"] == pytest.approx(2 / 5)
    assert m["precision@3"] == pytest.approx(2 / 3)
    assert m["ndcg@3"] == pytest.approx((_disc(2) + _disc(3)) / (_disc(1) + _disc(2) + _disc(3)))
    assert m["map@3"] == pytest.approx((1 / 2 + 2 / 3) / 3)


def test_mean_over_users_and_no_hits():
    hits = np.array([[1, 0], [0, 0]], dtype=bool)
    m = metrics_from_hits(hits, np.array([1, 3]), ["recall", "ndcg"], [2])
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx(0.5)


def test_hit_matrix_vectorised_lookup():
    pos = sp.csr_matrix(np.array([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0], [0, 0, 1, 0, 0]], dtype=np.float32))
    top = np.array([[3, 1, 0], [2, 0, 4]])
    h = hit_matrix(top, np.array([0, 1]), pos)
    assert h.tolist() == [[True, True, False], [False, True, False]]


class _FixedScores(torch.nn.Module):
    def __init__(self, scores):
        super().__init__()
        self.scores = torch.tensor(scores, dtype=torch.float32)
        self.device = torch.device("cpu")

    def full_sort_predict(self, batch):
        return self.scores[batch[0]].clone()


class _Loader:
    """Minimal evaluation loader: one batch, with the training items to mask."""

    def __init__(self, users, train, positives):
        self.users, self.train, self.positives = np.array(users), sp.csr_matrix(train), sp.csr_matrix(positives)

    def __iter__(self):
        sub = self.train[self.users]
        rows = np.repeat(np.arange(len(self.users)), np.diff(sub.indptr))
        yield torch.from_numpy(self.users), (torch.from_numpy(rows), torch.from_numpy(sub.indices.astype(np.int64)))


def test_training_items_are_masked_and_ties_resolved_consistently():
    scores = [[0.9, 0.8, 0.7, 0.1, 0.5],
              [0.2, 0.2, 0.9, 0.2, 0.1]]          # user 1: a tie of three items below item 2
    train = [[1, 0, 0, 0, 0], [0, 0, 1, 0, 0]]     # user 0 trained on item 0, user 1 on item 2
    positives = [[0, 0, 1, 0, 0], [0, 0, 0, 0, 1]]
    ev = TopKEvaluator({"metrics": ["Recall", "NDCG"], "topk": [1, 2, 4]})
    res = ev.evaluate(_FixedScores(scores), _Loader([0, 1], train, positives))
    # user 0: masked item 0, ranking 1,2,... -> positive item 2 at rank 2
    # user 1: masked item 2; items 0,1,3 tie at 0.2 and fill ranks 1-3 in some order; positive 4 is rank 4
    assert res["recall@1"] == pytest.approx(0.0)
    assert res["recall@2"] == pytest.approx(0.5)
    assert res["recall@4"] == pytest.approx(1.0)
    assert res["ndcg@4"] == pytest.approx((_disc(2) + _disc(4)) / 2)
    users, top = ev.rank(_FixedScores(scores), _Loader([0, 1], train, positives))
    assert 0 not in top[0] and 2 not in top[1]
    assert set(top[1, :3].tolist()) == {0, 1, 3}


def test_longtail_groups():
    counts = np.array([10, 8, 1, 0, 2])
    g = popularity_groups(counts, 0.4)
    assert g["head"].tolist() == [True, True, False, False, False]
    ev = TopKEvaluator({"metrics": ["Recall"], "topk": [2]})
    positives = sp.csr_matrix(np.array([[1, 0, 1, 0, 0]], dtype=np.float32))
    res = ev.metrics_for(np.array([0]), np.array([[2, 4]]), positives, g)
    assert res["recall@2"] == pytest.approx(0.5)
    assert res["tail/recall@2"] == pytest.approx(1.0)
    assert res["head/recall@2"] == pytest.approx(0.0)


def test_chunked_ranking_equals_whole_batch():
    rng = np.random.default_rng(0)
    scores = rng.random((30, 12)).tolist()
    train = (rng.random((30, 12)) < 0.2).astype(np.float32)
    positives = ((rng.random((30, 12)) < 0.3) & (train == 0)).astype(np.float32)
    positives[:, 0] = np.where(positives.sum(1) == 0, 1 - train[:, 0], positives[:, 0])
    users = np.flatnonzero(positives.sum(1) > 0)
    whole = TopKEvaluator({"metrics": ["Recall", "NDCG", "MAP"], "topk": [3, 5]})
    chunked = TopKEvaluator({"metrics": ["Recall", "NDCG", "MAP"], "topk": [3, 5], "eval_chunk_elems": 25})
    loader = _Loader(users, train, positives)
    a = whole.evaluate(_FixedScores(scores), loader)
    b = chunked.evaluate(_FixedScores(scores), loader)
    assert a == b
    ua, ta = whole.rank(_FixedScores(scores), loader)
    ub, tb = chunked.rank(_FixedScores(scores), loader)
    assert (ua == ub).all() and (ta == tb).all()
    assert not train[ua[:, None], ta].any()


def test_valid_and_test_from_one_ranking_pass_equal_separate_evaluations(make_env):
    from model_checks import build
    config, ds, loaders, model = build(make_env, "BPR")
    _, valid_loader, test_loader = loaders
    counts = np.bincount(ds.split("train")[1], minlength=ds.n_items)
    groups = popularity_groups(counts, 0.2)
    ev = TopKEvaluator({"metrics": ["Recall", "NDCG", "Precision", "MAP"], "topk": [5, 20]})
    separate = [ev.evaluate(model, valid_loader, groups), ev.evaluate(model, test_loader, groups)]
    joint = ev.evaluate_splits(model, [valid_loader, test_loader], groups)
    assert joint == separate
    # different user sets (a split where some users have no positives): ranked over the union
    import copy
    half = copy.copy(test_loader)
    half.users = test_loader.users[::2]
    assert ev.evaluate_splits(model, [valid_loader, half], groups) == \
        [separate[0], ev.evaluate(model, half, groups)]
    # loaders without the shared structure fall back to one pass each
    users = valid_loader.users
    plain = _Loader(users, valid_loader.train_csr.toarray(), valid_loader.positives.toarray())
    assert ev.evaluate_splits(model, [plain, test_loader]) == [ev.evaluate(model, plain), ev.evaluate(model, test_loader)]
