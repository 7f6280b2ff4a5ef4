"""GUME: training, the enhanced graph, user modality enhancement, the loss parts."""
import numpy as np
import scipy.sparse as sp
import torch

from model_checks import build, check_model, train_epochs
from mmrec_egra.graphs import knn_graph


def test_gume_trains_and_ranks(make_env):
    config, ds, loaders, model, losses, res = check_model(make_env, "GUME", epochs=2, learning_rate=0.005,
                                                          embedding_size=32)
    parts = model.calculate_loss(next(iter(loaders[0])))
    assert len(parts) == 4 and all(float(p.detach()) > 0 for p in parts)


def test_gume_enhanced_graph_brute_force(make_env):
    config, ds, loaders, model = build(make_env, "GUME", graph_beta=0.5)
    n_u, n_i = ds.n_users, ds.n_items
    K = [knn_graph(x, model.knn_k, weighted=False, include_self=False).toarray() for x in model.mm_feats.values()]
    S = (K[0] + K[1]) / 2
    assert set(np.unique(S)) <= {0.0, 0.5, 1.0} and np.all(np.diag(S) == 0)
    R = sp.csr_matrix(loaders[0].inter_matrix(form="csr"), dtype=np.float64).toarray()
    R[R > 0] = 1
    A = np.zeros((n_u + n_i, n_u + n_i))
    A[:n_u, n_u:] = R
    A[n_u:, :n_u] = R.T
    A[n_u:, n_u:] = 0.5 * S
    d = A.sum(1)
    inv = np.zeros_like(d)
    inv[d > 0] = d[d > 0] ** -0.5
    expected = inv[:, None] * A * inv[None, :]
    got = model.enhanced_adj.to_scipy().toarray()
    assert np.allclose(got, expected, atol=1e-6)
    # a tail item (fewest users) still has content neighbours in the enhanced graph
    tail = int(np.argmin(R.sum(0)))
    assert (got[n_u + tail, n_u:] > 0).sum() >= model.knn_k


def test_gume_user_modality_enhancement(make_env):
    config, ds, loaders, model = build(make_env, "GUME")
    model.eval()
    with torch.no_grad():
        items, explicit, extended = model.modality_parts()
        R = torch.as_tensor(sp.csr_matrix(loaders[0].inter_matrix(form="csr")).toarray(), dtype=torch.float32)
        R = (R > 0).float()
        mean = R / R.sum(1, keepdim=True).clamp_min(1)
        S0 = model.modality_graphs[0].to_dense()
        # the content gates the item IDs, then one hop on the modality's own graph
        name = model.names[0]
        gate = torch.sigmoid(model.gates[0](model.projections[name](model.mm_feats[name])))
        assert torch.allclose(items[0], S0 @ (model.item_id_embedding.weight * gate), atol=1e-5)
        assert torch.allclose(explicit[0], mean @ items[0], atol=1e-5)
        assert torch.allclose(extended[0], mean @ (S0 @ items[0]), atol=1e-5)
        u, i = model.forward()
        b_u, b_i = model.behaviour()
        assert torch.allclose(u, b_u + (explicit[0] + explicit[1]) / 2, atol=1e-6)
        assert torch.allclose(i, b_i + (items[0] + items[1]) / 2, atol=1e-6)
    # turning the auxiliary weights off leaves BPR + reg only
    model.train()
    model.align_weight = model.um_weight = 0.0
    bpr, align, um, reg = model.calculate_loss(next(iter(loaders[0])))
    assert float(align) == 0.0 and float(um) == 0.0


def test_gume_one_modality_and_determinism(make_env):
    kw = dict(modalities={"text": "text_feat.npy"}, embedding_size=16)
    config, ds, loaders, model = build(make_env, "GUME", **kw)
    assert len(model.modality_graphs) == 1
    a = train_epochs(config, model, loaders, 1)
    config, ds, loaders, model = build(make_env, "GUME", **kw)
    assert train_epochs(config, model, loaders, 1) == a
