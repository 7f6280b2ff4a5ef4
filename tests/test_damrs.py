"""DA-MRS: training, the consistent item graph, the denoised feedback weights, the alias."""
import numpy as np
import torch
import torch.nn.functional as F

from model_checks import build, check_model, train_epochs
from mmrec_egra.models.damrs import consistent_knn_graph
from mmrec_egra.registry import get_model


def test_damrs_trains_and_ranks(make_env):
    check_model(make_env, "DAMRS", epochs=2, learning_rate=0.01, embedding_size=32)
    assert get_model("DA-MRS") is get_model("DAMRS") and get_model("da-mrs") is get_model("damrs")


def test_consistent_graph_vs_brute_force():
    torch.manual_seed(0)
    base = torch.randn(60, 6)
    feats = {"a": base + 0.3 * torch.randn(60, 6), "b": base + 0.3 * torch.randn(60, 6),
             "c": torch.randn(60, 5)}
    k = 5
    cos = {n: F.normalize(x, dim=1) @ F.normalize(x, dim=1).t() for n, x in feats.items()}
    for names in (["a", "b"], ["a", "b", "c"], ["c"]):
        G = consistent_knn_graph({n: feats[n] for n in names}, k, max_block_bytes=4 * 60 * 7).toarray()
        c = torch.stack([cos[n] for n in names]).min(0).values.numpy().copy()
        np.fill_diagonal(c, -np.inf)
        K = np.zeros((60, 60), dtype=np.float32)
        for r in range(60):
            K[r, np.argsort(-c[r])[:k]] = 1
        d = K.sum(1)
        assert np.allclose(G, (K / np.sqrt(d)[:, None]) / np.sqrt(d)[None, :], atol=1e-6)
        assert np.all(np.diag(G) == 0) and ((G > 0).sum(1) == k).all()


def test_damrs_feedback_weights(make_env):
    config, ds, loaders, model = build(make_env, "DAMRS", denoise_alpha=0.5)
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    i = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    w = model.feedback_weights([(u, i)])
    p = torch.sigmoid(torch.tensor([1.0, -1.0, 1.0]) / model.feedback_temp)
    assert torch.allclose(w, 0.5 + 0.5 * p / p.mean())
    assert torch.isclose(w.mean(), torch.tensor(1.0)) and w[1] < w[0]    # disagreeing pair down-weighted
    model.denoise_alpha = 0.0
    assert torch.allclose(model.feedback_weights([(u, i)]), torch.ones(3))
    # with alpha 0 and no alignment the loss is plain BPR + reg
    model.align_weight = 0.0
    batch = next(iter(loaders[0]))
    rec, align, reg = model.calculate_loss(batch)
    uu, ii = model.forward()
    s_p = (uu[batch[0]] * ii[batch[1]]).sum(-1)
    s_n = (uu[batch[0]] * ii[batch[2]]).sum(-1)
    assert torch.allclose(rec, F.softplus(s_n - s_p).mean(), atol=1e-6) and float(align) == 0.0


def test_damrs_one_modality_and_determinism(make_env):
    kw = dict(modalities={"image": "image_feat.npy"}, embedding_size=16)
    config, ds, loaders, model = build(make_env, "DAMRS", **kw)
    assert model.item_graph.nnz == ds.n_items * model.knn_k
    a = train_epochs(config, model, loaders, 1)
    config, ds, loaders, model = build(make_env, "DAMRS", **kw)
    assert train_epochs(config, model, loaders, 1) == a
