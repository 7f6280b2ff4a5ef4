"""Every registered model on a GPU: skipped where torch sees no CUDA device (CI, the CPU
development machines). On a machine with one, `python -m pytest -q tests/test_cuda.py` is the
CUDA check of the whole zoo (three demo epochs per model, on the GPU and on the CPU)."""
from __future__ import annotations

import math

import pytest
import torch

from mmrec_egra.registry import list_models
from mmrec_egra.runner import run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device visible to torch: the GPU checks run only on a machine with one")

MODELS = [m for m in list_models() if not m.startswith("_")]


def train_demo(name: str, demo_root: str, work, device: str) -> dict:
    """Three epochs of `name` on demo (default configuration, seed 999) on `device`; its result."""
    opts = {"data_path": demo_root, "checkpoint_dir": str(work / device / "saved"),
            "artifact_dir": str(work / device / "artifacts"), "show_progress": False, "device": device,
            "epochs": 3, "grid": "first", "seed": 999, "stopping_step": 10}
    return run(name, "demo", opts)["rows"][0]["result"]


@pytest.mark.parametrize("name", MODELS)
def test_model_trains_on_cuda_as_on_cpu(name, demo_root, tmp_path):
    """The run finishes on the GPU (memory was allocated there), its metrics are finite and lie
    near the CPU run's: the devices draw different random streams and reduce in another order,
    so the two runs agree loosely (0.05 absolute or 15%), not bit for bit. That the metrics beat
    a random ranker is each model's own CPU test."""
    torch.cuda.reset_peak_memory_stats()
    gpu = train_demo(name, demo_root, tmp_path, "cuda")
    assert torch.cuda.max_memory_allocated() > 0, f"{name}: nothing was allocated on the GPU"
    cpu = train_demo(name, demo_root, tmp_path, "cpu")
    for key in ("recall@20", "ndcg@20"):
        g, c = gpu["best_test"][key], cpu["best_test"][key]
        assert math.isfinite(g), (name, key, g)
        assert abs(g - c) <= max(0.05, 0.15 * c), f"{name}: test {key} {g:.4f} on cuda vs {c:.4f} on cpu"
