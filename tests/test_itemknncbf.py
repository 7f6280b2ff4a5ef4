"""ItemKNNCBF: the shrunk-cosine kNN graph and the scores R W against dense brute force."""
import numpy as np
import pytest
import torch

from model_checks import build, train_epochs
from mmrec_egra.evaluation import TopKEvaluator
from mmrec_egra.models.itemknncbf import shrunk_cosine_knn
from mmrec_egra.registry import get_model
from mmrec_egra.utils import MMRecError


def _dense_knn(x: torch.Tensor, k: int, shrink: float) -> torch.Tensor:
    n = x.norm(dim=1)
    sim = (x @ x.t()) / (n[:, None] * n[None, :] + shrink)
    sim.fill_diagonal_(-float("inf"))
    v, idx = torch.topk(sim, k, dim=1)
    return torch.zeros_like(sim).scatter_(1, idx, v)


def test_shrunk_cosine_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(57, 9, generator=g) * torch.rand(57, 1, generator=g) * 3   # varied norms
    for k, shrink in ((5, 0.0), (5, 2.0), (60, 1.0)):
        W = shrunk_cosine_knn(x, k, shrink, max_block_bytes=4 * 57 * 7)   # 7-row blocks
        kk = min(k, 56)
        assert (np.diff(W.indptr) == kk).all() and (W.diagonal() == 0).all()
        assert np.allclose(W.toarray(), _dense_knn(x, kk, shrink).numpy(), atol=1e-6)
    # shrink changes the ranking: a short vector loses against a long one of nearly equal direction
    x = torch.tensor([[1.0, 0.0], [0.1, 0.001], [10.0, 1.0]])
    assert shrunk_cosine_knn(x, 1, 0.0).indices[0] == 1
    assert shrunk_cosine_knn(x, 1, 1.0).indices[0] == 2


def test_itemknncbf_scores_rank_and_beat_random(make_env):
    assert get_model("itemknncbf") is get_model("ItemKNNCBF")
    config, ds, loaders, model = build(make_env, "ItemKNNCBF", knn_k=20, shrink=10)
    x = torch.cat([model.mm_feats["image"], model.mm_feats["text"]], dim=1)
    W = _dense_knn(x, 20, 10.0)
    assert torch.allclose(torch.as_tensor(model.W.toarray()), W, atol=1e-5)
    R = torch.as_tensor(loaders[0].inter_matrix(form="csr").toarray(), dtype=torch.float32).clamp(max=1)
    users = torch.tensor([0, 5, 17, 1999])
    model.eval()
    with torch.no_grad():
        s = model.full_sort_predict((users, None))
    assert s.shape == (4, ds.n_items)
    assert torch.allclose(s, R[users] @ W, atol=1e-4)
    # the host can "train" it: one constant loss, nothing changes
    losses = train_epochs(config, model, loaders, 1)
    assert losses == [0.0]
    with torch.no_grad():
        assert torch.equal(model.full_sort_predict((users, None)), s)
    res = TopKEvaluator(config).evaluate(model, loaders[1])
    assert res["recall@20"] > 3 * 20 / ds.n_items


def test_itemknncbf_feature_norm_and_errors(make_env):
    config, ds, loaders, model = build(make_env, "ItemKNNCBF", knn_k=5, shrink=0, feature_norm="l2")
    c = model.content()
    assert torch.allclose(c.norm(dim=1), torch.full((ds.n_items,), 2 ** 0.5), atol=1e-4)
    config, ds, loaders, model = build(make_env, "ItemKNNCBF", knn_k=5, modalities={"text": "text_feat.npy"})
    assert model.content().shape == (ds.n_items, 64)
    with pytest.raises(MMRecError, match="feature_norm"):
        build(make_env, "ItemKNNCBF", feature_norm="zscore")
    with pytest.raises(MMRecError, match="knn_k"):
        build(make_env, "ItemKNNCBF", knn_k=0)
