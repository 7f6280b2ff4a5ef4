"""FREEDOM: training, the frozen item graph, degree-sensitive pruning, the feature terms."""
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from model_checks import build, check_model, train_epochs
from mmrec_egra.graphs import degree_sensitive_prune, knn_graph
from mmrec_egra.models.freedom import freedom_modality_weights


def _binary_knn_dense(x: torch.Tensor, k: int) -> torch.Tensor:
    z = F.normalize(x, dim=1)
    idx = torch.topk(z @ z.t(), k, dim=1).indices        # self included (cosine 1)
    return torch.zeros(x.shape[0], x.shape[0]).scatter_(1, idx, 1.0)


def test_freedom_trains_and_ranks(make_env):
    check_model(make_env, "FREEDOM", epochs=4, learning_rate=0.01, dropout=0.8, reg_weight=1e-3)


def test_freedom_item_graph_is_weighted_sum_of_normalised_knn(make_env):
    config, ds, loaders, model = build(make_env, "FREEDOM", dropout=0.8, reg_weight=0.0)
    k = model.knn_k
    weights = freedom_modality_weights(list(model.mm_feats), 0.1)
    assert dict(weights) == {"image": 0.1, "text": 0.9}
    expected = torch.zeros(ds.n_items, ds.n_items)
    for name, x in model.mm_feats.items():
        K = _binary_knn_dense(x, k)
        assert (K.sum(1) == k).all() and (K.diagonal() == 1).all()
        # the library's blockwise kNN picks the same k neighbours per row
        lib = knn_graph(x, k, weighted=False, include_self=True)
        assert (np.diff(lib.indptr) == k).all()
        assert np.array_equal(lib.toarray(), K.numpy())
        d = K.sum(1).pow(-0.5)
        expected += weights[name] * d[:, None] * K * d[None, :]
    got = model.mm_adj.to_torch().to_dense()
    assert torch.allclose(got, expected, atol=1e-6)
    # binary rows of k ones: every normalised value is 1/k, rows sum to the weights' total
    assert torch.allclose(got.sum(1), torch.ones(ds.n_items), atol=1e-5)


def test_freedom_modality_weights_generalise():
    assert dict(freedom_modality_weights(["audio"], 0.1)) == {"audio": 1.0}
    assert dict(freedom_modality_weights(["image", "audio"], 0.1)) == {"image": 0.1, "audio": 0.9}
    w = freedom_modality_weights(["image", "text", "audio"], 0.1)
    assert w["image"] == 0.1 and np.isclose(w["text"], 0.45) and np.isclose(w["audio"], 0.45)
    w = freedom_modality_weights(["text", "audio"], 0.1)
    assert w["text"] == 0.5 and w["audio"] == 0.5


def test_degree_sensitive_pruning_counts_and_bias(make_env):
    config, ds, loaders, model = build(make_env, "FREEDOM", dropout=0.8, reg_weight=0.0)
    R = sp.csr_matrix(model._R)
    n_keep = int(R.nnz * 0.2)
    coo = R.tocoo()
    du = np.asarray(R.sum(1)).ravel()[coo.row]
    di = np.asarray(R.sum(0)).ravel()[coo.col]
    w = 1.0 / np.sqrt(du * di)
    keys = coo.row.astype(np.int64) * R.shape[1] + coo.col
    kept_count = np.zeros(R.nnz)
    rng = np.random.default_rng(0)
    reps = 30
    for _ in range(reps):
        kept = degree_sensitive_prune(R, 0.8, rng).tocoo()
        assert kept.nnz == n_keep and kept.data.max() == 1.0
        kkeys = kept.row.astype(np.int64) * R.shape[1] + kept.col
        assert np.isin(kkeys, keys).all()                 # only existing edges, no duplicates
        assert len(np.unique(kkeys)) == n_keep
        kept_count += np.isin(keys, kkeys)
    keep_rate = kept_count / reps
    lo, hi = np.quantile(w, [0.25, 0.75])
    high_degree = keep_rate[w <= lo].mean()               # small 1/sqrt(du di): high degrees
    low_degree = keep_rate[w >= hi].mean()
    assert high_degree < low_degree * 0.8, (high_degree, low_degree)
    assert np.isclose(keep_rate.mean(), n_keep / R.nnz)
    # the model's pruned graph: 2 * n_keep symmetric entries, renormalised on kept degrees
    np.random.seed(5)
    model.pre_epoch_processing()
    A = model.masked_adj.to_scipy()
    assert A.nnz == 2 * n_keep
    n_u = ds.n_users
    Rk = sp.csr_matrix(A[:n_u, n_u:] > 0, dtype=np.float64)
    du_k, di_k = np.asarray(Rk.sum(1)).ravel(), np.asarray(Rk.sum(0)).ravel()
    u, i = Rk.nonzero()
    assert np.allclose(np.asarray(A[u, n_u + i]).ravel(), 1 / np.sqrt(du_k[u] * di_k[i]), rtol=1e-5)
    # the pruning follows numpy's global RNG (seeded by the host, saved in checkpoints)
    np.random.seed(5)
    model.pre_epoch_processing()
    assert (model.masked_adj.to_scipy() != A).nnz == 0
    # prediction uses the full graph
    assert model.norm_adj.nnz == 2 * R.nnz


def test_freedom_reg_weight_zero_skips_feature_terms(make_env):
    for reg, expect_grad in ((0.0, False), (1e-3, True)):
        config, ds, loaders, model = build(make_env, "FREEDOM", dropout=0.8, reg_weight=reg)
        model.train()
        model.pre_epoch_processing()
        batch = next(iter(loaders[0]))
        loss = model.calculate_loss(batch)
        loss.backward()
        for proj in model.projections.values():
            assert (proj.weight.grad is not None) == expect_grad
        if reg == 0.0:
            u, i = model.forward(model.masked_adj)
            uu = u[batch[0]]
            plain = F.softplus((uu * i[batch[2]]).sum(-1) - (uu * i[batch[1]]).sum(-1)).mean()
            assert torch.allclose(loss, plain)
    # features are fixed inputs by default, trainable tables on request
    assert not any(p.data_ptr() == model.mm_feats["image"].data_ptr() for p in model.parameters())
    config, ds, loaders, model = build(make_env, "FREEDOM", reg_weight=1e-3, freeze_features=False)
    assert set(model.feat_tables) == {"image", "text"}


def test_freedom_one_modality_and_determinism(make_env):
    config, ds, loaders, model = build(make_env, "FREEDOM", dropout=0.8, reg_weight=1e-4,
                                       modalities={"image": "image_feat.npy"})
    assert list(model.mm_feats) == ["image"]
    G = model.mm_adj.to_torch().to_dense()
    assert torch.allclose(G.sum(1), torch.ones(ds.n_items), atol=1e-5)
    a = train_epochs(config, model, loaders, 2)
    model.eval()
    with torch.no_grad():
        assert model.full_sort_predict((torch.arange(5), None)).shape == (5, ds.n_items)
    config, ds, loaders, model = build(make_env, "FREEDOM", dropout=0.8, reg_weight=1e-4,
                                       modalities={"image": "image_feat.npy"})
    b = train_epochs(config, model, loaders, 2)
    assert a == b
