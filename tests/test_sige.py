"""SIGE: collaborative item graph, infusion, modulus perturbation, loss terms, end to end."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import mmrec_egra.models.sige as sige_mod
from mmrec_egra.graphs import co_interaction_graph, sym_normalize
from mmrec_egra.losses import bpr_loss, info_nce, l2_reg
from mmrec_egra.modules import modality_knn_graphs
from mmrec_egra.registry import get_model
from mmrec_egra.utils import MMRecError
from model_checks import build, check_model, train_epochs

# small batches keep the in-batch InfoNCE terms cheap on 2 CPU cores
FAST = dict(learning_rate=0.01, train_batch_size=1024, sige_cl_batch=0, sige_alpha=0.3, sige_eps=0.1)
# training tests: fewer, larger batches with contrast on a 512-row sample of each
TRAIN = dict(FAST, train_batch_size=2048, sige_cl_batch=512)


def _train_R(loaders) -> sp.csr_matrix:
    R = sp.csr_matrix(loaders[0].inter_matrix(form="csr"), dtype=np.float64)
    R.data[:] = 1.0
    return R


def _dense_topk(R: sp.csr_matrix, k: int, norm: str) -> np.ndarray:
    """Brute force: dense R^T R, no diagonal, optional cosine, k largest per row (lower id wins ties)."""
    C = (R.T @ R).toarray()
    d = np.diag(C).copy()
    np.fill_diagonal(C, 0.0)
    if norm == "cosine":
        with np.errstate(divide="ignore", invalid="ignore"):
            C = np.where(C > 0, C / np.sqrt(np.outer(d, d)), 0.0)
    n = C.shape[0]
    cols = np.broadcast_to(np.arange(n), C.shape)
    order = np.lexsort((cols, -C), axis=-1)              # per row: value desc, then column asc
    top = order[:, :k]
    out = np.zeros_like(C)
    r = np.arange(n)[:, None]
    out[r, top] = C[r, top]                              # zeros stay zeros (rows with < k partners)
    return out


def _spectral_radius(g: sp.spmatrix, iters: int = 500) -> float:
    """Power iteration from the all-ones vector (non-negative matrix: converges to the
    Perron root; self-loops make the graphs aperiodic)."""
    g = sp.csr_matrix(g, dtype=np.float64)
    x = np.ones(g.shape[0])
    lam = 0.0
    for _ in range(iters):
        y = g @ x
        lam = np.linalg.norm(y) / np.linalg.norm(x)
        x = y / np.linalg.norm(y)
    return float(lam)


def _two_norm(g: sp.spmatrix, iters: int = 300) -> float:
    g = sp.csr_matrix(g, dtype=np.float64)
    gt = sp.csr_matrix(g.T)
    x = np.random.default_rng(0).random(g.shape[0])
    lam = 0.0
    for _ in range(iters):
        y = gt @ (g @ x)
        lam = np.sqrt(np.linalg.norm(y) / np.linalg.norm(x))
        x = y / np.linalg.norm(y)
    return float(lam)


# ---- collaborative item graph ------------------------------------------------------------
@pytest.mark.parametrize("norm", ["count", "cosine"])
def test_co_interaction_graph_matches_brute_force(make_env, norm):
    config, ds, loaders = make_env("SIGE")
    R = _train_R(loaders)
    k = 10
    ref = _dense_topk(R, k, norm)
    got = co_interaction_graph(R, k, norm=norm)
    assert got.shape == (ds.n_items, ds.n_items) and got.dtype == np.float32
    assert np.allclose(got.toarray(), ref, rtol=1e-6, atol=0)
    assert (got.toarray() != 0).sum() == (ref != 0).sum()             # same support, not just values
    assert got.diagonal().sum() == 0                                  # diagonal removed
    partners = np.asarray(((R.T @ R) > 0).sum(1)).ravel() - (np.asarray(R.sum(0)).ravel() > 0)
    assert (np.diff(got.indptr) == np.minimum(k, partners)).all()     # k per row before symmetrising
    assert (np.diff(got.indptr) == k).mean() > 0.9
    # blocking changes nothing (tiny blocks force many of them)
    assert (co_interaction_graph(R, k, norm=norm, max_block_nnz=500) != got).nnz == 0
    sym = co_interaction_graph(R, k, norm=norm, symmetric=True)
    assert np.array_equal(sym.toarray(), np.maximum(ref, ref.T).astype(np.float32))


def test_co_interaction_graph_ties_and_errors():
    # items 1, 2, 3 each share exactly one user with item 0: a three-way tie for k = 2
    R = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]], dtype=np.float32))
    g = co_interaction_graph(R, 2, norm="count")
    assert list(g[0].indices) == [1, 2]                                # lower ids win the tie
    assert g[1].nnz == 1 and g[1, 0] == 1.0                            # fewer partners than k: all kept
    with pytest.raises(ValueError):
        co_interaction_graph(R, 2, norm="jaccard")
    with pytest.raises(ValueError):
        co_interaction_graph(R, 0)


def test_collaborative_graph_is_cached(make_env, monkeypatch):
    config, ds, loaders, model = build(make_env, "SIGE", **FAST)        # builds and stores C
    calls = []
    real = sige_mod.co_interaction_graph
    monkeypatch.setattr(sige_mod, "co_interaction_graph", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    R = _train_R(loaders)
    first = sige_mod.collaborative_item_graph(model, R, model.co_k, model.co_norm)
    assert calls == []                                                  # served from the store
    sige_mod.collaborative_item_graph(model, R, 5, model.co_norm)
    assert len(calls) == 1                                              # new parameter: rebuilt
    R2 = R.tolil()
    R2[0, 0] = 1.0 - R2[0, 0]                                           # new content: rebuilt
    sige_mod.collaborative_item_graph(model, R2.tocsr(), model.co_k, model.co_norm)
    assert len(calls) == 2
    assert np.allclose(first.toarray(), sym_normalize(real(R, model.co_k, model.co_norm, symmetric=True)).toarray())


# ---- infusion -------------------------------------------------------------------------------
def test_infused_graph_is_convex_mix_and_stays_normalised(make_env):
    alpha = 0.3
    config, ds, loaders, model = build(make_env, "SIGE", **dict(FAST, sige_alpha=alpha))
    R = _train_R(loaders)
    C = sige_mod.collaborative_item_graph(model, R, model.co_k, model.co_norm).astype(np.float64)
    S_all = modality_knn_graphs(model, model.knn_k, weighted=True, include_self=True, norm="sym", on_device=False)
    S_raw = modality_knn_graphs(model, model.knn_k, weighted=True, include_self=True, norm="none", on_device=False)
    C_raw = co_interaction_graph(R, model.co_k, model.co_norm, symmetric=True)
    assert abs(C - C.T).max() < 1e-6                                     # symmetric collaborative part
    assert _two_norm(C) <= 1 + 1e-6                                      # ... so its eigenvalues lie in [-1, 1]
    for name, S in S_all.items():
        S = S.astype(np.float64)
        mix = model.item_graphs[name]
        assert np.allclose(mix.toarray(), (1 - alpha) * S.toarray() + alpha * C.toarray(), atol=1e-6)
        # each part is normalised: D^-1/2 A D^-1/2 (D = row sums of the raw A) has the positive
        # eigenvector sqrt(diag D) with eigenvalue 1, hence spectral radius exactly 1 (Perron-Frobenius)
        for part, raw in ((S, S_raw[name]), (C, C_raw)):
            v = np.sqrt(np.asarray(raw.sum(1), dtype=np.float64).ravel())
            assert np.allclose(part @ v, v, atol=1e-5)
            assert abs(_spectral_radius(part) - 1.0) < 1e-3
        # rows of the mix stay within the parts' range (row sums are convex combinations)
        rs = np.asarray(mix.sum(1)).ravel()
        lo = np.minimum(np.asarray(S.sum(1)).ravel(), np.asarray(C.sum(1)).ravel())
        hi = np.maximum(np.asarray(S.sum(1)).ravel(), np.asarray(C.sum(1)).ravel())
        assert ((rs >= lo - 1e-5) & (rs <= hi + 1e-5)).all()
        # the mix's spectral radius stays at 1 up to a small excess: S_m (MGCN's kNN graph) is
        # NOT symmetric, so rho(convex mix) <= 1 is not a theorem; measured 1.0017 here
        assert _spectral_radius(mix) <= 1.005
        assert model.modality.item_graphs[name].nnz == mix.nnz          # the branch uses the mix
    # renormalising the mix restores an exact spectral radius of 1
    _, _, _, renormed = build(make_env, "SIGE", **dict(FAST, sige_alpha=alpha, sige_renorm=True))
    for name in S_all:
        assert abs(_spectral_radius(renormed.item_graphs[name]) - 1.0) < 1e-4


def test_no_infusion_is_the_raw_semantic_graph(make_env, monkeypatch):
    monkeypatch.setattr(sige_mod, "co_interaction_graph", lambda *a, **kw: pytest.fail("C built at alpha 0"))
    config, ds, loaders, model = build(make_env, "SIGE", **dict(FAST, sige_alpha=0.0))
    raw = modality_knn_graphs(model, model.knn_k, weighted=True, include_self=True, norm="sym", on_device=False)
    for name, S in raw.items():
        assert (model.item_graphs[name] != S).nnz == 0


# ---- perturbation ------------------------------------------------------------------------------
def test_modulus_perturb_norm_and_direction():
    torch.manual_seed(0)
    z = torch.randn(50, 16) * torch.rand(50, 1) * 10                     # rows of very different moduli
    for eps in (0.05, 0.2):
        noise = sige_mod.modulus_perturb(z, eps) - z
        assert torch.allclose(noise.norm(dim=1), eps * z.norm(dim=1), rtol=1e-4)
        assert ((noise * torch.sign(z)).sum(1) > 0).all()                 # same orthant as z
        assert ((noise * torch.sign(z)) >= -1e-7).all()
    torch.manual_seed(3)
    a = sige_mod.modulus_perturb(z, 0.1)
    torch.manual_seed(3)
    assert torch.equal(a, sige_mod.modulus_perturb(z, 0.1))            # global generator: seeded
    assert not torch.equal(a, sige_mod.modulus_perturb(z, 0.1))
    zz = z.clone().requires_grad_()
    sige_mod.modulus_perturb(zz, 0.1).sum().backward()
    assert torch.allclose(zz.grad, torch.ones_like(zz))                 # noise carries no gradient


# ---- loss terms -------------------------------------------------------------------------------------
def test_loss_parts_and_reference(make_env):
    config, ds, loaders, model = build(make_env, "SIGE", **FAST)
    batch = next(iter(loaders[0]))
    parts = model.calculate_loss(batch)
    assert len(parts) == 5 and all(torch.isfinite(p) for p in parts) and all(p.item() > 0 for p in parts)
    sum(parts).backward()
    for mod in (model.modality.proj, model.modality.purifier, model.modality.prefer_gate):
        for lin in mod:
            assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    assert model.user_embedding.weight.grad.abs().sum() > 0
    assert model.item_id_embedding.weight.grad.abs().sum() > 0
    # deterministic parts against the full forward
    users, pos, neg = batch
    nu, t = model.n_users, model.cl_temp
    with torch.no_grad():
        beh, side = model.forward()
        per = model.modality.modality_embeddings(model.item_id_embedding.weight)
        fin = beh + side
        u, p, n = fin[users], fin[pos + nu], fin[neg + nu]
        e_u, e_i = users, pos + nu
        ref_anc = sum(info_nce(beh[e_u], v[e_u], t) + info_nce(beh[e_i], v[e_i], t) for v in per.values())
        ref_ali = info_nce(side[e_u], beh[e_u], t) + info_nce(side[e_i], beh[e_i], t)
        ref = (bpr_loss((u * p).sum(-1), (u * n).sum(-1)), model.reg_weight * l2_reg(u, p, n),
               None, model.lambda_a * ref_anc, model.lambda_c * ref_ali)
        got = model.calculate_loss(batch)
        for i in (0, 1, 3, 4):
            assert torch.allclose(got[i], ref[i], rtol=1e-5, atol=1e-7)
        # with eps 0 the two views coincide with the fused semantic view f
        model.eps = 0.0
        ref_p = model.lambda_p * (info_nce(side[e_u], side[e_u], t) + info_nce(side[e_i], side[e_i], t))
        assert torch.allclose(model.calculate_loss(batch)[2], ref_p, rtol=1e-5)
        # sige_cl_batch c: the contrastive terms use the first c users and their positives only
        c = 100
        model.cl_batch = c
        e_u, e_i = users[:c], pos[:c] + nu
        ref_ali = info_nce(side[e_u], beh[e_u], t) + info_nce(side[e_i], beh[e_i], t)
        got = model.calculate_loss(batch)
        assert torch.allclose(got[4], model.lambda_c * ref_ali, rtol=1e-5)
        assert torch.allclose(got[0], ref[0], rtol=1e-5)                   # BPR still on the whole batch


@pytest.mark.parametrize("term", ["sige_lambda_p", "sige_lambda_a", "sige_lambda_c", "all"])
def test_zero_weight_skips_term(make_env, monkeypatch, term):
    keys = ["sige_lambda_p", "sige_lambda_a", "sige_lambda_c"] if term == "all" else [term]
    config, ds, loaders, model = build(make_env, "SIGE", **dict(FAST, **{k: 0.0 for k in keys}))
    batch = next(iter(loaders[0]))

    def boom(*a, **kw):
        raise AssertionError("computed a zero-weighted term")

    if "sige_lambda_p" in keys:
        monkeypatch.setattr(sige_mod, "modulus_perturb", boom)
        monkeypatch.setattr(model, "perturbation_loss", boom)
    if "sige_lambda_a" in keys:
        monkeypatch.setattr(model, "anchor_loss", boom)
    if term == "all":
        monkeypatch.setattr(sige_mod, "info_nce", boom)                 # no InfoNCE at all
    state = torch.get_rng_state()
    parts = model.calculate_loss(batch)
    idx = {"sige_lambda_p": 2, "sige_lambda_a": 3, "sige_lambda_c": 4}
    for k in keys:
        assert parts[idx[k]].item() == 0.0
    for k, i in idx.items():
        if k not in keys:
            assert parts[i].item() > 0
    if "sige_lambda_p" in keys:
        assert torch.equal(state, torch.get_rng_state())                # no noise drawn
    sum(parts).backward()


def test_anchor_stopgrad(make_env):
    config, ds, loaders, model = build(make_env, "SIGE", **dict(FAST, sige_anchor_stopgrad=True))
    batch = next(iter(loaders[0]))
    model.calculate_loss(batch)[3].backward()
    # the behaviour anchor is detached, and semantic user rows (R_norm i_m) do not use E_u
    assert model.user_embedding.weight.grad is None or model.user_embedding.weight.grad.abs().sum() == 0
    assert model.modality.purifier[0].weight.grad.abs().sum() > 0
    model.zero_grad()
    model.anchor_stopgrad = False
    model.calculate_loss(batch)[3].backward()
    assert model.user_embedding.weight.grad.abs().sum() > 0


def test_perturb_on_both_draws_behaviour_views(make_env):
    config, ds, loaders, model = build(make_env, "SIGE", **FAST)
    batch = next(iter(loaders[0]))
    torch.manual_seed(1)
    semantic = model.calculate_loss(batch)[2]
    model.perturb_on = "both"
    torch.manual_seed(1)
    both = model.calculate_loss(batch)[2]
    assert both.item() > semantic.item()


# ---- model level ---------------------------------------------------------------------------------------
def test_registry_alias():
    assert get_model("SIGER") is get_model("SIGE") is get_model("siger")


def test_sige_trains_and_ranks(make_env):
    check_model(make_env, "SIGE", epochs=3, **TRAIN)


def test_sige_same_seed_same_losses(make_env):
    runs = []
    for _ in range(2):
        config, ds, loaders, model = build(make_env, "SIGE", **TRAIN)
        runs.append(train_epochs(config, model, loaders, 1))
    assert runs[0] == runs[1]


def test_sige_single_modality(make_env):
    config, ds, loaders, model = build(make_env, "SIGE", modalities={"image": "image_feat.npy"}, **TRAIN)
    assert model.modality.names == ["image"] and list(model.item_graphs) == ["image"]
    losses = train_epochs(config, model, loaders, 1)
    assert np.isfinite(losses).all()


def test_item_representations_and_cached_predict(make_env):
    config, ds, loaders, model = build(make_env, "SIGE", **FAST)
    reps = {k: model.item_representations(k) for k in ("final", "behaviour", "modality")}
    assert model.training
    assert torch.allclose(reps["final"], reps["behaviour"] + reps["modality"], atol=1e-6)
    model.eval()
    with torch.no_grad():
        s1 = model.full_sort_predict((torch.arange(5), None))
        assert "final" in model._eval_cache
        u_all, _ = model._final()
    assert torch.allclose(s1, u_all[:5] @ reps["final"].t(), atol=1e-5)
    with pytest.raises(MMRecError):
        model.item_representations("nope")


@pytest.mark.parametrize("bad", [dict(sige_alpha=1.5), dict(sige_eps=-0.1), dict(sige_co_norm="jaccard"),
                                 dict(sige_perturb_on="user"), dict(sige_co_k=0)])
def test_bad_config(make_env, bad):
    with pytest.raises(MMRecError):
        build(make_env, "SIGE", **dict(FAST, **bad))


def test_config_and_ablation_arms(demo_root):
    from mmrec_egra.compare import ablation_entries
    from mmrec_egra.runner import make_config
    config = make_config("SIGE", "demo", {"data_path": demo_root})
    assert config.grid_keys == ["seed", "sige_alpha", "sige_eps"]
    assert all(0.1 <= a <= 0.9 for a in config["sige_alpha"]) and sorted(config["sige_eps"]) == [0.05, 0.1, 0.2]
    assert config["cl_temp"] == 0.2 and config["sige_co_k"] == 10 and config["sige_renorm"] is False
    arms = {label: (model, over) for label, model, over in ablation_entries("SIGE", {"data_path": demo_root})}
    assert arms["MGCN"][0] == "MGCN" and arms["full"] == ("SIGE", {})
    assert arms["no_infusion"][1] == {"sige_alpha": 0.0}
    assert arms["no_perturbation"][1] == {"sige_lambda_p": 0.0}
    assert arms["no_anchor"][1] == {"sige_lambda_a": 0.0}
    assert arms["no_fused_alignment"][1] == {"sige_lambda_c": 0.0}
