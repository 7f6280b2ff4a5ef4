"""Experiment fan-out as Ray tasks (mmrec_egra.fanout) on a local 2-CPU cluster: the grid of
main.py and the entries x seeds of compare give exactly the sequential results, and a
rerun reuses every finished run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is optional: pip install 'ray>=2.9' to run the fan-out tests")

from mmrec_egra import compare, fanout  # noqa: E402
from mmrec_egra.runner import run  # noqa: E402

TIMING = {"total_seconds", "seconds_per_epoch", "seconds_per_eval", "wall_seconds", "train_seconds",
          "eval_seconds", "dir"}


def _strip(obj):
    """The summary without wall-clock timings and folder paths (those differ by nature)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _opts(demo_root: str, out: Path) -> dict:
    # threads 1 in both paths: Ray gives each 1-CPU task one thread, and float sums depend on it
    return {"data_path": demo_root, "checkpoint_dir": str(out), "artifact_dir": str(out / "artifacts"),
            "epochs": 2, "seed": [1, 2], "threads": 1, "show_progress": False, "device": "cpu",
            "train_batch_size": 4096, "reg_weight": [1e-4]}


def test_grid_as_ray_tasks_equals_sequential_and_resumes(cluster, demo_root, tmp_path):
    seq = run("BPR", "demo", _opts(demo_root, tmp_path / "seq"))
    par = fanout.run_grid("BPR", "demo", _opts(demo_root, tmp_path / "ray"))
    assert len(par["rows"]) == 2 and [r["combination"]["seed"] for r in par["rows"]] == [1, 2]
    assert _strip(par) == _strip(seq)
    # the same folders (grid values + identity hash) and the gathered summary on disk
    names = lambda root: sorted(p.name for p in (root / "BPR-demo").iterdir() if p.is_dir())
    assert names(tmp_path / "ray") == names(tmp_path / "seq")
    on_disk = json.loads((tmp_path / "ray" / "BPR-demo" / "summary.json").read_text())
    assert _strip(on_disk) == _strip(seq)
    # resumable: a rerun reuses both finished runs (their result files are not rewritten)
    results = sorted((tmp_path / "ray" / "BPR-demo").glob("*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    again = fanout.run_grid("BPR", "demo", _opts(demo_root, tmp_path / "ray"), resume=True)
    assert [p.stat().st_mtime_ns for p in results] == stamps
    assert _strip(again) == _strip(seq)


def test_compare_entries_as_ray_tasks_equal_sequential(cluster, demo_root, tmp_path):
    opts = _opts(demo_root, tmp_path)
    opts.pop("seed")
    entries = [("BPR", "BPR", {}), ("BPR-small", "BPR", {"embedding_size": 16})]   # a model and an arm
    seq = compare.run_entries(entries, "demo", [1, 2], dict(opts, checkpoint_dir=str(tmp_path / "seq")))
    ray_opts = dict(opts, checkpoint_dir=str(tmp_path / "ray"))
    fanout.prerun_entries(entries, "demo", [1, 2], ray_opts)
    assert len(list((tmp_path / "ray").rglob("result.json"))) == 4       # trained by the tasks
    par = compare.run_entries(entries, "demo", [1, 2], ray_opts)
    assert _strip(par) == _strip(seq)
    assert [r["n_seeds"] for r in par] == [2, 2]


def test_task_errors_arrive_with_their_message(cluster, demo_root, tmp_path):
    from mmrec_egra.utils import MMRecError
    with pytest.raises(MMRecError, match="unknown dataset 'nope'"):
        fanout.map_tasks(fanout._one_combination, [("BPR", "nope", _opts(demo_root, tmp_path), False)])


def test_missing_ray_says_what_to_install(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    from mmrec_egra.utils import MMRecError
    with pytest.raises(MMRecError, match=r"pip install 'ray>=2.9'"):
        fanout.require_ray()
