"""GRCN: training, routing vs a per-user loop, the refined graph vs a dense computation."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from model_checks import build, check_model, train_epochs
from mmrec_egra.graphs import SparseMat
from mmrec_egra.models.grcn import routed_preferences


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: torch on one thread


def test_grcn_trains_and_ranks(make_env):
    check_model(make_env, "GRCN", epochs=3, learning_rate=0.01, embedding_size=16)


def test_routing_matches_a_per_user_loop():
    torch.manual_seed(0)
    R = sp.csr_matrix(np.array([[1, 0, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    base = torch.randn(3, 5)
    h = F.normalize(torch.randn(4, 5), dim=1)
    got = routed_preferences(SparseMat.from_scipy(R), base, h, 3)
    for u in range(3):
        items = R[u].indices
        p = F.normalize(base[u], dim=0)
        for _ in range(3):
            if len(items):
                a = torch.softmax(h[items] @ p, dim=0)
                p = F.normalize(base[u] + a @ h[items], dim=0)
            else:
                p = F.normalize(base[u], dim=0)        # a user without items keeps its own vector
        assert torch.allclose(got[u], p, atol=1e-5), u


def test_grcn_refined_graph_is_pruned_and_normalised(make_env):
    config, ds, loaders, model = build(make_env, "GRCN", embedding_size=16)
    model.eval()
    with torch.no_grad():
        content, prefs = model.modality_parts()
        w = model.edge_weights(content, prefs)
        A = model.refined_graph(w).to_torch().to_dense()
    R = sp.csr_matrix(ds.inter_matrix("csr"))
    R.data[:] = 1
    rows, cols = R.nonzero()
    # brute force: max over modalities of the cosine, clipped at 0
    conf = torch.stack([(prefs[n][rows] * content[n][cols]).sum(1) for n in model.names]).max(0).values
    W = torch.zeros(ds.n_users, ds.n_items)
    W[rows, cols] = conf.clamp_min(0)
    assert torch.allclose(torch.sort(w).values, torch.sort(W[rows, cols]).values, atol=1e-6)
    assert (w > 0).all()                                 # demo content: every edge supported
    with torch.no_grad():                                # preferences turned around: every edge pruned
        w_neg = model.edge_weights(content, {n: -prefs[n] for n in model.names})
    assert (w_neg == 0).all()
    n_u = ds.n_users
    full = torch.zeros(n_u + ds.n_items, n_u + ds.n_items)
    full[:n_u, n_u:] = W
    full[n_u:, :n_u] = W.t()
    d = full.sum(1)
    dinv = torch.where(d > 0, d.clamp_min(1e-12).pow(-0.5), torch.zeros_like(d))
    assert torch.allclose(A, dinv[:, None] * full * dinv[None, :], atol=1e-5)
    # representation: [ID | one block per modality], scored by the inner product
    u, i = model.forward()
    assert u.shape == (ds.n_users, 16 * 3) and i.shape == (ds.n_items, 16 * 3)


def test_grcn_one_modality_mean_mode_and_determinism(make_env):
    kw = dict(embedding_size=16, grcn_weight_mode="mean", modalities={"text": "text_feat.npy"})
    runs = []
    for _ in range(2):
        config, ds, loaders, model = build(make_env, "GRCN", **kw)
        assert model.names == ["text"]
        runs.append(train_epochs(config, model, loaders, 1))
    assert runs[0] == runs[1] and np.isfinite(runs[0]).all()
