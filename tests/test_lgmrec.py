"""LGMRec: behaviour on the demo data, hypergraph memberships, modalities, determinism."""
import pytest
import torch

from model_checks import build, check_model, train_epochs


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: torch on one thread


def test_lgmrec_trains_and_ranks(make_env):
    check_model(make_env, "LGMRec", epochs=3, learning_rate=0.01)


def test_lgmrec_frozen_features_train(make_env):
    config, ds, loaders, model = build(make_env, "LGMRec", learning_rate=0.01, freeze_features=True)
    assert not model.feature_tables and set(model._local_basis) == set(model.modalities)
    losses = train_epochs(config, model, loaders, 2)
    assert losses[1] < losses[0]


def test_lgmrec_memberships(make_env):
    config, ds, loaders, model = build(make_env, "LGMRec")
    R = torch.as_tensor(ds.inter_matrix("csr").toarray(), dtype=torch.float32)
    deg = R.sum(1, keepdim=True)
    for name in model.modalities:
        for stochastic in (True, False):
            h_item, h_user = model.memberships(name, stochastic)
            assert h_item.shape == (ds.n_items, model.hyper_num)
            assert h_user.shape == (ds.n_users, model.hyper_num)
            assert (h_item >= 0).all()
            assert torch.allclose(h_item.sum(1), torch.ones(ds.n_items), atol=1e-5)
            expected = (R @ h_item) / deg.clamp_min(1)
            assert torch.allclose(h_user, expected, atol=1e-5)
    # evaluation memberships are deterministic (no Gumbel noise)
    a, _ = model.memberships(model.modalities[0], False)
    b, _ = model.memberships(model.modalities[0], False)
    assert torch.equal(a, b)


def test_lgmrec_one_modality(make_env):
    config, ds, loaders, model, losses, res = check_model(
        make_env, "LGMRec", epochs=2, learning_rate=0.01, modalities={"image": "image_feat.npy"})
    assert model.modalities == ["image"]
    model.train()
    _, cl, _ = model.calculate_loss(next(iter(loaders[0])))
    assert float(cl) == 0.0


def test_lgmrec_same_seed_same_losses(make_env):
    runs = []
    for _ in range(2):
        config, ds, loaders, model = build(make_env, "LGMRec", learning_rate=0.01)
        runs.append(train_epochs(config, model, loaders, 1))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("scope", ["batch", "all"])
def test_lgmrec_gradients_reach_hyperedges(make_env, scope):
    config, ds, loaders, model = build(make_env, "LGMRec", lgmrec_cl_scope=scope, cl_weight=1.0,
                                       freeze_features=True)
    model.train()
    batch = next(iter(loaders[0]))
    loss, cl, reg = model.calculate_loss(batch)
    assert float(cl.detach()) > 0
    (loss + cl + reg).backward()
    for name in model.modalities:
        g = model.hyperedges[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
        assert model.projections[name].grad.abs().sum() > 0
    assert not any(p.requires_grad for p in model.mm_feats.values())


def test_lgmrec_trainable_features_by_default(make_env):
    config, ds, loaders, model = build(make_env, "LGMRec")
    assert set(model.feature_tables) == set(model.modalities) and not model._local_basis
    loss = sum(model.calculate_loss(next(iter(loaders[0]))))
    loss.backward()
    assert model.feature_tables[model.modalities[0]].grad is not None


def test_lgmrec_precomputed_local_branch_matches_direct(make_env):
    config, ds, loaders, model = build(make_env, "LGMRec", freeze_features=True)
    for name in model.modalities:
        assert name in model._local_basis          # frozen, narrow features: precomputed
        direct = model._propagate_local(model.mm_feats[name] @ model.projections[name])
        assert torch.allclose(model.local_modality(name), direct, atol=1e-5)
        # users' layer-0 modality embedding is the mean of their items' embeddings
        items = model.mm_feats[name] @ model.projections[name]
        R = torch.as_tensor(ds.inter_matrix("csr").toarray(), dtype=torch.float32)
        mean = (R @ items) / R.sum(1, keepdim=True).clamp_min(1)
        assert torch.allclose(model.r_mean @ items, mean, atol=1e-5)
