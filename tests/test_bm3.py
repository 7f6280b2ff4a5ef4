"""BM3: negative-free batches, training, the loss terms, one modality, determinism."""
import torch
import torch.nn.functional as F

from model_checks import build, check_model, train_epochs


def test_bm3_trains_and_ranks(make_env):
    config, ds, loaders, model, losses, res = check_model(make_env, "BM3", epochs=4, learning_rate=0.01,
                                                          n_layers=1, dropout=0.3, reg_weight=0.01)
    assert model.input_type == "pointwise"


def test_bm3_batches_have_no_negatives(make_env):
    config, ds, loaders, model = build(make_env, "BM3")
    assert config["use_neg_sampling"] is False
    batch = next(iter(loaders[0]))
    assert batch.shape[0] == 2 and batch.shape[1] == config["train_batch_size"]
    model.train()
    loss = model.calculate_loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_bm3_loss_terms(make_env):
    config, ds, loaders, model = build(make_env, "BM3", dropout=0.0, reg_weight=0.0, cl_weight=0.0, n_layers=1)
    model.train()
    batch = next(iter(loaders[0]))
    users, items = batch
    loss = model.calculate_loss(batch)
    # without dropout, reg or modality terms: symmetric 1 - cos(predicted online, target)
    u, i = model.forward()
    A = model.norm_adj.to_torch().to_dense()
    ego = torch.cat([model.user_embedding.weight, model.item_id_embedding.weight])
    mean = (ego + A @ ego) / 2
    assert torch.allclose(u, mean[:ds.n_users], atol=1e-5)
    assert torch.allclose(i, mean[ds.n_users:] + model.item_id_embedding.weight, atol=1e-5)
    p = model.predictor
    expected = (1 - F.cosine_similarity(p(u[users]), i[items]).mean()) + \
               (1 - F.cosine_similarity(p(i[items]), u[users]).mean())
    assert torch.allclose(loss, expected, atol=1e-5)
    # targets carry no gradient: the predictor's input side is the only path
    loss.backward()
    assert model.predictor.weight.grad is not None
    for proj in model.projections.values():
        assert proj.weight.grad is None               # cl_weight 0: modality terms skipped
    # modality terms reach the projections
    config, ds, loaders, model = build(make_env, "BM3", cl_weight=2.0)
    model.train()
    model.calculate_loss(next(iter(loaders[0]))).backward()
    for proj in model.projections.values():
        assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_bm3_one_modality_and_determinism(make_env):
    kw = dict(learning_rate=0.01, modalities={"image": "image_feat.npy"})
    config, ds, loaders, model = build(make_env, "BM3", **kw)
    assert list(model.projections) == ["image"]
    a = train_epochs(config, model, loaders, 2)
    model.eval()
    with torch.no_grad():
        assert model.full_sort_predict((torch.arange(5), None)).shape == (5, ds.n_items)
    config, ds, loaders, model = build(make_env, "BM3", **kw)
    assert train_epochs(config, model, loaders, 2) == a
