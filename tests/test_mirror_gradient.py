"""Mirror Gradient trainer option: the update rule by hand, off == plain training, loss still falls."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrec_egra.models.bpr import BPR
from mmrec_egra.runner import make_config, run
from mmrec_egra.trainer import Trainer, build_optimizer
from mmrec_egra.utils import MMRecError, init_seed


class _Quartic(torch.nn.Module):
    """L_a(w) = 1/2 sum(a w^2) + 1/4 sum(w^4): its gradient a w + w^3 changes with w, so the
    mirrored step (taken at the moved point) differs from a plain reversed step."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
        self.device = torch.device("cpu")

    def calculate_loss(self, a):
        return 0.5 * (a * self.w ** 2).sum() + 0.25 * (self.w ** 4).sum()


def _grad(a, w):
    return a * w + w ** 3


def _loss(a, w):
    return 0.5 * (a * w ** 2).sum() + 0.25 * (w ** 4).sum()


def test_update_matches_a_hand_computation(make_env):
    lr, a1, a2 = 0.05, 1.0, 0.4
    config, _, _ = make_env("BPR", learner="sgd", learning_rate=lr, mirror_gradient=True, mg_alpha1=a1,
                            mg_alpha2=a2, mg_beta=2)
    batches = [torch.tensor(v, dtype=torch.float64) for v in
               ([1.0, 2.0, 0.5], [0.3, 1.0, 2.0], [2.0, 0.1, 1.0], [0.5, 0.5, 3.0], [1.5, 1.0, 0.2])]
    model = _Quartic()
    out, n = Trainer(config, model)._train_epoch(batches, 0)
    # by hand: batches 2 and 4 (every mg_beta = 2nd, counted from 1) descend on a1 * grad, then
    # ascend on a2 * grad taken at the moved point; batches 1, 3, 5 are plain SGD steps
    w = np.array([1.0, -2.0, 0.5])
    total = 0.0
    for i, a in enumerate(b.numpy() for b in batches):
        total += _loss(a, w)
        if (i + 1) % 2 == 0:
            w = w - lr * a1 * _grad(a, w)
            w = w + lr * a2 * _grad(a, w)
        else:
            w = w - lr * _grad(a, w)
    np.testing.assert_allclose(model.w.detach().numpy(), w, rtol=1e-12)
    assert n == 5 and out[0] == pytest.approx(total, rel=1e-12)   # the epoch loss: first halves only
    # and it is not the plain trajectory
    w_plain = np.array([1.0, -2.0, 0.5])
    for a in (b.numpy() for b in batches):
        w_plain = w_plain - lr * _grad(a, w_plain)
    assert np.abs(w - w_plain).max() > 1e-3


def test_mirror_step_with_nan_loss_stops_the_combination(make_env):
    config, _, _ = make_env("BPR", learner="sgd", mirror_gradient=True, mg_beta=1)

    class _NanOnSecondCall(_Quartic):
        calls = 0

        def calculate_loss(self, a):
            self.calls += 1
            return super().calculate_loss(a) * (float("nan") if self.calls == 2 else 1.0)
    out, batch_idx = Trainer(config, _NanOnSecondCall())._train_epoch([torch.ones(3, dtype=torch.float64)], 0)
    assert out is None and batch_idx == 0


def _params_after_one_epoch(config, train, trainer_loop: bool):
    init_seed(999)
    train.set_seed(999)
    model = BPR(config, train)
    if trainer_loop:
        Trainer(config, model)._train_epoch(train, 0)
    else:                                   # the plain loop: zero_grad, loss, backward, step
        opt = build_optimizer(config, [p for p in model.parameters() if p.requires_grad])
        model.train()
        for batch in train:
            opt.zero_grad(set_to_none=True)
            out = model.calculate_loss(batch)
            (sum(out) if isinstance(out, (tuple, list)) else out).backward()
            opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_off_is_bit_identical_to_plain_training(make_env):
    # the knobs are ignored while mirror_gradient is false
    config, _, (train, _, _) = make_env("BPR", epochs=1, mg_alpha1=3.0, mg_alpha2=2.0, mg_beta=1)
    assert config["mirror_gradient"] is False
    plain = _params_after_one_epoch(config, train, trainer_loop=False)
    off = _params_after_one_epoch(config, train, trainer_loop=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, off))
    config["mirror_gradient"] = True
    on = _params_after_one_epoch(config, train, trainer_loop=True)
    assert not all(torch.equal(a, b) for a, b in zip(plain, on))


@pytest.mark.parametrize("model", ["BPR", "LightGCN"])
def test_training_with_mirror_gradient_reduces_the_loss(demo_root, tmp_path, model):
    o = {"data_path": demo_root, "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False,
         "device": "cpu", "epochs": 4, "learning_rate": 0.01, "topk": [10, 20], "reg_weight": 1e-4,
         "n_layers": 1, "mirror_gradient": True, "artifact_dir": str(tmp_path / "artifacts")}
    s = run(model, "demo", o)
    hist = json.loads((Path(s["rows"][0]["dir"]) / "history.json").read_text())
    losses = [h["loss"] for h in hist]
    recalls = [h["valid"]["recall@20"] for h in hist]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert recalls[-1] > recalls[0] > 0
    assert json.loads((Path(s["rows"][0]["dir"]) / "config.json").read_text())["mirror_gradient"] is True


@pytest.mark.parametrize("key,value,expect", [
    ("mg_beta", 0, "must be >= 1"),
    ("mg_alpha1", 0, "must be > 0"),
    ("mg_alpha2", -0.5, "must be >= 0"),
    ("mirror_gradient", "yes", "expected true or false"),
])
def test_bad_knobs_are_one_clear_error(demo_root, key, value, expect):
    with pytest.raises(MMRecError, match=f"{key}.*{expect}|{expect}.*{key}|'{key}' is"):
        make_config("BPR", "demo", {"data_path": demo_root, key: value})
