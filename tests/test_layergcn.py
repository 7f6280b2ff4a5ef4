"""LayerGCN: training, the layer-refinement rule against a dense hand computation, pruning."""
import numpy as np
import pytest
import torch

from model_checks import build, check_model, train_epochs
from mmrec_egra.models.layergcn import layer_refined_propagate


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: torch on one thread


def test_layergcn_trains_and_ranks(make_env):
    check_model(make_env, "LayerGCN", epochs=3, learning_rate=0.01, reg_weight=1e-4, dropout=0.1)


def test_layer_refinement_on_a_hand_case():
    # 2 nodes joined by one edge (normalised adjacency [[0,1],[1,0]]): A x swaps the rows
    A = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    ego = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    out = layer_refined_propagate(A, ego, 1)
    # z = [[1,1],[1,0]]; cos(z0, e0) = 1/sqrt2, cos(z1, e1) = 1/sqrt2
    c = float(1 / np.sqrt(2))
    assert torch.allclose(out, torch.tensor([[c, c], [c, 0.0]]), atol=1e-6)
    # two layers: the refined layer is propagated, then refined against the ego again; sum of layers 1..2
    x1 = out
    z2 = A @ x1                                   # [[c,0],[c,c]]
    w2 = torch.tensor([1.0, 1.0])                 # z2 rows are parallel to their ego rows
    expected = x1 + w2[:, None] * z2
    assert torch.allclose(layer_refined_propagate(A, ego, 2), expected, atol=1e-6)


def test_layergcn_forward_matches_dense_computation(make_env):
    config, ds, loaders, model = build(make_env, "LayerGCN", n_layers=3, dropout=0.0, reg_weight=0.0)
    R = torch.as_tensor(ds.inter_matrix("csr").toarray(), dtype=torch.float32)
    R = (R > 0).float()
    n_u, n_i = R.shape
    Adj = torch.zeros(n_u + n_i, n_u + n_i)
    Adj[:n_u, n_u:] = R
    Adj[n_u:, :n_u] = R.t()
    d = Adj.sum(1)
    dinv = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
    A = dinv[:, None] * Adj * dinv[None, :]
    assert torch.allclose(model.norm_adj.to_torch().to_dense(), A, atol=1e-6)
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    x, total = ego, torch.zeros_like(ego)
    for _ in range(3):
        z = A @ x
        w = (z * ego).sum(1) / (z.norm(dim=1) * ego.norm(dim=1)).clamp_min(1e-8)
        x = w[:, None] * z
        total = total + x
    model.eval()
    with torch.no_grad():
        u, i = model.forward()
    assert torch.allclose(torch.cat([u, i]), total, atol=1e-5)


def test_layergcn_pruning_and_determinism(make_env):
    config, ds, loaders, model = build(make_env, "LayerGCN", dropout=0.2, reg_weight=1e-4)
    n_edges = model._R.nnz
    np.random.seed(3)
    model.pre_epoch_processing()
    A = model.masked_adj.to_scipy()
    assert A.nnz == 2 * int(n_edges * 0.8)
    assert abs(A - A.T).max() < 1e-7                     # still symmetric
    assert model.norm_adj.nnz == 2 * n_edges             # prediction graph untouched
    config, ds, loaders, model = build(make_env, "LayerGCN", dropout=0.2, reg_weight=1e-4)
    a = train_epochs(config, model, loaders, 2)
    config, ds, loaders, model = build(make_env, "LayerGCN", dropout=0.2, reg_weight=1e-4)
    b = train_epochs(config, model, loaders, 2)
    assert a == b
