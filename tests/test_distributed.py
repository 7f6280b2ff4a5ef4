"""Data-parallel training (mmrec_egra.distributed): 2 gloo CPU processes against one process
with the same global batch, same data and seed, on the demo dataset.

Tolerances (README "Many runs and many machines"): per-epoch training loss within 1e-4
relative, and every valid/test metric at every evaluated epoch within 0.005 absolute,
for LightGCN and FREEDOM (multimodal, sparse item-graph ops, edges pruned each epoch):
their losses are per-row means plus batch-independent terms, so the summed sharded
gradient is the single-process gradient up to float summation order.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrec_egra import distributed, runner
from mmrec_egra.utils import MMRecError

LOSS_RTOL = 1e-4
METRIC_ATOL = 0.005
JOBS = [("LightGCN", {"n_layers": [2], "reg_weight": [1e-4]}), ("FREEDOM", {"dropout": [0.8], "reg_weight": [1e-4]})]


def _common(demo_root: str, out: Path) -> dict:
    return {"data_path": demo_root, "checkpoint_dir": str(out), "artifact_dir": str(out / "artifacts"),
            "epochs": 3, "train_batch_size": 4096, "threads": 1, "show_progress": False, "device": "cpu",
            "topk": [10, 20], "metrics": ["Recall", "NDCG"]}


def _ddp_worker(rank: int, world: int, port: int, demo_root: str, out: str) -> None:
    """One torchrun-like rank: the environment torchrun would set, then the jobs in one group."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init_from_env("cpu")
    try:
        for model, over in JOBS:
            runner.run_distributed(model, "demo", dict(_common(demo_root, Path(out)), **over))
    finally:
        distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _history(root: Path, model: str) -> list:
    files = list((root / f"{model}-demo").glob("*/history.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


@pytest.fixture(scope="module")
def runs(demo_root, tmp_path_factory):
    """(single-process output root, 2-process output root) after training every job in both."""
    from mmrec_egra.runner import run
    base = tmp_path_factory.mktemp("ddp")
    single, multi = base / "single", base / "multi"
    for model, over in JOBS:
        run(model, "demo", dict(_common(demo_root, single), **over))
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), demo_root, str(multi)), nprocs=2, join=True)
    return single, multi


@pytest.mark.parametrize("model", [m for m, _ in JOBS])
def test_two_processes_match_one_with_the_same_global_batch(runs, model):
    single, multi = runs
    h1, h2 = _history(single, model), _history(multi, model)
    assert [r["epoch"] for r in h1] == [r["epoch"] for r in h2] == [0, 1, 2]
    l1, l2 = np.array([r["loss"] for r in h1]), np.array([r["loss"] for r in h2])
    np.testing.assert_allclose(l2, l1, rtol=LOSS_RTOL)
    assert l1[-1] < l1[0]                       # it trained
    for a, b in zip(h1, h2):
        for split in ("valid", "test"):
            assert set(a[split]) == set(b[split])
            for k in a[split]:
                assert abs(a[split][k] - b[split][k]) <= METRIC_ATOL, (model, a["epoch"], split, k)


def test_only_rank_zero_writes(runs):
    _, multi = runs
    # one folder per model, written once: no second rank's files or summaries
    for model, _ in JOBS:
        dirs = [d for d in (multi / f"{model}-demo").iterdir() if d.is_dir()]
        assert len(dirs) == 1 and (dirs[0] / "result.json").is_file()
        summary = json.loads((multi / f"{model}-demo" / "summary.json").read_text())
        assert len(summary["rows"]) == 1


def test_shard_covers_the_batch_with_weights_summing_to_one():
    batch = torch.arange(21).reshape(3, 7)
    parts = [distributed.DistContext(r, 3, r, torch.device("cpu"), "gloo").shard(batch) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts], dim=1), batch)
    assert [p[0].shape[1] for p in parts] == [3, 2, 2]
    assert sum(p[1] for p in parts) == pytest.approx(1.0)
    # fewer rows than ranks: the empty rank computes one row with weight 0
    small = distributed.DistContext(2, 3, 2, torch.device("cpu"), "gloo").shard(batch[:, :2])
    assert small[0].shape[1] == 1 and small[1] == 0.0


def test_without_torchrun_environment_says_how_to_launch(monkeypatch):
    for var in distributed.TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(MMRecError, match="torchrun --standalone --nproc_per_node"):
        distributed.init_from_env("cpu")
