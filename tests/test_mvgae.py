"""MVGAE: training, the product of experts and the KL by hand, the graph, sampling."""
import math

import numpy as np
import torch

from model_checks import build, check_model, train_epochs
from mmrec_egra.models.mvgae import kl_standard_normal, product_of_experts


def test_mvgae_trains_and_ranks(make_env):
    check_model(make_env, "MVGAE", epochs=3, learning_rate=0.005, embedding_size=32)


def test_product_of_experts_and_kl_by_hand():
    # one dimension: experts N(1, 1) and N(3, 0.5) with the prior N(0, 1)
    mu, lv = product_of_experts([torch.tensor([[1.0]]), torch.tensor([[3.0]])],
                                [torch.tensor([[0.0]]), torch.tensor([[math.log(0.5)]])])
    prec = 1 + 1 + 2
    assert torch.allclose(mu, torch.tensor([[(1 * 1 + 3 * 2) / prec]]))
    assert torch.allclose(lv.exp(), torch.tensor([[1 / prec]]))
    # KL(N(m, s^2) || N(0, 1)) = 0.5 (m^2 + s^2 - 1 - log s^2), summed over dims
    m, v = torch.tensor([[0.5, -1.0]]), torch.tensor([[2.0, 0.25]])
    expect = 0.5 * ((0.25 + 2 - 1 - math.log(2)) + (1 + 0.25 - 1 - math.log(0.25)))
    assert torch.allclose(kl_standard_normal(m, v.log()), torch.tensor([expect]))
    assert kl_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max() == 0


def test_mvgae_graph_prediction_and_sampling(make_env):
    config, ds, loaders, model = build(make_env, "MVGAE", embedding_size=8)
    A = model.adj.to_scipy()
    R = loaders[0].inter_matrix(form="csr").astype(np.float64)
    R.data[:] = 1
    deg = np.concatenate([np.asarray(R.sum(1)).ravel(), np.asarray(R.sum(0)).ravel()]) + 1   # + self loop
    assert np.allclose(A.diagonal(), 1 / deg, rtol=1e-5)
    assert abs(A - A.T).max() < 1e-7
    u, i = R.nonzero()
    n_u = ds.n_users
    assert np.allclose(np.asarray(A[u, n_u + i]).ravel(), 1 / np.sqrt(deg[u] * deg[n_u + i]), rtol=1e-5)
    assert A.nnz == 2 * R.nnz + A.shape[0]
    # three experts (image, text, ID); prediction uses the posterior mean, no noise
    mus, lvs = model.experts()
    assert len(mus) == 3 and all(m.shape == (ds.n_users + ds.n_items, 8) for m in mus)
    model.eval()
    with torch.no_grad():
        mu, _ = product_of_experts(mus, lvs)
        s1 = model.full_sort_predict((torch.arange(3), None))
        assert torch.allclose(s1, mu[:3] @ mu[n_u:].t(), atol=1e-5)
    # training samples z: two calls differ, the same torch seed repeats the loss
    model.train()
    batch = next(iter(loaders[0]))
    torch.manual_seed(3)
    a = model.calculate_loss(batch)[0]
    b = model.calculate_loss(batch)[0]
    torch.manual_seed(3)
    c = model.calculate_loss(batch)[0]
    assert a != b and a == c


def test_mvgae_one_modality_no_id_expert_and_determinism(make_env):
    kw = dict(embedding_size=8, learning_rate=0.005, id_expert=False, reg_weight=1e-4,
              modalities={"image": "image_feat.npy"}, train_batch_size=4096)
    config, ds, loaders, model = build(make_env, "MVGAE", **kw)
    assert len(model.experts()[0]) == 1 and not hasattr(model, "id_encoder")
    a = train_epochs(config, model, loaders, 1)
    config, ds, loaders, model = build(make_env, "MVGAE", **kw)
    assert a == train_epochs(config, model, loaders, 1)
