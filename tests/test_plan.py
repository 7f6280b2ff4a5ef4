"""compare --plan: lists the runs a comparison needs and finds finished ones without training."""
from __future__ import annotations

import json
from pathlib import Path

from mmrec_egra.compare import main
from mmrec_egra.plan import plan_entries, plan_markdown
from mmrec_egra.runner import run_dir_lock


def _args(demo_root, tmp_path, *extra):
    return ["-d", "demo", "--data_path", demo_root, "--checkpoint_dir", str(tmp_path / "saved"),
            "--artifact_dir", str(tmp_path / "art"), "--epochs", "2", "--stopping_step", "1", "--device", "cpu",
            *extra]


def _folders(tmp_path):
    return sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "saved").rglob("*") if p.is_dir())


def test_plan_finds_finished_runs_of_the_cut_grid_and_trains_nothing(demo_root, tmp_path, capsys, one_thread):
    assert main(_args(demo_root, tmp_path, "-m", "BPR", "--seeds", "999", "--grid-max", "2",
                      "--out", str(tmp_path / "t"))) == 0
    finished = {json.loads(f.read_text())["combination"]["reg_weight"]: json.loads(f.read_text())["result"]
                for f in (tmp_path / "saved" / "BPR-demo").glob("*/result.json")}
    before = _folders(tmp_path)
    capsys.readouterr()

    assert main(_args(demo_root, tmp_path, "-m", "BPR", "--seeds", "999", "1", "--grid-max", "2", "--plan")) == 0
    out = capsys.readouterr().out
    assert _folders(tmp_path) == before                      # nothing trained, no folder made
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| BPR |")]
    # BPR's grid reg_weight {1e-5 .. 1e-1} cut to 2: first and last, for both seeds
    assert [(r[1], r[2], r[3]) for r in rows] == [("999", "reg_weight=1e-05", "finished"),
                                                   ("999", "reg_weight=0.1", "finished"),
                                                   ("1", "reg_weight=1e-05", "new"),
                                                   ("1", "reg_weight=0.1", "new")]
    for r in rows[:2]:           # best epoch and valid read back from the finished run
        res = finished[float(r[2].split("=")[1])]
        assert int(r[5]) == res["best_epoch"] and r[6] == f"{res['best_valid']['recall@20']:.4f}"
    assert "4 run(s): 2 finished (reused), 0 running now (another process), 0 partial (resumed), 2 new" in out
    assert "Estimated time left for 2 of them" in out          # BPR has finished runs to estimate from


def test_plan_marks_running_partial_and_teacher_status(demo_root, tmp_path, one_thread):
    opts = {"data_path": demo_root, "checkpoint_dir": str(tmp_path / "saved"), "artifact_dir": str(tmp_path / "art"),
            "epochs": 1, "stopping_step": 1, "device": "cpu", "show_progress": False}
    egra = [("EGRA", "EGRA", {})]
    rows = plan_entries(egra, "demo", [999], opts)
    assert [(r["status"], r["teacher"], r["seconds_left"]) for r in rows] == [("new", "to train (MGCN)", None)]
    text = plan_markdown(rows)
    assert "1 run(s) of models with no finished run here: unknown" in text
    assert "1 stage-1 teacher(s) to train first" in text

    assert main(_args(demo_root, tmp_path, "-m", "EGRA", "--seeds", "999", "--epochs", "1",
                      "--out", str(tmp_path / "t"))) == 0
    rows = plan_entries(egra, "demo", [999], opts)
    assert [(r["status"], r["teacher"]) for r in rows] == [("finished", "stored")]

    bpr = plan_entries([("BPR", "BPR", {})], "demo", [7], opts)
    run_dir = Path(bpr[0]["dir"])
    with run_dir_lock(run_dir):                                  # as a training process holds it
        assert plan_entries([("BPR", "BPR", {})], "demo", [7], opts)[0]["status"] == "running"
    (run_dir / "last.pt").write_bytes(b"")                       # a stopped run: resumed, not retrained
    (run_dir / "history.jsonl").write_text('{"epoch": 0}\n{"epoch": 1}\n')
    again = plan_entries([("BPR", "BPR", {})], "demo", [7], opts)[0]
    assert (again["status"], again["epochs_done"]) == ("partial", 2)
