"""MMGCN: training, the mean-aggregation graph, one layer against a dense hand computation."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_checks import build, check_model, train_epochs
from mmrec_egra.models.mmgcn import mmgcn_aggregation_graph
from mmrec_egra.utils import MMRecError


def test_mmgcn_trains_and_ranks(make_env):
    check_model(make_env, "MMGCN", epochs=3, learning_rate=0.005, reg_weight=1e-5, embedding_size=32)


def test_mmgcn_aggregation_graph_is_neighbour_mean(make_env):
    config, ds, loaders, model = build(make_env, "MMGCN", embedding_size=16, n_layers=1)
    R = model.adj.to_scipy()
    n_u = ds.n_users
    inter = loaders[0].inter_matrix(form="csr").astype(np.float64)
    inter.data[:] = 1.0
    du = np.asarray(inter.sum(1)).ravel()
    di = np.asarray(inter.sum(0)).ravel()
    # row sums: 1 for every node with a neighbour, 0 otherwise; no user-user / item-item block
    rows = np.asarray(R.sum(1)).ravel()
    deg = np.concatenate([du, di])
    assert np.allclose(rows[deg > 0], 1.0, atol=1e-5) and np.all(rows[deg == 0] == 0)
    assert R[:n_u, :n_u].nnz == 0 and R[n_u:, n_u:].nnz == 0
    u, i = inter.nonzero()
    assert np.allclose(np.asarray(R[u, n_u + i]).ravel(), 1.0 / du[u], rtol=1e-6)
    assert np.allclose(np.asarray(R[n_u + i, u]).ravel(), 1.0 / di[i], rtol=1e-6)
    sym = mmgcn_aggregation_graph(inter, "sym")
    assert np.allclose(sym[u, n_u + i], 1.0 / np.sqrt(du[u] * di[i]), rtol=1e-5)
    with pytest.raises(MMRecError, match="aggregation"):
        mmgcn_aggregation_graph(inter, "max")


def test_mmgcn_forward_matches_dense_layers(make_env):
    config, ds, loaders, model = build(make_env, "MMGCN", embedding_size=8, n_layers=2)
    A = torch.as_tensor(model.adj.to_scipy().toarray())
    reps = []
    for name, x in model.mm_feats.items():
        g = model.gcns[name]
        h0 = F.leaky_relu(x @ g.project.weight.t() + g.project.bias)
        z = torch.cat([g.preference, h0])
        z = z / z.norm(dim=1, keepdim=True)
        for l in range(2):
            h = F.leaky_relu(A @ (z @ g.agg[l].weight.t()))
            x_hat = F.leaky_relu(z @ g.self_lin[l].weight.t() + g.self_lin[l].bias) + model.id_embedding
            z = F.leaky_relu(h @ g.comb[l].weight.t() + g.comb[l].bias) + x_hat
        reps.append(z)
    expect = (reps[0] + reps[1]) / 2
    u, i = model.forward()
    assert torch.allclose(torch.cat([u, i]), expect, atol=1e-4)


def test_mmgcn_one_modality_and_determinism(make_env):
    kw = dict(embedding_size=16, learning_rate=0.005, reg_weight=1e-4, modalities={"image": "image_feat.npy"})
    config, ds, loaders, model = build(make_env, "MMGCN", **kw)
    assert list(model.gcns) == ["image"]
    a = train_epochs(config, model, loaders, 2)
    config, ds, loaders, model = build(make_env, "MMGCN", **kw)
    b = train_epochs(config, model, loaders, 2)
    assert a == b
