"""SMORE: training, the spectral filters (convolution theorem), the fusion graph, the fusion rule."""
import numpy as np
import torch

from model_checks import build, check_model, train_epochs
from mmrec_egra.models.smore import spectral_filter, spectral_fusion


def test_smore_trains_and_ranks(make_env):
    config, ds, loaders, model, losses, res = check_model(make_env, "SMORE", epochs=2, learning_rate=0.005,
                                                          embedding_size=32)
    bpr, reg, cl = model.calculate_loss(next(iter(loaders[0])))
    assert float(cl.detach()) > 0 and float(reg.detach()) > 0


def test_spectral_filters_are_circular_convolutions():
    torch.manual_seed(0)
    d = 8
    a, b = torch.randn(3, d), torch.randn(3, d)
    ones = torch.zeros(d // 2 + 1, 2)
    ones[:, 0] = 1.0
    # an all-ones filter is the identity
    assert torch.allclose(spectral_filter(a, ones), a, atol=1e-5)
    # product of 'ortho' spectra = circular convolution / sqrt(d) (convolution theorem)
    conv = torch.stack([torch.stack([sum(a[r, j] * b[r, (k - j) % d] for j in range(d)) for k in range(d)])
                        for r in range(3)])
    assert torch.allclose(spectral_fusion([a, b], ones), conv / np.sqrt(d), atol=1e-5)
    # a filter keeping only frequency 0 returns each row's mean
    dc = torch.zeros(d // 2 + 1, 2)
    dc[0, 0] = 1.0
    assert torch.allclose(spectral_filter(a, dc), a.mean(1, keepdim=True).expand(-1, d), atol=1e-5)


def test_smore_fusion_graph_and_fusion_rule(make_env):
    config, ds, loaders, model = build(make_env, "SMORE")
    dense = [g.to_dense() for g in model.item_graphs]
    F = model.fusion_graph.to_dense()
    assert torch.allclose(F, torch.maximum(dense[0], dense[1]))
    nnz_each = [int((g > 0).sum()) for g in dense]
    assert int((F > 0).sum()) >= max(nnz_each)               # union of the edges
    assert (torch.diagonal(F) > 0).all()                       # self loops kept
    model.eval()
    with torch.no_grad():
        beh = model.behaviour_embeddings()
        views = model.view_embeddings()
        side = model.fuse(views, beh)
        # by hand for one row: softmax over modality queries of the fused view
        r = 5
        scores = torch.cat([q(views[-1][r:r + 1]) for q in model.query], dim=1)[0]
        a = torch.softmax(scores, 0)
        parts = [torch.sigmoid(model.prefer_gate[m](beh[r])) * a[m] * views[m][r] for m in range(2)]
        parts.append(torch.sigmoid(model.prefer_gate[2](beh[r])) * views[-1][r])
        assert torch.allclose(side[r], sum(parts) / 3, atol=1e-6)
        s = model.full_sort_predict((torch.tensor([r]), None))
        final = beh + side
        assert torch.allclose(s[0], final[r] @ final[model.n_users:].t(), atol=1e-4)


def test_smore_one_modality_and_determinism(make_env):
    kw = dict(modalities={"image": "image_feat.npy"}, embedding_size=16)
    config, ds, loaders, model = build(make_env, "SMORE", **kw)
    assert len(model.item_graphs) == 1 and len(model.query) == 1
    a = train_epochs(config, model, loaders, 1)
    config, ds, loaders, model = build(make_env, "SMORE", **kw)
    assert train_epochs(config, model, loaders, 1) == a
