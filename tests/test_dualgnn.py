"""DualGNN: training, the user co-occurrence graph vs brute force, fusion and the user-graph hop."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from model_checks import build, check_model, train_epochs
from mmrec_egra.models.dualgnn import user_cooccurrence_graph


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: torch on one thread


def test_dualgnn_trains_and_ranks(make_env):
    check_model(make_env, "DualGNN", epochs=3, learning_rate=0.01, embedding_size=16)


def test_user_cooccurrence_graph_vs_brute_force(make_env):
    config, ds, loaders, model = build(make_env, "DualGNN", embedding_size=16, user_knn_k=5)
    R = sp.csr_matrix(ds.inter_matrix("csr"), dtype=np.float64)
    R.data[:] = 1
    C = (R @ R.T).toarray()
    np.fill_diagonal(C, 0)
    expected = np.zeros_like(C)
    for u in range(C.shape[0]):
        order = np.lexsort((np.arange(C.shape[1]), -C[u]))[:5]    # count desc, then lower id
        keep = order[C[u, order] > 0]
        expected[u, keep] = C[u, keep]
    s = expected.sum(1, keepdims=True)
    expected = np.divide(expected, s, out=np.zeros_like(expected), where=s > 0)
    got = model.user_graph.to_dense().numpy()
    assert np.allclose(got, expected, atol=1e-6)
    assert np.allclose(got.sum(1)[s.ravel() > 0], 1.0, atol=1e-5)
    # hand case: users 0 and 1 share two items, 0 and 2 one item; k = 1
    toy = sp.csr_matrix(np.array([[1, 1, 1], [1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=np.float32))
    G = user_cooccurrence_graph(toy, 1).toarray()
    assert np.array_equal(G, np.array([[0, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32))


def test_dualgnn_fusion_and_user_hop(make_env):
    config, ds, loaders, model = build(make_env, "DualGNN", embedding_size=16, user_graph_layers=1)
    model.eval()
    with torch.no_grad():
        model.fusion_logits[:3] = torch.tensor([[2.0, 0.0]] * 3)
        alpha = model.fusion_weights()
        assert torch.allclose(alpha.sum(1), torch.ones(ds.n_users))
        assert torch.allclose(alpha[0], torch.softmax(torch.tensor([2.0, 0.0]), 0))
        assert torch.allclose(alpha[5], torch.tensor([0.5, 0.5]))       # untouched rows: equal weights
        views = model.modality_views()
        fused = alpha[:, :1] * views[0][0] + alpha[:, 1:] * views[1][0]
        G = model.user_graph.to_dense()
        u, i = model.forward()
        assert torch.allclose(u, fused + G @ fused, atol=1e-5)
        assert torch.allclose(i, model.item_embedding.weight + (views[0][1] + views[1][1]) / 2, atol=1e-6)
        assert torch.allclose(model.full_sort_predict((torch.arange(3), None)), u[:3] @ i.t(), atol=1e-5)


def test_dualgnn_one_modality_mean_fusion_and_determinism(make_env):
    kw = dict(embedding_size=16, fusion="mean", modalities={"image": "image_feat.npy"})
    runs = []
    for _ in range(2):
        config, ds, loaders, model = build(make_env, "DualGNN", **kw)
        assert model.names == ["image"] and torch.allclose(model.fusion_weights(), torch.ones(ds.n_users, 1))
        runs.append(train_epochs(config, model, loaders, 2))
    assert runs[0] == runs[1] and runs[0][1] < runs[0][0]
