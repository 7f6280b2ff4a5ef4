"""Fault injection: every failure is one clear MMRecError line, or correct behaviour, and nothing is lost.

Classes covered: unsafe/truncated checkpoints, a damaged LMDB store, run-folder identity
and locking, config type/range/unknown keys, unreadable data files, a full disk, orphan
temp files after a kill, an empty test split, huge ids.
"""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrec_egra import utils
from mmrec_egra.artifacts import check_lmdb_file, open_store
from mmrec_egra.cli import main_run
from mmrec_egra.config import Config
from mmrec_egra.runner import make_config, resume_plan, run, run_dir_lock
from mmrec_egra.trainer import build_optimizer
from mmrec_egra.utils import MMRecError, atomic_write, clean_stale_temps, torch_load_safe

REPO = Path(__file__).resolve().parents[1]


def opts(data_root, tmp_path, **kw):
    o = {"data_path": str(data_root), "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False,
         "device": "cpu", "epochs": 2, "learning_rate": 0.01, "topk": [10, 20], "reg_weight": 1e-4,
         "artifact_dir": str(tmp_path / "artifacts")}
    o.update(kw)
    return o


@pytest.fixture
def data_copy(demo_root, tmp_path):
    """A private copy of the demo dataset (tests edit its files); returns the data_path."""
    root = tmp_path / "data"
    shutil.copytree(Path(demo_root) / "demo", root / "demo", ignore=shutil.ignore_patterns(".artifacts"))
    return root


def _inter(root: Path) -> Path:
    return root / "demo" / "demo.inter"


def _combo_dirs(tmp_path, model="BPR"):
    return sorted(p for p in (tmp_path / "saved" / f"{model}-demo").iterdir() if p.is_dir())


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---- 1. checkpoints: weights_only, crafted and truncated files ---------------------------------

class _Evil:
    """Unpickling it would create a folder: stands for arbitrary code in a crafted checkpoint."""
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_checkpoints_load_with_weights_only(demo_root, tmp_path):
    run("BPR", "demo", opts(demo_root, tmp_path))
    d = _combo_dirs(tmp_path)[0]
    for name in ("last.pt", "best.pt"):
        state = torch.load(d / name, map_location="cpu", weights_only=True)   # raises if anything unsafe
        assert "model" in state
    assert isinstance(torch.load(d / "last.pt", weights_only=True)["np_rng"], str)


def test_crafted_checkpoint_is_refused_and_never_executed(demo_root, tmp_path, capsys):
    o = opts(demo_root, tmp_path)
    run("BPR", "demo", o)
    d = _combo_dirs(tmp_path)[0]
    (d / "result.json").unlink()                      # as if interrupted: --resume will read last.pt
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "x": _Evil(str(marker))}, d / "last.pt")
    args = ["-m", "BPR", "-d", "demo", "--resume"] + [t for k, v in o.items() for t in (f"--{k}", json.dumps(v)
                                                                                      if not isinstance(v, str) else v)]
    assert main_run(args) == 2
    line = _error_line(capsys)
    assert "refusing to load" in line and "last.pt" in line
    assert not marker.exists()
    with pytest.raises(MMRecError, match="refusing"):
        torch_load_safe(d / "last.pt")
    assert not marker.exists()


def test_truncated_last_checkpoint_restarts_the_combination(demo_root, tmp_path, caplog):
    full = run("BPR", "demo", opts(demo_root, tmp_path / "a"))
    run("BPR", "demo", opts(demo_root, tmp_path / "b"))
    d = _combo_dirs(tmp_path / "b")[0]
    (d / "result.json").unlink()
    data = (d / "last.pt").read_bytes()
    (d / "last.pt").write_bytes(data[: len(data) // 2])
    resumed = run("BPR", "demo", opts(demo_root, tmp_path / "b"), resume=True)
    assert "truncated" in caplog.text and (d / "last.pt.damaged").is_file()
    assert resumed["best"]["result"]["best_test"] == full["best"]["result"]["best_test"]


def test_truncated_best_checkpoint_is_one_clear_error(demo_root, tmp_path):
    run("BPR", "demo", opts(demo_root, tmp_path))
    best = _combo_dirs(tmp_path)[0] / "best.pt"
    best.write_bytes(best.read_bytes()[:100])
    with pytest.raises(MMRecError, match=r"best\.pt is truncated or not a torch checkpoint.*Delete it"):
        torch_load_safe(best)


# ---- 2. artifact store (LMDB) -------------------------------------------------------------------

def _filled_store(path: Path):
    store = open_store(path)
    for i in range(8):
        store.put(f"graph/k{i}", {"a": np.arange(30000, dtype=np.float64) + i})
    store.close()


def test_truncated_lmdb_is_detected_and_moved_aside(tmp_path, caplog):
    store_dir = tmp_path / "store"
    _filled_store(store_dir)
    assert check_lmdb_file(store_dir) is None
    mdb = store_dir / "data.mdb"
    os.truncate(mdb, mdb.stat().st_size // 3)
    assert "truncated" in check_lmdb_file(store_dir)
    store = open_store(store_dir)                     # would die with SIGBUS without the check
    assert store.list() == [] and store.get("graph/k1") is None
    store.put("graph/new", {"a": np.ones(3)})
    assert store.get("graph/new")[0]["a"].tolist() == [1.0, 1.0, 1.0]
    store.close()
    moved = list(tmp_path.glob("store.damaged-*"))
    assert len(moved) == 1 and (moved[0] / "data.mdb").is_file()
    assert "is damaged" in caplog.text and "moved it to" in caplog.text


def test_garbage_lmdb_file_is_moved_aside(tmp_path, capsys):
    d = tmp_path / "store"
    d.mkdir()
    (d / "data.mdb").write_bytes(b"not an lmdb file" * 1000)
    assert "not an LMDB file" in check_lmdb_file(d)
    from mmrec_egra.cli import main_artifacts
    assert main_artifacts(["clear", "-d", "demo", "--artifact_dir", str(d)]) == 0
    assert "removed 0 entries" in capsys.readouterr().out
    assert list(tmp_path.glob("store.damaged-*"))


def test_artifacts_cli_survives_a_truncated_store(tmp_path):
    """In a subprocess: a regression would kill the interpreter with a bus error."""
    store_dir = tmp_path / "store"
    _filled_store(store_dir)
    mdb = store_dir / "data.mdb"
    os.truncate(mdb, mdb.stat().st_size // 2)
    r = subprocess.run([sys.executable, "-m", "mmrec_egra.cli", "artifacts", "list", "-d", "demo",
                        "--artifact_dir", str(store_dir)], capture_output=True, text=True, timeout=300,
                       cwd=str(REPO))
    assert r.returncode == 0, r.stderr
    assert "0 entries" in r.stdout and "is damaged" in r.stdout + r.stderr
    assert len(list(tmp_path.glob("store.damaged-*"))) == 1


# ---- 3. run folders: identity, dataset changes, locks ---------------------------------------------

def test_runs_differing_in_a_non_grid_key_never_share_a_folder(demo_root, tmp_path):
    a = run("BPR", "demo", opts(demo_root, tmp_path, learning_rate=0.01))
    b = run("BPR", "demo", opts(demo_root, tmp_path, learning_rate=0.05))
    da, db = Path(a["rows"][0]["dir"]), Path(b["rows"][0]["dir"])
    assert da != db and da.name.startswith("seed=999_reg_weight=0.0001-") and db.name.startswith("seed=999_reg")
    for d, lr in ((da, 0.01), (db, 0.05)):
        cfg = json.loads((d / "config.json").read_text())
        res = json.loads((d / "result.json").read_text())
        assert cfg["learning_rate"] == lr and res["config_key"] == cfg["_combo_key"]
        assert torch.load(d / "best.pt", weights_only=True)["config_key"] == cfg["_combo_key"]
    # --resume finds each run's own result, not the other's
    again = run("BPR", "demo", opts(demo_root, tmp_path, learning_rate=0.05), resume=True)
    assert again["rows"][0]["result"] == b["rows"][0]["result"]


def test_resume_recognises_a_changed_dataset(data_copy, tmp_path, caplog):
    o = opts(data_copy, tmp_path)
    first = run("BPR", "demo", o)
    lines = _inter(data_copy).read_text().splitlines()
    _inter(data_copy).write_text("\n".join(lines[:-200]) + "\n")      # the dataset changed
    second = run("BPR", "demo", o, resume=True)
    assert "dataset files changed" in caplog.text and "already finished" not in caplog.text
    assert second["rows"][0]["dir"] != first["rows"][0]["dir"]
    assert second["rows"][0]["dataset_fingerprint"] != first["rows"][0]["dataset_fingerprint"]
    assert len(_combo_dirs(tmp_path)) == 2


def test_checkpoint_of_other_dataset_files_is_not_resumed(make_env, tmp_path, caplog):
    from mmrec_egra.models.bpr import BPR
    from mmrec_egra.trainer import Trainer
    config, ds, loaders = make_env("BPR", epochs=1)
    config["_dataset_fingerprint"] = "old"
    t = Trainer(config, BPR(config, loaders[0]), tmp_path / "run")
    t.fit(*loaders)
    config["_dataset_fingerprint"] = "new"
    t2 = Trainer(config, BPR(config, loaders[0]), tmp_path / "run")
    assert t2.resume_from(tmp_path / "run" / "last.pt", loaders[0]) is False
    assert "the dataset changed" in caplog.text


def test_checkpoint_past_the_epoch_budget_is_not_resumed(make_env, tmp_path, caplog):
    from mmrec_egra.models.bpr import BPR
    from mmrec_egra.trainer import Trainer
    config, ds, loaders = make_env("BPR", epochs=2)
    Trainer(config, BPR(config, loaders[0]), tmp_path / "run").fit(*loaders)
    config["epochs"] = 1
    t = Trainer(config, BPR(config, loaders[0]), tmp_path / "run")
    assert t.resume_from(tmp_path / "run" / "last.pt", loaders[0]) is False
    assert "past this run's budget" in caplog.text


def test_concurrent_run_on_the_same_folder_is_refused(demo_root, tmp_path):
    s = run("BPR", "demo", opts(demo_root, tmp_path))
    d = Path(s["rows"][0]["dir"])
    with run_dir_lock(d):                               # another process holds the combination
        with pytest.raises(MMRecError, match="is in use by pid"):
            run("BPR", "demo", opts(demo_root, tmp_path))
    assert (d / "result.json").is_file()                # nothing of the first run was lost


def test_fresh_run_clears_stale_outputs_and_damaged_result_is_retrained(demo_root, tmp_path, caplog):
    s = run("BPR", "demo", opts(demo_root, tmp_path))
    d = Path(s["rows"][0]["dir"])
    (d / "topk.tsv").write_text("stale")                # from an earlier attempt of this configuration
    run("BPR", "demo", opts(demo_root, tmp_path))
    assert not (d / "topk.tsv").exists()
    (d / "result.json").write_text('{"result": ')        # damaged
    again = run("BPR", "demo", opts(demo_root, tmp_path), resume=True)
    assert (d / "result.json.damaged").is_file() and "unreadable" in caplog.text
    assert again["rows"][0]["result"]["best_test"] == s["rows"][0]["result"]["best_test"]


def test_resume_plan():
    row = lambda **r: {"config_key": "k", "epochs": 10, "result": dict({"epochs_run": 10, "status": "finished"}, **r)}
    assert resume_plan(None, "k", 10) == "fresh"
    assert resume_plan(row(), "other", 10) == "fresh"
    assert resume_plan(row(), "k", 10) == "reuse"
    assert resume_plan(row(), "k", 20) == "continue"              # budget grew after running it out
    assert resume_plan(row(epochs_run=6), "k", 20) == "reuse"      # early-stopped: same result
    assert resume_plan(row(epochs_run=6), "k", 8) == "reuse"
    assert resume_plan(row(), "k", 5) == "fresh"                  # smaller budget: best may differ


def test_resume_with_a_larger_budget_continues(demo_root, tmp_path, caplog):
    full = run("BPR", "demo", opts(demo_root, tmp_path / "full", epochs=4))
    run("BPR", "demo", opts(demo_root, tmp_path / "part", epochs=2))
    more = run("BPR", "demo", opts(demo_root, tmp_path / "part", epochs=4), resume=True)
    assert "continuing from" in caplog.text
    assert more["best"]["result"]["epochs_run"] == 4
    assert more["best"]["result"]["best_test"] == pytest.approx(full["best"]["result"]["best_test"], abs=1e-6)


# ---- 4. config values and unknown keys ---------------------------------------------------------------

@pytest.mark.parametrize("key,value,expect", [
    ("learning_rate", 0, "must be > 0"),
    ("learning_rate", float("nan"), "finite"),
    ("learning_rate", "fast", "expected a number"),
    ("epochs", 0, "must be >= 1"),
    ("epochs", "abc", "expected an integer"),
    ("epochs", 2.5, "expected an integer"),
    ("train_batch_size", -1, "must be >= 1"),
    ("eval_batch_size", 0, "must be >= 1"),
    ("embedding_size", 0, "must be >= 1"),
    ("knn_k", 0, "must be >= 1"),
    ("topk", [0, 10], "must be >= 1"),
    ("weight_decay", -0.1, "must be >= 0"),
    ("seed", -1, "must be >= 0"),
    ("stopping_step", -1, "must be >= 0"),
    ("dropout", 1.0, "< 1"),
    ("device", "gpu0", "expected auto, cpu, cuda"),
    ("deterministic", "yes", "expected true or false"),
    ("show_progress", "maybe", "expected auto, true or false"),
    ("grid", "some", "expected full or first"),
    ("learner", "lamb", "unknown optimizer learner"),
    ("learning_rate_scheduler", [1.0], "expected \\[a, b\\]"),
    ("eval_step", [1, 2], "not a grid key"),
])
def test_bad_values_are_one_clear_error(demo_root, key, value, expect):
    with pytest.raises(MMRecError, match=expect) as info:
        make_config("BPR", "demo", {"data_path": demo_root, key: value})
    assert f"--{key}" in str(info.value) and "command line" in str(info.value)


def test_bad_value_in_a_yaml_names_the_file(tmp_path):
    cfg_dir = tmp_path / "configs"
    shutil.copytree(REPO / "configs", cfg_dir)
    text = (cfg_dir / "overall.yaml").read_text().replace("epochs: 1000", "epochs: -5")
    (cfg_dir / "overall.yaml").write_text(text)
    with pytest.raises(MMRecError, match=r"overall\.yaml: 'epochs' is -5; it must be >= 1"):
        Config("BPR", "demo", {}, config_dir=cfg_dir)


def test_zero_is_a_value_not_a_missing_key(demo_root):
    c = make_config("BPR", "demo", {"data_path": demo_root, "weight_decay": 0, "stopping_step": 0,
                                    "epochs": 1e1, "seed": 3.0})
    assert c["weight_decay"] == 0.0 and c["stopping_step"] == 0
    assert c["epochs"] == 10 and isinstance(c["epochs"], int) and c["seed"] == [3]
    p = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer({"learner": "sgd", "learning_rate": 0.0, "weight_decay": 0.0}, p)
    assert opt.param_groups[0]["lr"] == 0.0                        # was silently 0.001


def test_unknown_key_is_an_error_with_a_suggestion(demo_root, capsys):
    with pytest.raises(MMRecError, match="unknown config key 'learnign_rate'.*did you mean --learning_rate"):
        make_config("BPR", "demo", {"data_path": demo_root, "learnign_rate": 0.1})
    assert main_run(["-m", "BPR", "-d", "demo", "--data_path", demo_root, "--epoch", "3"]) == 2
    assert "did you mean --epochs" in _error_line(capsys)
    with pytest.raises(MMRecError, match="unknown config key 'zzqqxx'"):
        make_config("BPR", "demo", {"data_path": demo_root, "zzqqxx": 1})


def test_empty_metric_lists_and_teacher_config_typos_are_errors(demo_root):
    for key in ("metrics", "topk"):
        with pytest.raises(MMRecError, match=f"'{key}' is an empty list; give at least one value"):
            make_config("BPR", "demo", {"data_path": demo_root, key: []})
    from mmrec_egra.pipeline import teacher_config_for
    cfg = make_config("EGRA", "demo", {"data_path": demo_root, "teacher_config": {"cl_los": 0.01}})
    cfg = cfg.for_combination(cfg.grid()[0])
    with pytest.raises(MMRecError, match=r"unknown config key 'cl_los' \(inside teacher_config\); did you mean cl_loss"):
        teacher_config_for(cfg)
    cfg["teacher_config"] = {"cl_loss": 0.01}
    assert teacher_config_for(cfg)["cl_loss"] == 0.01


def test_keys_of_any_model_yaml_and_host_keys_are_known(demo_root):
    # egra_beta is only in EGRA.yaml; a run of another model may still set it (e.g. in a sweep script)
    c = make_config("BPR", "demo", {"data_path": demo_root, "egra_beta": 0.5, "teacher_seed": 1})
    assert c["egra_beta"] == 0.5


def test_a_model_can_declare_extra_keys(demo_root):
    from mmrec_egra.models.bpr import BPR
    from mmrec_egra.registry import register_model

    @register_model("_DeclaresKeyForTest")
    class _Declares(BPR):
        config_keys = ("my_knob",)

    assert make_config("_DeclaresKeyForTest", "demo", {"data_path": demo_root, "my_knob": 3})["my_knob"] == 3
    with pytest.raises(MMRecError, match="unknown config key 'my_knob'"):
        make_config("BPR", "demo", {"data_path": demo_root, "my_knob": 3})


# ---- 5. files --------------------------------------------------------------------------------------

def _load_error(data_root) -> str:
    from mmrec_egra.data import load_dataset
    cfg = make_config("BPR", "demo", {"data_path": str(data_root)})
    with pytest.raises(MMRecError) as info:
        load_dataset(cfg)
    return str(info.value)


def test_stray_quote_in_inter_file(data_copy):
    lines = _inter(data_copy).read_text().splitlines()
    lines[5] = '"' + lines[5]
    _inter(data_copy).write_text("\n".join(lines) + "\n")
    msg = _load_error(data_copy)
    assert "demo.inter" in msg and ("line 6" in msg) and "quote" in msg


def test_undecodable_bytes_in_inter_file(data_copy):
    data = _inter(data_copy).read_bytes().split(b"\n")
    data[7] = data[7] + b"\xff\xfe"
    _inter(data_copy).write_bytes(b"\n".join(data))
    msg = _load_error(data_copy)
    assert "demo.inter, line 8" in msg and "UTF-8" in msg


def test_npz_under_npy_name(data_copy):
    feat = data_copy / "demo" / "image_feat.npy"
    arr = np.load(feat)
    with open(feat, "wb") as fh:
        np.savez(fh, feats=arr)
    msg = _load_error(data_copy)
    assert "image_feat.npy" in msg and ".npz archive" in msg and "feats" in msg


def test_truncated_npy(data_copy):
    feat = data_copy / "demo" / "text_feat.npy"
    feat.write_bytes(feat.read_bytes()[:1000])
    msg = _load_error(data_copy)
    assert "text_feat.npy" in msg and "truncated" in msg


def test_disk_full_is_one_error_naming_the_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def writer(fh):
        fh.write("partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(MMRecError, match=r"no space left while writing .*out\.json.*free disk space"):
        atomic_write(target, writer)
    assert target.read_text() == "old"                             # nothing lost
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]      # no temp file left


def test_disk_full_during_training_via_cli(demo_root, tmp_path, monkeypatch, capsys):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(utils.os, "fsync", full)
    o = opts(demo_root, tmp_path)
    args = ["-m", "BPR", "-d", "demo"] + [t for k, v in o.items() for t in (f"--{k}", json.dumps(v)
                                                                         if not isinstance(v, str) else v)]
    assert main_run(args) == 2
    line = _error_line(capsys)
    assert "no space left while writing" in line and "free disk space" in line


def test_orphan_temp_files_are_removed_on_the_next_run(demo_root, tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = p.pid
    root = tmp_path / "saved" / "BPR-demo" / "somecombo"
    root.mkdir(parents=True)
    orphan = root / f"last.pt.tmp-{dead}-0"
    live = root / f"history.json.tmp-{os.getpid()}-99"
    orphan.write_bytes(b"half")
    live.write_bytes(b"being written")
    run("BPR", "demo", opts(demo_root, tmp_path))
    assert not orphan.exists() and live.exists()
    assert clean_stale_temps(tmp_path / "nothing-here") == 0


def test_killed_write_leaves_the_old_file(tmp_path):
    """A kill -9 in the middle of a write (simulated in a child process) never damages the target."""
    target = tmp_path / "result.json"
    target.write_text('{"ok": 1}')
    code = ("import os, sys; from mmrec_egra.utils import atomic_write\n"
            "def w(fh):\n    fh.write('{\"half'); fh.flush(); os.kill(os.getpid(), 9)\n"
            f"atomic_write({str(target)!r}, w)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), timeout=120)
    assert r.returncode == -9
    assert json.loads(target.read_text()) == {"ok": 1}
    assert clean_stale_temps(tmp_path) == 1 and [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_empty_test_split_reports_no_test_metrics(data_copy, tmp_path, caplog):
    lines = _inter(data_copy).read_text().splitlines()
    kept = [lines[0]] + [ln for ln in lines[1:] if not ln.endswith("\t2")]
    assert len(kept) < len(lines)
    _inter(data_copy).write_text("\n".join(kept) + "\n")
    s = run("BPR", "demo", opts(data_copy, tmp_path))
    res = s["best"]["result"]
    assert res["best_test"] == {} and res["test_measured"] is False and res["best_valid"]["recall@20"] > 0
    assert "test split has no rows" in caplog.text
    md = (tmp_path / "saved" / "BPR-demo" / "summary.md").read_text()
    assert "nan" in md and "0.0000 |" not in md.split("\n")[-2].split("|", 6)[-1]


# ---- 6. huge ids -----------------------------------------------------------------------------------

def test_huge_id_is_caught_before_allocating(data_copy):
    lines = _inter(data_copy).read_text().splitlines()
    cols = lines[10].split("\t")
    cols[1] = str(10 ** 9)
    lines[10] = "\t".join(cols)
    _inter(data_copy).write_text("\n".join(lines) + "\n")
    msg = _load_error(data_copy)
    assert "line 11" in msg and "itemID 1000000000" in msg and "remap_ids" in msg


def test_remap_ids_renumbers_users(data_copy):
    from mmrec_egra.data import load_dataset
    lines = _inter(data_copy).read_text().splitlines()
    cols = lines[10].split("\t")
    n_users_before = max(int(ln.split("\t")[0]) for ln in lines[1:]) + 1
    cols[0] = str(10 ** 9)                                         # one user gets a huge id
    lines[10] = "\t".join(cols)
    _inter(data_copy).write_text("\n".join(lines) + "\n")
    ds = load_dataset(make_config("BPR", "demo", {"data_path": str(data_copy), "remap_ids": True}))
    assert ds.n_users <= n_users_before + 1 and ds.train_users.max() < ds.n_users
    assert ds.features["image"].shape[0] == ds.n_items
