"""Rebuilding a finished run from its folder (saved_run) and `mmrec-egra export-items`."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmrec_egra.cli import main as cli_main
from mmrec_egra.runner import run
from mmrec_egra.saved_run import export_run_items, load_run
from mmrec_egra.utils import MMRecError

pytestmark = pytest.mark.usefixtures("one_thread")


def _opts(demo_root, tmp_path, **kw):
    o = {"data_path": demo_root, "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False,
         "device": "cpu", "epochs": 2, "artifact_dir": str(tmp_path / "artifacts"),
         "export_item_embeddings": True}
    o.update(kw)
    return o


@pytest.fixture(scope="module")
def mgcn_run(demo_root, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("mgcn_run")
    summary = run("MGCN", "demo", _opts(demo_root, tmp, cl_loss=0.01))
    return Path(summary["rows"][0]["dir"])


def test_export_equals_the_runs_own_export(mgcn_run, tmp_path):
    # the run wrote item_embeddings.npy from its best-valid weights at the end of training;
    # rebuilding it from config.json + best.pt must give the same vectors bit for bit
    path, emb = export_run_items(mgcn_run, tmp_path / "items.npy")
    own = np.load(mgcn_run / "item_embeddings.npy")
    assert emb.shape == own.shape and emb.dtype == np.float32
    np.testing.assert_array_equal(np.load(path), own)
    model, config, dataset = load_run(mgcn_run)
    assert config["model"] == "MGCN" and config["cl_loss"] == 0.01 and not model.training
    assert config["_best_epoch"] == json.loads((mgcn_run / "result.json").read_text())["result"]["best_epoch"]


def test_cli_export_items(mgcn_run, tmp_path, capsys):
    out = tmp_path / "cli.npy"
    assert cli_main(["export-items", str(mgcn_run), "--out", str(out), "--kind", "behaviour"]) == 0
    assert "--teacher_embeddings_file" in capsys.readouterr().out
    model, _, _ = load_run(mgcn_run)
    assert np.load(out).shape == (model.n_items, 64)
    assert not np.array_equal(np.load(out), np.load(mgcn_run / "item_embeddings.npy"))   # final != behaviour


def test_egra_run_is_rebuilt_with_its_stored_teacher(demo_root, tmp_path):
    summary = run("EGRA", "demo", _opts(demo_root, tmp_path, egra_lambda_max=0.01))
    run_dir = Path(summary["rows"][0]["dir"])
    _, emb = export_run_items(run_dir, tmp_path / "egra.npy")
    np.testing.assert_array_equal(emb, np.load(run_dir / "item_embeddings.npy"))


def test_errors_name_the_problem(mgcn_run, tmp_path, capsys):
    with pytest.raises(MMRecError, match="not a run folder: no config.json"):
        load_run(tmp_path)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(mgcn_run, no_weights)
    (no_weights / "best.pt").unlink()
    with pytest.raises(MMRecError, match="has no best.pt"):
        load_run(no_weights)
    other_data = tmp_path / "other_data"
    shutil.copytree(mgcn_run, other_data)
    cfg = json.loads((other_data / "config.json").read_text())
    cfg["_dataset_fingerprint"] = "0" * 16
    (other_data / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MMRecError, match="differ from those .* was trained on"):
        load_run(other_data)
    with pytest.raises(MMRecError, match="kind must be one of final, behaviour, modality"):
        export_run_items(mgcn_run, tmp_path / "x.npy", kind="items")
    assert not (tmp_path / "x.npy").exists()
    assert cli_main(["export-items", str(tmp_path)]) == 2
    assert "error: " in capsys.readouterr().err
