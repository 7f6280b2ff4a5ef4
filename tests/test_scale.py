"""Scale path (issue #13): synthetic generator, faiss kNN backend, sampled-user evaluation."""
from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmrec_egra.data.synth import generate_synth, power_law_lengths, synth_params
from mmrec_egra.graphs import (KNN_FAISS_MIN_ITEMS, exact_knn_rows, knn_cache_params, knn_graph, knn_graph_faiss,
                               resolve_knn_backend)
from mmrec_egra.utils import MMRecError

SMALL = dict(n_users=600, n_items=500, n_inter=9000, text_dim=24, image_dim=40, n_topics=20)


def _read_inter(folder, name):
    return np.loadtxt(folder / f"{name}.inter", dtype=np.int64, skiprows=1, delimiter="\t")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return generate_synth(root / "synth_small", seed=3, **SMALL)


# ---- generator -------------------------------------------------------------------------
def test_generator_is_deterministic_and_seeded(synth_dir, tmp_path):
    again = generate_synth(tmp_path / "synth_small", seed=3, **SMALL)
    for f in ("synth_small.inter", "text_feat.npy", "image_feat.npy", "synth.json"):
        assert (synth_dir / f).read_bytes() == (again / f).read_bytes(), f
    other = generate_synth(tmp_path / "other", seed=4, **SMALL)
    assert (synth_dir / "synth_small.inter").read_bytes() != (other / "other.inter").read_bytes()
    assert not np.array_equal(np.load(synth_dir / "text_feat.npy"), np.load(other / "text_feat.npy"))


def test_generator_counts_splits_and_features(synth_dir):
    rows = _read_inter(synth_dir, "synth_small")
    u, i, lab = rows[:, 0], rows[:, 1], rows[:, 2]
    assert len(rows) == SMALL["n_inter"]
    assert len(np.unique(u * SMALL["n_items"] + i)) == SMALL["n_inter"]        # distinct (user, item) pairs
    assert u.max() < SMALL["n_users"] and i.max() < SMALL["n_items"] and set(np.unique(lab)) == {0, 1, 2}
    lengths = np.bincount(u, minlength=SMALL["n_users"])
    assert lengths.min() >= 5                                                 # min_len
    for split in (1, 2):                                                      # every user has a valid and test row
        assert (np.bincount(u[lab == split], minlength=SMALL["n_users"]) >= 1).all()
    assert 0.75 < (lab == 0).mean() < 0.85
    text = np.load(synth_dir / "text_feat.npy", mmap_mode="r")
    image = np.load(synth_dir / "image_feat.npy", mmap_mode="r")
    assert text.shape == (SMALL["n_items"], 24) and image.shape == (SMALL["n_items"], 40)
    assert text.dtype == np.float32 and image.dtype == np.float32
    assert (image >= 0).all() and (image == 0).any() and (text < 0).any()   # ReLU image, Gaussian text
    meta = synth_params(synth_dir)
    assert meta["n_train"] == int((lab == 0).sum()) and meta["seed"] == 3


def test_generator_power_laws(synth_dir):
    rows = _read_inter(synth_dir, "synth_small")
    item_counts = np.sort(np.bincount(rows[:, 1], minlength=SMALL["n_items"]))[::-1]
    user_counts = np.sort(np.bincount(rows[:, 0], minlength=SMALL["n_users"]))[::-1]
    # heavy heads: the top 10% of items / users hold far more than 10% of the interactions
    assert item_counts[:50].sum() / item_counts.sum() > 0.35
    assert user_counts[:60].sum() / user_counts.sum() > 0.3
    assert user_counts[0] > 8 * np.median(user_counts)
    # rank-frequency is close to a line in log-log with a clearly negative slope
    ranks = np.arange(1, 101)
    slope = np.polyfit(np.log(ranks), np.log(item_counts[:100]), 1)[0]
    assert -1.5 < slope < -0.3


def test_power_law_lengths_sum_cap_and_errors():
    L = power_law_lengths(1000, 30000, 5, 1.0, 200, np.random.default_rng(0))
    assert L.sum() == 30000 and L.min() >= 5 and L.max() <= 200
    assert L.max() == 200                                   # the heaviest users reach the cap
    with pytest.raises(MMRecError, match="min_len"):
        power_law_lengths(1000, 3000, 5, 1.0, 200, np.random.default_rng(0))
    with pytest.raises(MMRecError, match="does not fit"):
        power_law_lengths(10, 3000, 5, 1.0, 200, np.random.default_rng(0))


def test_generator_skips_modalities_and_loads_as_a_dataset(tmp_path):
    from mmrec_egra.data import build_loaders, load_dataset
    from mmrec_egra.runner import make_config
    folder = generate_synth(tmp_path / "mini", 200, 150, 3000, text_dim=8, image_dim=0, n_topics=10)
    assert not (folder / "image_feat.npy").exists() and (folder / "text_feat.npy").is_file()
    config = make_config("LightGCN", "mini", {"data_path": str(tmp_path) + "/", "show_progress": False,
                                              "device": "cpu"})
    ds = load_dataset(config)
    assert (ds.n_users, ds.n_items) == (200, 150)
    assert list(ds.features) == ["text"] and ds.features["text"].shape == (150, 8)
    assert len(ds.train_users) + len(ds.valid_users) + len(ds.test_users) == 3000
    train, _, _ = build_loaders(config, ds)
    assert train.epoch_arrays().shape == (3, len(ds.train_users))


def test_generator_rejects_bad_sizes_and_leaves_nothing(tmp_path):
    with pytest.raises(MMRecError, match="n_items must be >= 2"):
        generate_synth(tmp_path / "bad", 10, 1, 100)
    with pytest.raises(MMRecError, match="feature dims"):
        generate_synth(tmp_path / "bad", 10, 100, 100, text_dim=-1)
    assert list(tmp_path.iterdir()) == []


def test_cli_entry(tmp_path, capsys):
    from mmrec_egra.data.synth import main
    assert main(["--out", str(tmp_path / "c"), "--users", "100", "--items", "80", "--inter", "1000",
                 "--text_dim", "4", "--image_dim", "0", "--topics", "5"]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "c" / "c.inter").is_file()
    assert main(["--out", str(tmp_path / "d"), "--users", "100"]) == 2
    assert "--size or all of" in capsys.readouterr().err


# ---- kNN backends -----------------------------------------------------------------------
def _clustered(n=2000, d=48, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(60, d))
    return (centers[rng.integers(0, 60, n)] + 0.9 * rng.normal(size=(n, d))).astype(np.float32)


def _recall(a: sp.csr_matrix, b: sp.csr_matrix) -> float:
    ea = a.indices.reshape(a.shape[0], -1)
    eb = b.indices.reshape(b.shape[0], -1)
    return float((ea[:, :, None] == eb[:, None, :]).any(2).sum() / ea.size)


@pytest.mark.parametrize("include_self", [True, False])
def test_faiss_matches_exact_on_2k_items(include_self):
    pytest.importorskip("faiss")
    x = _clustered()
    exact = knn_graph(x, 10, include_self=include_self)
    approx = knn_graph_faiss(x, 10, include_self=include_self)
    assert approx.shape == exact.shape and (np.diff(approx.indptr) == 10).all()
    assert _recall(exact, approx) >= 0.9
    rows = np.repeat(np.arange(2000), 10)
    if not include_self:
        assert (approx.indices != rows).all()
    # weights are the cosines of the pairs found
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    coo = approx.tocoo()
    assert np.allclose(coo.data, (xn[coo.row] * xn[coo.col]).sum(1), atol=1e-4)
    assert (knn_graph_faiss(x, 10, weighted=False).data == 1).all()
    # deterministic: same graph twice; the 'backend' switch of knn_graph routes to it
    again = knn_graph(x, 10, include_self=include_self, backend="faiss")
    assert (again != approx).nnz == 0


def test_exact_rows_reference_matches_blockwise_graph():
    x = _clustered(700, 16, seed=1)
    g = knn_graph(x, 7, include_self=False)
    rows = np.array([0, 3, 350, 699])
    ids, vals = exact_knn_rows(torch.from_numpy(x), rows, 7, include_self=False, col_block=128)
    for j, r in enumerate(rows):
        assert set(ids[j]) == set(g.indices[g.indptr[r]:g.indptr[r + 1]])
        assert np.allclose(np.sort(vals[j]), np.sort(g.data[g.indptr[r]:g.indptr[r + 1]]), atol=1e-5)


def test_auto_backend_choice_and_errors(monkeypatch):
    import mmrec_egra.graphs as graphs
    assert resolve_knn_backend("auto", 1500) == "exact"
    assert resolve_knn_backend(None, KNN_FAISS_MIN_ITEMS) == "exact"          # MMRec configs lack the key
    assert resolve_knn_backend("EXACT", 10 ** 7) == "exact"
    assert resolve_knn_backend("faiss", 10) == "faiss"
    monkeypatch.setattr(graphs, "faiss_available", lambda: True)
    assert resolve_knn_backend("auto", KNN_FAISS_MIN_ITEMS + 1) == "faiss"
    monkeypatch.setattr(graphs, "faiss_available", lambda: False)
    assert resolve_knn_backend("auto", KNN_FAISS_MIN_ITEMS + 1) == "exact"
    with pytest.raises(MMRecError, match="knn_backend is 'annoy'; expected one of auto, exact, faiss"):
        resolve_knn_backend("annoy", 10)
    monkeypatch.setitem(sys.modules, "faiss", None)                           # faiss not installed
    with pytest.raises(MMRecError, match="pip install faiss-cpu"):
        knn_graph(_clustered(50, 4), 3, backend="faiss")


class _FakeModel:
    def __init__(self, feats, backend, store):
        from mmrec_egra.cache import GraphCache
        self.config = {"knn_backend": backend}
        self.mm_feats = {"text": torch.from_numpy(feats)}
        self.device = torch.device("cpu")
        self._cache = GraphCache(store)

    def graph_cache(self):
        return self._cache


def test_backend_is_part_of_the_graph_cache_key(tmp_path):
    pytest.importorskip("faiss")
    from mmrec_egra.artifacts import open_store
    from mmrec_egra.modules import modality_knn_graphs
    x = _clustered(300, 8)
    assert knn_cache_params({"k": 5}, "exact") == {"k": 5}                   # exact keys predate backends
    assert knn_cache_params({"k": 5}, "faiss")["knn_backend"] == "faiss"
    g_exact = modality_knn_graphs(_FakeModel(x, "exact", tmp_path), 5, on_device=False)["text"]
    g_auto = modality_knn_graphs(_FakeModel(x, "auto", tmp_path), 5, on_device=False)["text"]   # small: exact
    g_faiss = modality_knn_graphs(_FakeModel(x, "faiss", tmp_path), 5, on_device=False)["text"]
    keys = [e["key"] for e in open_store(tmp_path).list() if "modality_knn" in e["key"]]
    assert len(keys) == 2                      # exact (reused by auto on a small catalog) and faiss
    assert [e["meta"]["params"].get("knn_backend") for e in open_store(tmp_path).list()
            if "modality_knn" in e["key"]].count("faiss") == 1
    assert (g_exact != g_auto).nnz == 0
    assert g_faiss.shape == g_exact.shape


# ---- sampled-user evaluation ----------------------------------------------------------------
def test_sampled_evaluation_is_labelled_and_test_stays_full(make_env, caplog):
    from model_checks import build
    from mmrec_egra.evaluation import TopKEvaluator
    _, _, (train, valid, test), model = build(make_env, "BPR")
    full = TopKEvaluator({"metrics": ["Recall", "NDCG"], "topk": [10, 20]})
    with caplog.at_level(logging.WARNING):
        ev = TopKEvaluator({"metrics": ["Recall", "NDCG"], "topk": [10, 20], "eval_sample_users": 300})
    assert "SAMPLED" in caplog.text and "test stays full ranking" in caplog.text
    v, t = ev.evaluate_splits(model, [valid, test])
    assert v["sampled_users"] == 300 and v["sampled_from"] == len(valid.users)
    assert "sampled_users" not in t and t == full.evaluate(model, test)        # test report: full ranking
    assert ev.sampled(valid).users.tolist() == ev.sampled(valid).users.tolist()   # the same users every epoch
    # the sampled metrics are exactly the full metrics restricted to the sampled users
    import copy
    sub = copy.copy(valid)
    sub.users = ev.sampled(valid).users
    assert {k: x for k, x in v.items() if not k.startswith("sampled")} == full.evaluate(model, sub)
    both = TopKEvaluator({"metrics": ["Recall"], "topk": [20], "eval_sample_users": 300, "eval_sample_test": True})
    v2, t2 = both.evaluate_splits(model, [valid, test])
    assert v2["sampled_users"] == 300 and t2["sampled_users"] == 300
    with pytest.raises(MMRecError, match="eval_sample_users is -5"):
        TopKEvaluator({"metrics": ["Recall"], "topk": [20], "eval_sample_users": -5})


def test_trainer_log_marks_sampled_validation(make_env, caplog):
    from model_checks import build
    from mmrec_egra.trainer import Trainer
    config, _, (train, valid, test), model = build(make_env, "BPR", eval_sample_users=200, epochs=1)
    with caplog.at_level(logging.INFO):
        result = Trainer(config, model).fit(train, valid, test)
    assert "valid[SAMPLED 200 users]" in caplog.text
    assert result["best_valid"]["sampled_users"] == 200 and "sampled_users" not in result["best_test"]


class _Recorder:
    """Scores users x items at random and records how many rows each call scored."""

    def __init__(self, n_items):
        self.n_items, self.device, self.calls = n_items, torch.device("cpu"), []

    def eval(self):
        return self

    def full_sort_predict(self, batch):
        self.calls.append(len(batch[0]))
        return torch.rand(len(batch[0]), self.n_items, generator=torch.Generator().manual_seed(len(self.calls)))


def test_evaluation_is_chunked_from_the_first_call():
    from mmrec_egra.data.loaders import masked_user_batches
    from mmrec_egra.evaluation import TopKEvaluator
    train = sp.csr_matrix(np.eye(50, 400, dtype=np.float32))
    ev = TopKEvaluator({"metrics": ["Recall"], "topk": [5], "eval_chunk_elems": 400 * 8})
    model = _Recorder(400)
    users, top = ev.rank(model, masked_user_batches(np.arange(50), train, 32))
    assert max(model.calls) <= 8 and sum(model.calls) == 50          # never a whole 32-user batch at once
    assert len(users) == 50 and top.shape == (50, 5)
