"""SELFCFED_LGN (SelfCF_ed on LightGCN): training, the loss on a hand case, stop-gradient, scoring rule."""
import numpy as np
import pytest
import torch

from model_checks import build, check_model, train_epochs
from mmrec_egra.models.selfcfed_lgn import selfcf_loss
from mmrec_egra.registry import get_model
from mmrec_egra.utils import MMRecError


pytestmark = pytest.mark.usefixtures("one_thread")   # conftest: torch on one thread


def test_selfcf_trains_and_ranks(make_env):
    assert get_model("SelfCF") is get_model("SELFCFED_LGN")
    check_model(make_env, "SELFCFED_LGN", epochs=4, learning_rate=0.01, dropout=0.1)


def test_selfcf_loss_hand_case_and_stop_gradient():
    h_u = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    h_i = torch.tensor([[1.0, 1.0], [3.0, 0.0]], requires_grad=True)
    u_t = torch.tensor([[1.0, 1.0], [1.0, 0.0]], requires_grad=True)
    i_t = torch.tensor([[0.0, 5.0], [0.0, 1.0]], requires_grad=True)
    # pair 0: cos(h_u, i') = 0, cos(h_i, u') = 1 -> (1 + 0) / 2; pair 1: cos = 1 and 1 -> 0
    loss = selfcf_loss(h_u, h_i, u_t, i_t)
    assert torch.isclose(loss, torch.tensor(0.25))
    loss.backward()
    assert h_u.grad is not None and h_u.grad.abs().sum() > 0
    assert u_t.grad is None and i_t.grad is None          # targets are constants


def test_selfcf_scoring_rule_and_targets(make_env):
    config, ds, loaders, model = build(make_env, "SELFCFED_LGN", dropout=0.0)
    model.eval()
    with torch.no_grad():
        u, i = model.forward()
        users = torch.tensor([0, 5, 11])
        expected = model.predictor(u[users]) @ i.t() + u[users] @ model.predictor(i).t()
        got = model.full_sort_predict((users, None))
    assert torch.allclose(got, expected, atol=1e-5)
    # with dropout 0 the targets are the online outputs: the loss is the predictor's cosine gap
    model.train()
    batch = next(iter(loaders[0]))
    loss = model.calculate_loss(batch)
    uu, ii = model.forward()
    uu, ii = uu[batch[0]], ii[batch[1]]
    cu = torch.nn.functional.cosine_similarity(model.predictor(uu), ii, dim=-1)
    ci = torch.nn.functional.cosine_similarity(model.predictor(ii), uu, dim=-1)
    assert torch.allclose(loss, ((2 - cu - ci) / 2).mean(), atol=1e-6)
    # only the predictor and the embeddings train; the negatives row is never read
    batch2 = batch.clone()
    batch2[2] = 0
    assert torch.allclose(model.calculate_loss(batch2), loss)


def test_selfcf_dropout_validation_and_determinism(make_env):
    with pytest.raises(MMRecError, match="dropout"):           # the host's config check
        build(make_env, "SELFCFED_LGN", dropout=1.0)
    config, ds, loaders = make_env("SELFCFED_LGN")
    config["dropout"] = 1.0                                     # as a foreign host would pass it
    with pytest.raises(MMRecError, match="dropout must be in"):
        get_model("SELFCFED_LGN")(config, loaders[0])
    a = train_epochs(*_cm(build(make_env, "SELFCFED_LGN", dropout=0.3)), 2)
    b = train_epochs(*_cm(build(make_env, "SELFCFED_LGN", dropout=0.3)), 2)
    assert a == b and np.isfinite(a).all()


def _cm(built):
    config, ds, loaders, model = built
    return config, model, loaders
