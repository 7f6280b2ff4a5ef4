"""PGL: training, local and global principal subgraphs against brute force, full graph at prediction."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from model_checks import build, check_model, train_epochs
from mmrec_egra.models.pgl import global_edge_scores, keep_top_per_row
from mmrec_egra.utils import MMRecError


def test_pgl_trains_and_ranks(make_env):
    check_model(make_env, "PGL", epochs=3, learning_rate=0.01, embedding_size=32)


def test_keep_top_per_row_hand_case():
    R = sp.csr_matrix(np.array([[1, 1, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=np.float32))
    scores = np.array([0.1, 0.9, 0.5, 7.0, 0.3, 0.3, 0.8, 0.2])       # CSR order
    P = keep_top_per_row(R, scores, 0.5)
    # row 0: ceil(1.5) = 2 best -> cols 1, 2; row 1: at least one -> col 1;
    # row 2: 2 best -> col 2 (0.8), then the tie 0.3/0.3 goes to the lower column 0
    assert P.toarray().tolist() == [[0, 1, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0]]


def test_pgl_principal_graphs(make_env):
    config, ds, loaders, model = build(make_env, "PGL", embedding_size=8, principal_ratio=0.3)
    R = sp.csr_matrix(model._R)
    deg = np.diff(R.indptr)
    quota = np.maximum(1, np.ceil(0.3 * deg - 1e-9))
    np.random.seed(1)
    model.pre_epoch_processing()
    A = model.principal_adj.to_scipy()
    n_u = ds.n_users
    P = sp.csr_matrix(A[:n_u, n_u:] > 0, dtype=np.float32)
    assert (np.diff(P.indptr) == quota).all()                      # per-user quota
    assert (P - P.multiply(R)).nnz == 0                            # only training edges
    du, di = np.asarray(P.sum(1)).ravel(), np.asarray(P.sum(0)).ravel()
    u, i = P.nonzero()
    assert np.allclose(np.asarray(A[u, n_u + i]).ravel(), 1 / np.sqrt(du[u] * di[i]), rtol=1e-5)
    np.random.seed(1)
    model.pre_epoch_processing()
    assert (model.principal_adj.to_scipy() != A).nnz == 0          # seeded: same subgraph
    model.pre_epoch_processing()
    assert (model.principal_adj.to_scipy() != A).nnz > 0           # resampled every epoch
    # prediction uses the complete graph
    model.eval()
    with torch.no_grad():
        u_all, i_all = model.forward(model.full_adj)
        assert torch.allclose(model.full_sort_predict((torch.arange(3), None)), u_all[:3] @ i_all.t())
    assert model.full_adj.nnz == 2 * R.nnz


def test_global_edge_scores_match_dense_svd():
    rng = np.random.default_rng(0)
    R = sp.csr_matrix((rng.random((60, 40)) < 0.15).astype(np.float32))
    Rd = R.toarray().astype(np.float64)
    du, di = Rd.sum(1), Rd.sum(0)
    Rn = Rd / np.sqrt(np.maximum(du, 1))[:, None] / np.sqrt(np.maximum(di, 1))[None, :]
    U, s, Vt = np.linalg.svd(Rn, full_matrices=False)
    low = (U[:, :6] * s[:6]) @ Vt[:6]
    u, i = R.nonzero()
    assert np.allclose(global_edge_scores(R, 6), low[u, i], atol=1e-6)


def test_pgl_global_extraction(make_env):
    config, ds, loaders, model = build(make_env, "PGL", embedding_size=8, extraction="global",
                                       svd_rank=8, principal_ratio=0.5)
    R = sp.csr_matrix(model._R)
    assert np.array_equal(model._global_scores, global_edge_scores(R, 8))   # deterministic SVD
    model.pre_epoch_processing()
    first = model.principal_adj
    model.pre_epoch_processing()
    assert model.principal_adj is first                            # global: built once
    n_u = ds.n_users
    P = first.to_scipy()[:n_u, n_u:] > 0
    assert (np.asarray(P.sum(1)).ravel() == np.maximum(1, np.ceil(0.5 * np.diff(R.indptr) - 1e-9))).all()
    user = int(np.argmax(np.diff(R.indptr)))                       # the busiest user
    lo, hi = R.indptr[user], R.indptr[user + 1]
    items, sc = R.indices[lo:hi], model._global_scores[lo:hi]
    kept = np.isin(items, P[user].nonzero()[1])
    assert sc[kept].min() >= sc[~kept].max()                        # its best-explained edges


def test_pgl_errors_one_modality_and_determinism(make_env):
    with pytest.raises(MMRecError, match="extraction"):
        build(make_env, "PGL", extraction="svd")
    with pytest.raises(MMRecError, match="principal_ratio"):
        build(make_env, "PGL", principal_ratio=0.0)
    kw = dict(embedding_size=8, modalities={"text": "text_feat.npy"}, train_batch_size=4096)
    config, ds, loaders, model = build(make_env, "PGL", **kw)
    a = train_epochs(config, model, loaders, 2)
    config, ds, loaders, model = build(make_env, "PGL", **kw)
    assert a == train_epochs(config, model, loaders, 2)
