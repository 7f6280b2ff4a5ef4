"""Trainer protocol and runner outputs: determinism, early stopping, NaN, resume, saved files."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrec_egra.models.base import GeneralRecommender
from mmrec_egra.registry import register_model
from mmrec_egra.runner import run
from mmrec_egra.trainer import build_optimizer
from mmrec_egra.utils import MMRecError


def opts(demo_root, tmp_path, **kw):
    o = {"data_path": demo_root, "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False,
         "device": "cpu", "epochs": 4, "learning_rate": 0.01, "topk": [10, 20], "n_layers": 1,
         "reg_weight": 1e-4}
    o.update(kw)
    return o


def test_same_seed_same_metrics(demo_root, tmp_path):
    a = run("LightGCN", "demo", opts(demo_root, tmp_path / "a"), save=False)
    b = run("LightGCN", "demo", opts(demo_root, tmp_path / "b"), save=False)
    ra, rb = a["best"]["result"], b["best"]["result"]
    assert ra["best_valid"] == rb["best_valid"] and ra["best_test"] == rb["best_test"]
    c = run("LightGCN", "demo", opts(demo_root, tmp_path / "c", seed=5), save=False)
    assert c["best"]["result"]["best_valid"] != ra["best_valid"]


def test_grid_selects_on_validation_and_saves_files(demo_root, tmp_path):
    s = run("BPR", "demo", opts(demo_root, tmp_path, epochs=2, reg_weight=[1e-4, 1e-1], save_recommended_topk=True))
    rows = s["rows"]
    assert len(rows) == 2
    vals = [r["result"]["best_valid"]["recall@20"] for r in rows]
    assert s["best_index"] == int(np.argmax(vals))
    root = tmp_path / "saved" / "BPR-demo"
    for f in ("summary.json", "summary.md", "summary.csv", "run.log"):
        assert (root / f).is_file()
    d = Path(rows[0]["dir"])
    for f in ("config.json", "history.json", "result.json", "best.pt", "last.pt", "topk.tsv"):
        assert (d / f).is_file(), f
    hist = json.loads((d / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1] and "valid" in hist[0] and "loss" in hist[0]
    lines = (d / "topk.tsv").read_text().splitlines()
    assert lines[0] == "userID\titemIDs" and len(lines[1].split("\t")[1].split(",")) == 20
    assert "**best**" in (root / "summary.md").read_text()


@register_model("_ConstantForTest")
class _Constant(GeneralRecommender):
    """Scores never change after epoch 0, so valid never strictly improves again."""
    config_keys = ("nan_at",)       # a test-only key: declared, so the unknown-key check accepts it
    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.nan_at = config["nan_at"]
        self.calls = 0

    def calculate_loss(self, batch):
        self.calls += 1
        if self.nan_at is not None and self.calls >= self.nan_at:
            return self.w * float("nan")
        return (self.w - 1.0).pow(2).sum() * 0.0 + self.w.sum() * 0.0 + 1.0 + 0 * self.w.sum()

    def full_sort_predict(self, batch):
        return torch.arange(self.n_items, dtype=torch.float32).repeat(len(batch[0]), 1)


def test_early_stopping_patience_counts_evaluations(demo_root, tmp_path):
    s = run("_ConstantForTest", "demo", opts(demo_root, tmp_path, epochs=100, stopping_step=3), save=False)
    r = s["best"]["result"]
    # best at epoch 0; epochs 1..4 do not improve; stop when more than 3 evaluations failed
    assert r["best_epoch"] == 0 and r["epochs_run"] == 5


def test_eval_step(demo_root, tmp_path):
    s = run("_ConstantForTest", "demo", opts(demo_root, tmp_path, epochs=100, stopping_step=1, eval_step=3),
            save=False)
    r = s["best"]["result"]
    assert r["best_epoch"] == 2 and r["epochs_run"] == 9


def test_nan_loss_ends_combination(demo_root, tmp_path, caplog):
    s = run("_ConstantForTest", "demo", opts(demo_root, tmp_path, epochs=10, nan_at=30), save=False)
    r = s["rows"][0]["result"]
    assert r["status"] == "nan" and r["epochs_run"] < 10


def test_resume_continues_to_the_same_result(demo_root, tmp_path):
    full = run("BPR", "demo", opts(demo_root, tmp_path / "full", epochs=4))
    part = opts(demo_root, tmp_path / "part", epochs=4)
    run("BPR", "demo", dict(part, epochs=2))           # interrupted after 2 epochs...
    combo = next((tmp_path / "part" / "saved" / "BPR-demo").glob("seed=*"))
    (combo / "result.json").unlink()
    # ...resumed with the original epoch budget; epochs is volatile for the checkpoint key
    resumed = run("BPR", "demo", part, resume=True)
    rf, rr = full["best"]["result"], resumed["best"]["result"]
    assert rr["epochs_run"] == 4
    assert rf["best_test"] == pytest.approx(rr["best_test"], abs=1e-6)


def test_optimizers_and_unknown(demo_root):
    p = [torch.nn.Parameter(torch.zeros(2))]
    for name, cls in (("adam", torch.optim.Adam), ("SGD", torch.optim.SGD), ("adagrad", torch.optim.Adagrad),
                      ("rmsprop", torch.optim.RMSprop)):
        assert isinstance(build_optimizer({"learner": name, "learning_rate": 0.1, "weight_decay": 0.0}, p), cls)
    with pytest.raises(MMRecError, match="unknown optimizer learner: 'lamb'"):
        build_optimizer({"learner": "lamb"}, p)
