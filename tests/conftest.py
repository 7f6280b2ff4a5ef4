"""Shared fixtures: the demo dataset generated once per session in a temp folder."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmrec_egra.data.demo import generate_demo

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> str:
    """A data_path whose demo/ folder holds the generated demo dataset."""
    root = tmp_path_factory.mktemp("data")
    generate_demo(root / "demo")
    return str(root) + "/"


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored after: small problems gain nothing from two, and
    on a loaded machine OpenMP threads spinning at barriers make them several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_env(demo_root, tmp_path):
    """make_env(model, **overrides) -> (config, dataset, (train, valid, test)) on the demo data."""
    from mmrec_egra.data import build_loaders, load_dataset
    from mmrec_egra.runner import make_config

    def _make(model: str, **overrides):
        base = {"data_path": demo_root, "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False,
                "device": "cpu", "artifact_dir": str(tmp_path / "artifacts")}
        base.update(overrides)
        config = make_config(model, "demo", base)
        combo = config.grid()[0]
        config = config.for_combination(combo)
        config["_combo_key"] = "test"
        ds = load_dataset(config)
        return config, ds, build_loaders(config, ds)
    return _make


def shared_data_or_skip(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real dataset {path} is absent (needs ../shared/data next to the project)")
    return path
