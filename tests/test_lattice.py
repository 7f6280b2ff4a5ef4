"""LATTICE: training, the learned + frozen item graph, gradients, refresh modes, one modality."""
import torch
import torch.nn.functional as F

from model_checks import build, check_model, train_epochs
from mmrec_egra.graphs import knn_graph_torch


def _knn_dense(x: torch.Tensor, k: int) -> torch.Tensor:
    z = F.normalize(x, dim=1)
    sim = z @ z.t()
    v, idx = torch.topk(sim, k, dim=1)
    return torch.zeros_like(sim).scatter_(1, idx, v)


def _sym(a: torch.Tensor) -> torch.Tensor:
    d = a.sum(1).pow(-0.5)
    return d[:, None] * a * d[None, :]


def test_lattice_trains_and_ranks(make_env):
    check_model(make_env, "LATTICE", epochs=4, learning_rate=0.01, reg_weight=1e-4)


def test_lattice_mixed_graph_is_convex_mix(make_env):
    config, ds, loaders, model = build(make_env, "LATTICE", learning_rate=0.01, reg_weight=0.0)
    with torch.no_grad():
        model.modal_weight.copy_(torch.tensor([0.3, -0.2]))
    k, lam = model.knn_k, model.lambda_coeff
    w = torch.softmax(model.modal_weight, 0).detach()
    expected = torch.zeros(ds.n_items, ds.n_items)
    for m, (name, proj) in enumerate(model.projections.items()):
        with torch.no_grad():
            z = proj(model.mm_feats[name])
        learned = knn_graph_torch(z, k)
        assert (torch.bincount(learned.rows, minlength=ds.n_items) == k).all()   # k learned entries per row
        S = _sym(_knn_dense(z, k))
        assert torch.allclose(learned.sym_normalized().to_torch().to_dense().detach(), S, atol=1e-5)
        O = _sym(_knn_dense(model.mm_feats[name], k))
        assert torch.allclose(model.original_adj[name].to_torch().to_dense(), O, atol=1e-5)
        expected += w[m] * ((1 - lam) * S + lam * O)
    got = model.build_item_graph().to_torch().to_dense().detach()
    assert torch.allclose(got, expected, atol=1e-5)


def test_lattice_gradients_reach_projections(make_env):
    for refresh in ("epoch", "step"):
        config, ds, loaders, model = build(make_env, "LATTICE", learning_rate=0.01, reg_weight=1e-4,
                                           lattice_graph_refresh=refresh)
        model.train()
        model.pre_epoch_processing()
        it = iter(loaders[0])
        for step in range(2):
            model.zero_grad(set_to_none=True)
            model.calculate_loss(next(it)).backward()
            rebuilt = step == 0 or refresh == "step"
            for proj in model.projections.values():
                g = proj.weight.grad
                assert (g is not None and g.abs().sum() > 0) == rebuilt, (refresh, step)
            g = model.modal_weight.grad
            assert (g is not None and g.abs().sum() > 0) == rebuilt
    # evaluation: one graph per evaluation, cached for every user batch
    model.eval()
    with torch.no_grad():
        a = model.full_sort_predict((torch.arange(4), None))
        b = model.full_sort_predict((torch.arange(4), None))
    assert a.shape == (4, ds.n_items) and torch.equal(a, b)
    assert "item_graph" in model._eval_cache


def test_lattice_one_modality_and_determinism(make_env):
    kw = dict(learning_rate=0.01, reg_weight=1e-4, modalities={"image": "image_feat.npy"})
    config, ds, loaders, model = build(make_env, "LATTICE", **kw)
    assert list(model.projections) == ["image"] and model.modal_weight.shape == (1,)
    a = train_epochs(config, model, loaders, 2)
    model.eval()
    with torch.no_grad():
        assert model.full_sort_predict((torch.arange(5), None)).shape == (5, ds.n_items)
    config, ds, loaders, model = build(make_env, "LATTICE", **kw)
    assert train_epochs(config, model, loaders, 2) == a
