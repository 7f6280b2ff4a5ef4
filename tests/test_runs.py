"""Run bookkeeping: status values, timings across --resume, clean stop on SIGTERM, bounded writes."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmrec_egra import trainer as trainer_mod
from mmrec_egra.models.base import GeneralRecommender
from mmrec_egra.registry import register_model
from mmrec_egra.runner import run

REPO = Path(__file__).resolve().parents[1]


def opts(demo_root, tmp_path, **kw):
    o = {"data_path": demo_root, "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False,
         "device": "cpu", "epochs": 2, "learning_rate": 0.01, "topk": [10, 20], "reg_weight": 1e-4,
         "artifact_dir": str(tmp_path / "artifacts")}
    o.update(kw)
    return o


@register_model("_FrozenForRunsTest")
class _Frozen(GeneralRecommender):
    """Scores never change, so valid improves only at the first evaluation."""

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        self.w = torch.nn.Parameter(torch.zeros(4))

    def calculate_loss(self, batch):
        return (self.w ** 2).sum() + 1.0

    def full_sort_predict(self, batch):
        return torch.arange(self.n_items, dtype=torch.float32).repeat(len(batch[0]), 1)


def _result(s):
    return s["rows"][0]["result"]


def test_status_capped_or_early_stopped(demo_root, tmp_path):
    capped = run("BPR", "demo", opts(demo_root, tmp_path / "a", epochs=2))
    assert _result(capped)["status"] == "capped" and _result(capped)["resumed_at_epochs"] == []
    stopped = run("_FrozenForRunsTest", "demo", opts(demo_root, tmp_path / "b", epochs=50, stopping_step=2))
    r = _result(stopped)
    assert r["status"] == "early_stopped" and r["best_epoch"] == 0 and r["epochs_run"] == 4
    on_disk = json.loads((Path(stopped["rows"][0]["dir"]) / "result.json").read_text())
    assert on_disk["result"]["status"] == "early_stopped"


def test_seconds_per_epoch_kept_across_resume(demo_root, tmp_path):
    o = opts(demo_root, tmp_path, epochs=2)
    first = run("BPR", "demo", o)
    d = Path(first["rows"][0]["dir"])
    # mark the first process's epochs as slow: the resumed result must still count them
    state = torch.load(d / "last.pt", weights_only=True)
    for h in state["history"]:
        h["train_seconds"] = 100.0
    torch.save(state, d / "last.pt")
    more = run("BPR", "demo", dict(o, epochs=4), resume=True)       # a larger budget continues the capped run
    r = _result(more)
    hist = json.loads((d / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3] and [h["train_seconds"] for h in hist[:2]] == [100.0, 100.0]
    assert r["seconds_per_epoch"] >= 50.0          # median of 100, 100 and the two new epochs
    assert r["status"] == "capped" and r["resumed_at_epochs"] == [2] and r["epochs_run"] == 4
    assert [json.loads(x)["epoch"] for x in (d / "history.jsonl").read_text().splitlines()] == [0, 1, 2, 3]


def test_sigterm_stops_cleanly_and_resume_continues(demo_root, tmp_path):
    ck = tmp_path / "saved"
    args = ["-m", "BPR", "-d", "demo", "--data_path", demo_root, "--checkpoint_dir", str(ck), "--epochs", "1000",
            "--show_progress", "false", "--device", "cpu", "--threads", "1", "--learning_rate", "0.01",
            "--topk", "[10, 20]", "--reg_weight", "0.0001", "--checkpoint_every", "1000",
            "--artifact_dir", str(tmp_path / "artifacts")]
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        p = subprocess.Popen([sys.executable, str(REPO / "main.py"), *args], cwd=str(tmp_path), stdout=out,
                             stderr=err)
        try:
            deadline = time.time() + 240
            while time.time() < deadline:           # wait until two epochs are done
                jl = list(ck.glob("BPR-demo/*/history.jsonl"))
                if jl and len(jl[0].read_text().splitlines()) >= 2:
                    break
                assert p.poll() is None, (tmp_path / "err.txt").read_text()
                time.sleep(0.2)
            else:
                pytest.fail("the run did not reach epoch 2 in time")
            p.send_signal(signal.SIGTERM)
            rc = p.wait(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
    err_text = (tmp_path / "err.txt").read_text()
    assert rc == 128 + signal.SIGTERM, err_text
    assert "Traceback" not in err_text
    lines = [ln for ln in err_text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: SIGTERM: stopped after epoch "), err_text
    assert "--resume" in lines[0] and "last.pt" in lines[0]
    d = next(ck.glob("BPR-demo/seed=*"))
    assert not (d / "result.json").exists()
    state = torch.load(d / "last.pt", weights_only=True)            # checkpoint_every 1000: written at the stop
    stopped_at = int(state["epoch"])
    assert f"after epoch {stopped_at}," in lines[0]
    assert len(json.loads((d / "history.json").read_text())) == stopped_at + 1
    # --resume continues from there to the same result as an uninterrupted run
    o = opts(demo_root, tmp_path, epochs=stopped_at + 3)
    resumed = run("BPR", "demo", o, resume=True)
    full = run("BPR", "demo", dict(o, checkpoint_dir=str(tmp_path / "full")))
    r = _result(resumed)
    assert r["resumed_at_epochs"] == [stopped_at + 1] and r["epochs_run"] == stopped_at + 3
    assert r["best_test"] == pytest.approx(_result(full)["best_test"], abs=1e-6)


def test_files_written_per_epoch_are_bounded(demo_root, tmp_path, monkeypatch):
    saves, jsons = [], []
    real_save, real_json = trainer_mod.torch_save_atomic, trainer_mod.write_json

    def save(obj, path, durable=True):
        saves.append((Path(path).name, int(obj["epoch"])))
        real_save(obj, path, durable)

    def write_json(path, obj, durable=True):
        jsons.append(Path(path).name)
        real_json(path, obj, durable)
    monkeypatch.setattr(trainer_mod, "torch_save_atomic", save)
    monkeypatch.setattr(trainer_mod, "write_json", write_json)
    s = run("BPR", "demo", opts(demo_root, tmp_path / "a", epochs=7, checkpoint_every=3))
    # last.pt at epochs 2 and 5 (every 3) and at the stop (6); best.pt only with those, when it changed
    assert [e for n, e in saves if n == "last.pt"] == [2, 5, 6]
    best = [e for n, e in saves if n == "best.pt"]
    assert len(best) <= 3 and best == sorted(set(best)) and best[-1] == _result(s)["best_epoch"]
    assert jsons == ["history.json"]               # the history is appended; history.json once, at the stop
    d = Path(s["rows"][0]["dir"])
    assert len((d / "history.jsonl").read_text().splitlines()) == 7
    assert torch.load(d / "best.pt", weights_only=True)["epoch"] == _result(s)["best_epoch"]

    # a best that never changes after epoch 0 is written once; an early stop writes no last.pt at the end
    saves.clear()
    run("_FrozenForRunsTest", "demo", opts(demo_root, tmp_path / "b", epochs=50, stopping_step=4, checkpoint_every=2))
    assert [n for n, e in saves if n == "best.pt"] == ["best.pt"]
    assert [e for n, e in saves if n == "last.pt"] == [1, 3]          # stopped after epoch 5: no final last.pt
