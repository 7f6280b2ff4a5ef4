"""MGCN and the shared ModalityBranch / modality kNN graphs."""
from collections import OrderedDict

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mmrec_egra.graphs import SparseMat
from mmrec_egra.losses import bpr_loss, info_nce, l2_reg
from mmrec_egra.modules import (ModalityBranch, modality_knn_graphs, normalized_interactions)
from model_checks import build, check_model, train_epochs

# small batches keep the in-batch InfoNCE (quadratic in the batch) cheap on 2 CPU cores
FAST = dict(learning_rate=0.01, cl_loss=0.01, train_batch_size=1024)


def test_mgcn_trains_and_ranks(make_env):
    check_model(make_env, "MGCN", epochs=3, **FAST)


def test_config_grid(demo_root):
    from mmrec_egra.runner import make_config
    config = make_config("MGCN", "demo", {"data_path": demo_root})
    assert [c["cl_loss"] for c in config.grid()] == [0.001, 0.01, 0.1]
    assert config["learning_rate_scheduler"] == [0.96, 50] and config["cl_temp"] == 0.2
    assert config["knn_k"] == 10 and config["n_ui_layers"] == 2 and config["n_layers"] == 1


def test_knn_graph_structure_and_normalisation(make_env):
    config, ds, loaders, model = build(make_env, "MGCN", **FAST)
    k = 7
    raw = modality_knn_graphs(model, k, weighted=True, include_self=True, norm="none", on_device=False)
    normed = modality_knn_graphs(model, k, weighted=True, include_self=True, norm="sym", on_device=False)
    assert list(raw) == list(model.mm_feats) == ["image", "text"]
    for name, S in raw.items():
        assert S.shape == (ds.n_items, ds.n_items)
        assert (np.diff(S.indptr) == k).all()                  # exactly k per row before normalisation
        assert np.allclose(S.diagonal(), 1.0, atol=1e-5)      # self is its own top neighbour (cosine 1)
        X = model.mm_feats[name].numpy().astype(np.float64)
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        r, c = S.nonzero()
        assert np.allclose(S[r, c].A1, (Xn[r] * Xn[c]).sum(1), atol=1e-4)   # cosine weights
        # D^-1/2 S D^-1/2 with D = row sums, not symmetrised
        rs = np.asarray(S.sum(1)).ravel()
        N = normed[name]
        assert N.nnz == S.nnz
        assert np.allclose(N[r, c].A1, S[r, c].A1 / np.sqrt(rs[r] * rs[c]), rtol=1e-5)
    binary = modality_knn_graphs(model, k, weighted=False, norm="none", on_device=False)["image"]
    assert set(np.unique(binary.data)) == {1.0}
    # the model's own graphs use knn_k, as SparseMat on its device
    tg = modality_knn_graphs(model, config["knn_k"])
    assert isinstance(tg["image"], SparseMat) and tg["image"].shape == (ds.n_items, ds.n_items)
    dense = model.modality.item_graphs["image"].to_dense().numpy()
    assert np.allclose(dense, tg["image"].to_dense().numpy())


def test_graph_cache_is_reused(make_env, monkeypatch):
    import mmrec_egra.modules as modules
    config, ds, loaders, model = build(make_env, "MGCN", **FAST)
    calls = []
    real = modules.knn_graph
    monkeypatch.setattr(modules, "knn_graph", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    first = modality_knn_graphs(model, config["knn_k"], on_device=False)     # built by the model: cached
    assert calls == []
    modality_knn_graphs(model, 3, on_device=False)                            # new parameter: rebuilt
    assert len(calls) == 2                                                   # one per modality
    again = modality_knn_graphs(model, config["knn_k"], on_device=False)
    assert len(calls) == 2 and (first["image"] != again["image"]).nnz == 0


def _synthetic(n_mod: int, n_users=30, n_items=40, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = OrderedDict((f"m{j}", torch.rand(n_items, 5 + 3 * j, generator=g)) for j in range(n_mod))
    rng = np.random.default_rng(seed)
    R = sp.random(n_users, n_items, density=0.15, random_state=rng, format="csr")
    R.data[:] = 1
    graphs = OrderedDict()
    for name, x in feats.items():
        A = sp.random(n_items, n_items, density=0.1, random_state=rng, format="csr")
        graphs[name] = torch.tensor(A.toarray(), dtype=torch.float32).to_sparse()
    return feats, graphs, R, dim


@pytest.mark.parametrize("n_mod", [1, 2, 3])
def test_modality_branch_any_number_of_modalities(n_mod):
    torch.manual_seed(0)
    feats, graphs, R, dim = _synthetic(n_mod)
    n_users, n_items = R.shape
    Rn = normalized_interactions(R)
    branch = ModalityBranch(feats, graphs, torch.tensor(Rn.toarray()).to_sparse(), dim, n_layers=1)
    item = torch.randn(n_items, dim, requires_grad=True)
    beh = torch.randn(n_users + n_items, dim, requires_grad=True)
    side, per = branch(item, beh)
    assert side.shape == (n_users + n_items, dim) and list(per) == list(feats)
    # reference computation with dense matrices
    Rd = torch.tensor(Rn.toarray())
    outs = []
    for m, (name, x) in enumerate(feats.items()):
        p = item * torch.sigmoid(branch.purifier[m](branch.proj[m](x)))
        i = graphs[name].to_dense() @ p
        e = torch.cat([Rd @ i, i])
        assert torch.allclose(per[name], e, atol=1e-5)
        outs.append(e)
    st = torch.stack(outs)
    att = branch.attention(st)
    assert att.shape == (n_mod, n_users + n_items, 1)
    assert torch.allclose(att.sum(0), torch.ones(n_users + n_items, 1), atol=1e-6)
    common = (att * st).sum(0)
    expected = common + sum(torch.sigmoid(branch.prefer_gate[m](beh)) * (st[m] - common) for m in range(n_mod))
    assert torch.allclose(side, expected / (n_mod + 1), atol=1e-5)
    if n_mod == 1:  # one modality: common part is the modality itself, nothing specific
        assert torch.allclose(side, per["m0"] / 2, atol=1e-6)
    side.pow(2).sum().backward()
    # with one modality the specific part is 0, so the preference gate gets no gradient
    for mod in (branch.proj, branch.purifier) + ((branch.prefer_gate,) if n_mod > 1 else ()):
        for lin in mod:
            assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    assert item.grad.abs().sum() > 0 and (beh.grad.abs().sum() > 0) == (n_mod > 1)
    assert not any(isinstance(getattr(branch, f"feat_{m}"), torch.nn.Parameter) for m in range(n_mod))


def test_modality_branch_trainable_features():
    feats, graphs, R, dim = _synthetic(2)
    branch = ModalityBranch(feats, graphs, normalized_interactions(R), dim, freeze_features=False)
    assert isinstance(branch.feat_0, torch.nn.Parameter)
    side, _ = branch(torch.randn(R.shape[1], dim), torch.randn(sum(R.shape), dim))
    side.sum().backward()
    assert branch.feat_0.grad is not None and branch.feat_1.grad.abs().sum() > 0


def test_mgcn_loss_parts_and_gradients(make_env):
    config, ds, loaders, model = build(make_env, "MGCN", **FAST)
    batch = next(iter(loaders[0]))
    parts = model.calculate_loss(batch)
    assert len(parts) == 3 and all(torch.isfinite(p) for p in parts)
    assert all(p.item() > 0 for p in parts)
    sum(parts).backward()
    for mod in (model.modality.proj, model.modality.purifier, model.modality.prefer_gate):
        for lin in mod:
            assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    assert model.modality.query[0].weight.grad.abs().sum() > 0
    assert model.user_embedding.weight.grad.abs().sum() > 0
    assert model.item_id_embedding.weight.grad.abs().sum() > 0
    # the batch-restricted fusion equals the full forward
    with torch.no_grad():
        users, pos, neg = batch
        beh, side = model.forward()
        fin = beh + side
        nu = model.n_users
        u, p, n = fin[users], fin[pos + nu], fin[neg + nu]
        ref = (bpr_loss((u * p).sum(-1), (u * n).sum(-1)),
               model.reg_weight * l2_reg(u, p, n),
               model.cl_weight * (info_nce(side[pos + nu], beh[pos + nu], 0.2) + info_nce(side[users], beh[users], 0.2)))
        got = model.calculate_loss(batch)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    # cl_loss 0 skips the contrastive part
    model.cl_weight = 0.0
    assert model.calculate_loss(batch)[2].item() == 0.0


def test_mgcn_item_representations(make_env):
    config, ds, loaders, model = build(make_env, "MGCN", **FAST)
    model.train()
    reps = {k: model.item_representations(k) for k in ("final", "behaviour", "modality")}
    assert model.training  # mode restored
    for k, v in reps.items():
        assert v.shape == (ds.n_items, config["embedding_size"]) and not v.requires_grad
    assert torch.allclose(reps["final"], reps["behaviour"] + reps["modality"], atol=1e-6)
    model.eval()
    users = torch.arange(5)
    with torch.no_grad():
        scores = model.full_sort_predict((users, None))
        u_all, i_all = model._final()
    assert torch.allclose(scores, u_all[users] @ reps["final"].t(), atol=1e-5)
    with pytest.raises(Exception):
        model.item_representations("nope")


def test_mgcn_same_seed_same_losses(make_env):
    runs = []
    for _ in range(2):
        config, ds, loaders, model = build(make_env, "MGCN", **FAST)
        runs.append(train_epochs(config, model, loaders, 1))
    # bitwise equal on a quiet machine; MKL may change its thread count under heavy load
    # (MKL_DYNAMIC), which moves the last float bits. Any seeding bug is far above 1e-6.
    assert np.allclose(runs[0], runs[1], rtol=1e-6, atol=0), runs


def test_mgcn_single_modality(make_env, demo_root):
    config, ds, loaders, model = build(make_env, "MGCN", modalities={"image": "image_feat.npy"}, **FAST)
    assert model.modality.names == ["image"]
    losses = train_epochs(config, model, loaders, 1)
    assert np.isfinite(losses).all()


@pytest.mark.parametrize("reduction,temp", [("mean", 0.2), ("none", 0.5), ("sum", 1.0), ("mean", 0.01)])
def test_fused_info_nce_matches_autograd_path(reduction, temp):
    torch.manual_seed(3)
    a = torch.randn(64, 16, requires_grad=True)
    b = torch.randn(64, 16)
    b[5] = b[9]                                   # duplicate rows (repeated users in a batch)
    b.requires_grad_()
    w = torch.rand(64)
    grads = []
    for fused in (False, True):
        out = info_nce(a, b, temp, reduction=reduction, fused=fused)
        vals = out.detach()
        (out * w if reduction == "none" else out).sum().backward()
        grads.append((vals, a.grad.clone(), b.grad.clone()))
        a.grad = b.grad = None
    for x, y in zip(*grads):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-6)
