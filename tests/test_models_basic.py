"""BPR and LightGCN: behaviour on the demo data and the LightGCN graph."""
import numpy as np
import torch

from model_checks import check_model


def test_bpr_trains_and_ranks(make_env):
    check_model(make_env, "BPR", epochs=5, reg_weight=1e-4, learning_rate=0.01)


def test_lightgcn_trains_and_ranks(make_env):
    config, ds, loaders, model, losses, res = check_model(make_env, "LightGCN", epochs=5, n_layers=2,
                                                          reg_weight=1e-4, learning_rate=0.01)
    A = model.norm_adj.to_dense().numpy()
    n_u = ds.n_users
    # bipartite: no user-user or item-item entries, symmetric, D^-1/2 A D^-1/2 values
    assert np.abs(A[:n_u, :n_u]).sum() == 0 and np.abs(A[n_u:, n_u:]).sum() == 0
    assert np.allclose(A, A.T)
    R = ds.inter_matrix("csr").toarray()
    du, di = R.sum(1), R.sum(0)
    u, i = np.nonzero(R)
    assert np.allclose(A[u, n_u + i], 1 / np.sqrt(du[u] * di[i]), rtol=1e-5)


def test_lightgcn_propagation_is_layer_mean(make_env):
    config, ds, loaders, model, *_ = check_model(make_env, "LightGCN", epochs=2, n_layers=2)
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    A = model.norm_adj.to_dense()
    expected = (ego + A @ ego + A @ (A @ ego)) / 3
    u, i = model.forward()
    assert torch.allclose(torch.cat([u, i]).detach(), expected, atol=1e-5)
