"""DRAGON: training, the user co-occurrence graph, the item graph, the fused representation."""
import numpy as np
import scipy.sparse as sp
import torch

from model_checks import build, check_model, train_epochs
from mmrec_egra.models.dragon import user_cooccurrence_graph


def test_dragon_trains_and_ranks(make_env):
    check_model(make_env, "DRAGON", epochs=2, learning_rate=0.005, user_knn_k=10, feat_embed_dim=32)


def test_user_graph_is_softmax_over_top_k_counts():
    R = sp.csr_matrix(np.array([[1, 1, 1, 0],
                                [1, 1, 0, 0],
                                [0, 0, 1, 0],
                                [0, 0, 0, 1]], dtype=np.float32))
    G = user_cooccurrence_graph(R, 2).toarray()
    C = R @ R.T
    C = C.toarray()
    # user 0 shares 2 items with user 1 and 1 with user 2
    e = np.exp([2.0, 1.0])
    assert np.allclose(G[0], [0, e[0] / e.sum(), e[1] / e.sum(), 0], atol=1e-6)
    assert np.allclose(G[1], [1, 0, 0, 0]) and np.allclose(G[2], [1, 0, 0, 0])
    assert np.allclose(G[3], 0)                                # shares nothing: empty row
    # k = 1 keeps only the largest count; the tie rule keeps the lower id
    assert np.allclose(user_cooccurrence_graph(R, 1).toarray()[0], [0, 1, 0, 0])
    assert C[0, 1] == 2


def test_dragon_graphs_and_fusion(make_env):
    config, ds, loaders, model = build(make_env, "DRAGON", user_knn_k=5)
    G = model.user_adj.to_scipy()
    rows = np.asarray(G.sum(1)).ravel()
    has = np.diff(G.indptr) > 0
    assert np.allclose(rows[has], 1.0, atol=1e-5) and (np.diff(G.indptr) <= 5).all()
    assert G.diagonal().sum() == 0
    # brute force on a few users: the neighbours are the top co-occurrence counts
    R = sp.csr_matrix(loaders[0].inter_matrix(form="csr"), dtype=np.float64)
    C = (R @ R.T).toarray()
    np.fill_diagonal(C, -1)
    for u in range(0, ds.n_users, 397):
        cols = G[u].indices
        kth = np.sort(C[u])[-5]
        assert (C[u, cols] >= kth).all()
        w = np.exp(C[u, cols] - C[u, cols].max())
        assert np.allclose(G[u, cols].toarray().ravel(), w / w.sum(), atol=1e-5)
    # item graph: rows sum to 1 (binary kNN, weights summing to 1)
    S = model.item_adj.to_torch().to_dense()
    assert torch.allclose(S.sum(1), torch.ones(ds.n_items), atol=1e-5)
    # representation: concatenation of M views, item = i + S i, user = u + G u
    model.eval()
    with torch.no_grad():
        u, i = model.modality_views()
        assert u.shape == (ds.n_users, 2 * model.dim) and i.shape == (ds.n_items, 2 * model.dim)
        uf, itf = model.forward()
        assert torch.allclose(itf, i + S @ i, atol=1e-5)
        Gd = torch.as_tensor(G.toarray())
        assert torch.allclose(uf, u + Gd @ u, atol=1e-5)


def test_dragon_one_modality_and_determinism(make_env):
    kw = dict(modalities={"text": "text_feat.npy"}, user_knn_k=5, feat_embed_dim=16)
    config, ds, loaders, model = build(make_env, "DRAGON", **kw)
    assert list(model.mm_feats) == ["text"]
    a = train_epochs(config, model, loaders, 1)
    config, ds, loaders, model = build(make_env, "DRAGON", **kw)
    assert train_epochs(config, model, loaders, 1) == a
