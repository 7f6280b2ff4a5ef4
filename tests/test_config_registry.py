"""Config merging (MMRec rules), CLI parsing, grid expansion, registry lookups, CLI errors."""
import subprocess
import sys
from pathlib import Path

import pytest

from mmrec_egra import get_model, list_models, register_model
from mmrec_egra.config import Config, load_yaml, parse_cli_overrides
from mmrec_egra.models.base import GeneralRecommender
from mmrec_egra.runner import make_config
from mmrec_egra.utils import MMRecError

ROOT = Path(__file__).resolve().parents[1]


def make_dir(tmp_path, overall="", dataset="", model=""):
    d = tmp_path / "configs"
    (d / "dataset").mkdir(parents=True)
    (d / "model").mkdir()
    (d / "overall.yaml").write_text("seed: [999]\nhyper_parameters: ['seed']\nlearning_rate: 0.001\n" + overall)
    (d / "dataset" / "ds.yaml").write_text(dataset)
    (d / "model" / "M.yaml").write_text(model)
    return d


def test_merge_order_and_missing_key(tmp_path):
    d = make_dir(tmp_path, overall="a: 1\nb: 1\nc: 1\n", dataset="b: 2\nc: 2\n", model="c: 3\n")
    c = Config("M", "ds", {"c": 4, "config_dir": str(d)})
    assert (c["a"], c["b"], c["c"]) == (1, 2, 4)
    assert c["missing_key"] is None and "a" in c and "missing_key" not in c


def test_scientific_notation_is_float(tmp_path):
    d = make_dir(tmp_path, model="x: 1e-4\ny: 1e-05\nz: [1e-3, 5e-4]\nw: 1E+3\n")
    c = Config("M", "ds", {"config_dir": str(d)})
    assert c["x"] == 1e-4 and isinstance(c["x"], float)
    assert c["y"] == 1e-5 and c["z"] == [1e-3, 5e-4] and c["w"] == 1000.0


def test_hyper_parameters_concatenated_seed_first_and_grid_order(tmp_path):
    d = make_dir(tmp_path, dataset="hyper_parameters: ['a']\na: [1, 2]\n",
                 model="hyper_parameters: ['b']\nb: [x, y, z]\n")
    c = Config("M", "ds", {"config_dir": str(d), "seed": [1, 2]})
    assert c.grid_keys == ["seed", "a", "b"]
    grid = c.grid()
    assert len(grid) == 12
    assert grid[0] == {"seed": 1, "a": 1, "b": "x"} and grid[1] == {"seed": 1, "a": 1, "b": "y"}
    one = c.for_combination(grid[5])
    assert one["b"] == "z" and one["a"] == 2 and c["b"] == ["x", "y", "z"]


def test_scalar_grid_key_in_yaml_is_a_clear_error(tmp_path):
    d = make_dir(tmp_path, model="hyper_parameters: ['reg']\nreg: 0.1\n")
    with pytest.raises(MMRecError, match=r"M.yaml: grid key 'reg' must be a list .*reg: \[0.1\]"):
        Config("M", "ds", {"config_dir": str(d)})


def test_cli_scalar_for_grid_key_is_one_point(tmp_path):
    d = make_dir(tmp_path, model="hyper_parameters: ['reg']\nreg: [0.1, 0.2]\n")
    c = Config("M", "ds", {"config_dir": str(d), "reg": 0.5, "seed": 7})
    assert c.grid() == [{"seed": 7, "reg": 0.5}]


def test_unreadable_yaml(tmp_path):
    d = make_dir(tmp_path, model="a: [1, 2\nb: 3\n")
    with pytest.raises(MMRecError, match=r"invalid YAML in .*M.yaml at line"):
        Config("M", "ds", {"config_dir": str(d)})
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(MMRecError, match="must hold a mapping"):
        load_yaml(p)


def test_cli_parsing():
    o = parse_cli_overrides(["--learning_rate", "1e-3", "--seed", "1", "2", "3", "--device", "cpu",
                             "--flag", "--topk=[10,20]", "--neg", "-1"])
    assert o == {"learning_rate": 1e-3, "seed": [1, 2, 3], "device": "cpu", "flag": True,
                 "topk": [10, 20], "neg": -1}
    with pytest.raises(MMRecError, match="unexpected command-line value"):
        parse_cli_overrides(["stray"])


def test_valid_metric_must_be_computed(tmp_path):
    with pytest.raises(MMRecError, match="valid_metric 'Recall@30' is not computed"):
        make_config("BPR", "demo", {"valid_metric": "Recall@30"})


def test_unknown_dataset_lists_known(tmp_path):
    with pytest.raises(MMRecError, match=r"unknown dataset 'nosuch'.*Known datasets: .*demo.*tiktok"):
        make_config("BPR", "nosuch", {"data_path": str(tmp_path)})


def test_registry_case_insensitive_and_suggestions():
    assert get_model("lightgcn") is get_model("LIGHTGCN") is get_model("LightGCN")
    assert {"BPR", "LightGCN"} <= set(list_models())
    with pytest.raises(MMRecError, match=r"unknown model 'LightGNC'. Did you mean 'LightGCN'\?.*Registered models: .*BPR"):
        get_model("LightGNC")


def test_register_model_decorator_and_conflict():
    @register_model("TmpTestModel", aliases=["TmpAlias"])
    class TmpTestModel(GeneralRecommender):
        pass
    assert get_model("tmpalias") is TmpTestModel and "TmpTestModel" in list_models()
    with pytest.raises(MMRecError, match="already registered"):
        @register_model("TmpTestModel")
        class Other(GeneralRecommender):
            pass


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "main.py", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    r = run_cli("-m", "NoSuchModel", "-d", "demo")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown model 'NoSuchModel'")
    assert "Traceback" not in r.stderr
    r = run_cli("-m", "BPR", "-d", "demo", "--learner", "adamw", "--epochs", "1", "--data_path", str(tmp_path),
                "--checkpoint_dir", str(tmp_path / "s"))
    assert r.returncode == 2 and "unknown optimizer learner: 'adamw'" in r.stderr and "Traceback" not in r.stderr
