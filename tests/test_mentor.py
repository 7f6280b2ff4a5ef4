"""MENTOR: training, the fused item graph vs brute force, the alignment term, the noise, fusion."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_checks import build, check_model, train_epochs
from mmrec_egra.models.mentor import gaussian_alignment, perturb


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: torch on one thread


def test_mentor_trains_and_ranks(make_env):
    check_model(make_env, "MENTOR", epochs=2, learning_rate=0.01, embedding_size=16)


def test_gaussian_alignment_hand_case():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])           # unit rows, mean (1,0), std 0
    b = torch.tensor([[0.0, 2.0], [0.0, -3.0]])          # normalised: (0,1), (0,-1): mean 0, std (0,1)
    assert torch.isclose(gaussian_alignment(a, b), torch.tensor(1.0 + 1.0))
    assert gaussian_alignment(b, b).abs() < 1e-7
    # invariant to the scale of the rows
    assert torch.isclose(gaussian_alignment(5 * a, b), gaussian_alignment(a, b))


def test_perturbation_noise_magnitude_and_sign():
    torch.manual_seed(0)
    x = torch.randn(50, 8)
    y = perturb(x, 0.1)
    d = y - x
    assert torch.allclose(d.norm(dim=1), torch.full((50,), 0.1), atol=1e-5)
    assert (d * x >= 0).all()                            # noise follows the sign of x


def test_mentor_graphs_and_fusion(make_env):
    config, ds, loaders, model = build(make_env, "MENTOR", embedding_size=16, knn_k=5)
    expected = torch.zeros(ds.n_items, ds.n_items)
    weights = {"image": 0.1, "text": 0.9}
    for name, x in model.mm_feats.items():
        z = F.normalize(x, dim=1)
        idx = torch.topk(z @ z.t(), 5, dim=1).indices
        K = torch.zeros(ds.n_items, ds.n_items).scatter_(1, idx, 1.0)
        d = K.sum(1).pow(-0.5)
        S = d[:, None] * K * d[None, :]
        assert torch.allclose(model.item_graphs[name].to_dense(), S, atol=1e-6)
        expected += weights[name] * S
    assert torch.allclose(model.fused_graph.to_dense(), expected, atol=1e-6)
    model.eval()
    with torch.no_grad():
        (u_id, i_id), per, feats = model.views()
        u, i = model.forward()
        assert torch.allclose(u, u_id + (per["image"][0] + per["text"][0]) / 2, atol=1e-6)
        assert torch.allclose(i, i_id + (per["image"][1] + per["text"][1]) / 2, atol=1e-6)
        # the ID view's item side adds one hop on the fused graph to LightGCN's mean
        E = model.item_embedding.weight
        assert torch.allclose(i_id - expected @ E, model._lgn(model.user_embedding.weight, E)[1], atol=1e-5)
        scores = model.full_sort_predict((torch.arange(4), None))
        assert torch.allclose(scores, u[:4] @ i.t(), atol=1e-5)


def test_mentor_terms_switch_off_and_determinism(make_env):
    config, ds, loaders, model = build(make_env, "MENTOR", embedding_size=16, align_weight=0.0, cl_weight=0.0,
                                       modalities={"image": "image_feat.npy"})
    assert list(model.mm_feats) == ["image"]
    batch = next(iter(loaders[0]))
    loss = model.calculate_loss(batch)
    u, i = model.forward()
    uu = u[batch[0]]
    bpr = F.softplus((uu * i[batch[2]]).sum(-1) - (uu * i[batch[1]]).sum(-1)).mean()
    reg = 0.5 * (model.user_embedding(batch[0]).pow(2).sum() + model.item_embedding(batch[1]).pow(2).sum()
                 + model.item_embedding(batch[2]).pow(2).sum()) / batch.shape[1]
    assert torch.allclose(loss, bpr + model.reg_weight * reg, atol=1e-6)
    runs = []
    for _ in range(2):
        config, ds, loaders, model = build(make_env, "MENTOR", embedding_size=16, modalities={"image": "image_feat.npy"})
        runs.append(train_epochs(config, model, loaders, 1))
    assert runs[0] == runs[1] and np.isfinite(runs[0]).all()
