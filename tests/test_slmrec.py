"""SLMRec: training, the concatenated score, the FAC loss by hand, the FD/FM views."""
import pytest
import torch
import torch.nn.functional as F

from model_checks import build, check_model, train_epochs
from mmrec_egra.utils import MMRecError


def test_slmrec_trains_and_ranks(make_env):
    check_model(make_env, "SLMRec", epochs=3, learning_rate=0.01, embedding_size=32, ssl_alpha=0.05)


def test_slmrec_score_is_sum_of_branch_scores_and_fac_by_hand(make_env):
    config, ds, loaders, model = build(make_env, "SLMRec", embedding_size=8, ssl_alpha=0.1, ssl_temp=0.5)
    A = torch.as_tensor(model.adj.to_scipy().toarray())
    def lgcn(x):   # mean of A^l x, l = 0..2, dense
        return (x + A @ x + A @ (A @ x)) / 3
    z_id = lgcn(torch.cat([model.user_embedding.weight, model.item_embedding.weight]))
    z_m = {n: lgcn(torch.cat([model.user_pref[n], F.normalize(x @ model.projections[n].weight.t()
                                                              + model.projections[n].bias, dim=1)]))
           for n, x in model.mm_feats.items()}
    model.eval()
    with torch.no_grad():
        s = model.full_sort_predict((torch.arange(4), None))
        U = ds.n_users
        expect = sum(z[:4] @ z[U:].t() for z in [z_id, *z_m.values()])
        assert torch.allclose(s, expect, atol=1e-4)
        # FAC: the fine pair (image, text) + coarse(mean fine) against the ID branch
        items = torch.tensor([0, 3, 5, 9, 11])
        fi = model.fine_heads["image"](z_m["image"][U + items])
        ft = model.fine_heads["text"](z_m["text"][U + items])
        def nce(a, b, t):
            a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
            logits = a @ b.t() / t
            return (torch.logsumexp(logits, 1) - logits.diagonal()).mean()
        hand = nce(fi, ft, 0.5) + nce(model.coarse_head((fi + ft) / 2), z_id[U + items], 0.5)
        _, _, zid, zm = model.forward()
        assert torch.allclose(model.ssl_loss(items, zid, zm), hand, atol=1e-4)


def test_slmrec_views_and_tasks(make_env):
    config, ds, loaders, model = build(make_env, "SLMRec", embedding_size=8, ssl_task="FM")
    torch.manual_seed(0)
    masked = []
    for _ in range(20):
        v = model.view_features("FM")
        zero = [n for n, x in v.items() if not x.any()]
        assert len(zero) == 1                              # exactly one modality masked
        other = [n for n in v if n != zero[0]][0]
        assert torch.equal(v[other], model.mm_feats[other])
        masked.append(zero[0])
    assert set(masked) == {"image", "text"}
    config, ds, loaders, model = build(make_env, "SLMRec", embedding_size=8, ssl_task="FD", ssl_dropout=0.5)
    x = model.mm_feats["image"]
    v = model.view_features("FD")["image"]
    kept = v != 0
    assert 0.4 < kept[x != 0].float().mean() < 0.6
    assert torch.allclose(v[kept], 2 * x[kept])             # inverted dropout scaling
    batch = next(iter(loaders[0]))
    model.train()
    bpr, reg, ssl = model.calculate_loss(batch)
    assert ssl > 0 and reg > 0
    with pytest.raises(MMRecError, match="FM"):
        build(make_env, "SLMRec", ssl_task="FM", modalities={"image": "image_feat.npy"})
    with pytest.raises(MMRecError, match="ssl_task"):
        build(make_env, "SLMRec", ssl_task="XYZ")


def test_slmrec_one_modality_and_determinism(make_env):
    kw = dict(embedding_size=8, learning_rate=0.005, ssl_task="FD", train_batch_size=4096, modalities={"image": "image_feat.npy"})
    config, ds, loaders, model = build(make_env, "SLMRec", **kw)
    a = train_epochs(config, model, loaders, 1)
    config, ds, loaders, model = build(make_env, "SLMRec", **kw)
    b = train_epochs(config, model, loaders, 1)
    assert a == b
    config, ds, loaders, model = build(make_env, "SLMRec", embedding_size=8, modalities={"image": "image_feat.npy"})
    batch = next(iter(loaders[0]))
    assert torch.isfinite(model.calculate_loss(batch)[2])   # FAC with one modality: coarse term only
