"""VBPR: behaviour on the demo data and the structure of its vectors."""
import numpy as np
import torch

from model_checks import build, check_model, train_epochs


def test_vbpr_trains_and_ranks(make_env):
    check_model(make_env, "VBPR", epochs=5, reg_weight=1e-4, learning_rate=0.01)


def test_vbpr_config_grid(demo_root):
    from mmrec_egra.runner import make_config
    config = make_config("VBPR", "demo", {"data_path": demo_root})
    assert [c["reg_weight"] for c in config.grid()] == [2.0, 1.0, 5.0, 0.1, 1e-2, 1e-4]


def test_vbpr_projection_init_is_xavier_normal_with_zero_bias(make_env):
    config, ds, loaders, model = build(make_env, "VBPR")
    w, b = model.item_linear.weight.detach(), model.item_linear.bias.detach()
    fan_out, fan_in = w.shape
    assert torch.count_nonzero(b) == 0
    # xavier-normal: zero-mean normal with std sqrt(2 / (fan_in + fan_out)); torch's default
    # would be uniform with std 1 / sqrt(3 fan_in), about 3x smaller here
    expected = (2.0 / (fan_in + fan_out)) ** 0.5
    assert abs(float(w.std()) - expected) < 0.03 * expected, (float(w.std()), expected)
    assert abs(float(w.mean())) < 0.05 * expected
    # a normal has kurtosis 3; a uniform 1.8
    z = (w - w.mean()) / w.std()
    assert 2.8 < float((z ** 4).mean()) < 3.2
    assert model.reg_weight == 2.0                              # the default is the grid's first value


def test_vbpr_vectors_and_projection_work(make_env):
    config, ds, loaders, model = build(make_env, "VBPR", reg_weight=1e-4)
    d = config["embedding_size"]
    feat_dim = sum(f.shape[1] for f in model.mm_feats.values())
    assert model.user_embedding.weight.shape == (ds.n_users, 2 * d)
    assert model.item_linear.in_features == feat_dim
    # features are fixed inputs, not parameters
    assert "item_features" not in dict(model.named_parameters())
    assert not model.item_features.requires_grad
    reps = model.item_representations()
    assert reps.shape == (ds.n_items, 2 * d)
    feats = torch.cat(list(model.mm_feats.values()), dim=1)
    assert torch.allclose(reps[:, :d], model.item_embedding.weight)
    assert torch.allclose(reps[:, d:], model.item_linear(feats), atol=1e-6)

    seen = []
    model.item_linear.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    batch = next(iter(loaders[0]))
    model.train()
    loss = model.calculate_loss(batch)
    loss.backward()
    # only the batch's DISTINCT pos + neg items are projected, each once
    assert seen == [int(torch.unique(torch.cat([batch[1], batch[2]])).numel())]
    assert model.item_linear.weight.grad.abs().sum() > 0
    model.eval()
    seen.clear()
    with torch.no_grad():
        s1 = model.full_sort_predict((torch.arange(4), None))
        s2 = model.full_sort_predict((torch.arange(4, 9), None))
    assert seen == [ds.n_items]                                 # all items once, then cached
    assert s1.shape == (4, ds.n_items) and s2.shape == (5, ds.n_items)
    u = model.user_embedding.weight[:4]
    assert torch.allclose(s1, u @ reps.t(), atol=1e-5)


def test_vbpr_same_seed_same_losses(make_env):
    runs = []
    for _ in range(2):
        config, ds, loaders, model = build(make_env, "VBPR", reg_weight=1e-4, learning_rate=0.01)
        runs.append(train_epochs(config, model, loaders, 2))
    # see test_mgcn_same_seed_same_losses for the tolerance
    assert np.allclose(runs[0], runs[1], rtol=1e-6, atol=0), runs


def test_vbpr_feature_norm_modes():
    import pytest
    from mmrec_egra.models.vbpr import scale_features
    from mmrec_egra.utils import MMRecError
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]])
    assert torch.equal(scale_features(x, "none"), x)
    assert torch.allclose(scale_features(x, "l2").norm(dim=1), torch.ones(3))
    s = scale_features(x, "standard")
    assert torch.allclose(s.mean(0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(s.std(0), torch.ones(2))
    with pytest.raises(MMRecError, match="feature_norm"):
        scale_features(x, "minmax")


def test_emb_norm_reg_is_mmrec_embloss():
    from mmrec_egra.losses import emb_norm_reg
    u = torch.tensor([[3.0, 4.0], [0.0, 0.0]])       # Frobenius norm 5
    p = torch.tensor([[1.0, 0.0], [0.0, 0.0]])       # 1
    assert float(emb_norm_reg(u, p)) == (5.0 + 1.0) / 2


def test_vbpr_batch_vectors_equal_naive_projection(make_env):
    config, ds, loaders, model = build(make_env, "VBPR", reg_weight=1e-4)
    batch = next(iter(loaders[0]))
    items = torch.cat([batch[1], batch[2]])
    model.train()
    fast = model.item_vectors(items)
    naive = torch.cat([model.item_embedding(items), model.item_linear(model.item_features[items])], dim=1)
    assert torch.allclose(fast, naive, atol=1e-6)
    # a second, smaller batch reuses the buffer without reading stale rows
    few = items[:7]
    naive_few = model.item_linear(model.item_features[few])
    assert torch.allclose(model.item_vectors(few)[:, config["embedding_size"]:], naive_few, atol=1e-6)
