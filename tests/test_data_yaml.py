"""A dataset yaml beside the data, and feature files named in a yaml that must exist."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mmrec_egra.config import default_config_dir
from mmrec_egra.data import load_dataset
from mmrec_egra.runner import make_config
from mmrec_egra.utils import MMRecError

INTER = ("userID\titemID\tx_label\n0\t0\t0\n0\t1\t0\n1\t1\t0\n1\t2\t0\n2\t0\t0\n"
         "0\t2\t1\n1\t0\t1\n2\t2\t2\n")


def write_data(root: Path, name: str, yaml_text: str = None, feats=()) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.inter").write_text(INTER)
    for fname in feats:
        np.save(d / fname, np.arange(6, dtype=np.float32).reshape(3, 2))
    if yaml_text is not None:
        (d / f"{name}.yaml").write_text(yaml_text)
    return d


def cfg(root, name, model="LightGCN", **kw):
    opts = {"data_path": str(root) + "/", "device": "cpu", "show_progress": False}
    opts.update(kw)
    return make_config(model, name, opts)


def test_yaml_beside_the_data_is_read_when_configs_has_none(tmp_path):
    d = write_data(tmp_path, "shop", "modalities:\n  audio: audio_feat.npy\ntrain_batch_size: 512\n",
                   feats=["audio_feat.npy", "image_feat.npy"])
    c = cfg(tmp_path, "shop")
    assert c.dataset_config_found and str(d / "shop.yaml") in c.sources
    assert c["train_batch_size"] == 512
    ds = load_dataset(c)
    assert list(ds.features) == ["audio"]               # the yaml's modalities, not the default names
    assert ds.features["audio"].shape == (3, 2)


def test_yaml_beside_the_data_found_through_a_relative_data_path(tmp_path, monkeypatch):
    write_data(tmp_path / "mydata", "shop", "modalities: {audio: audio_feat.npy}\n", feats=["audio_feat.npy"])
    monkeypatch.chdir(tmp_path)
    c = make_config("LightGCN", "shop", {"data_path": "mydata/", "device": "cpu"})
    assert list(load_dataset(c).features) == ["audio"]


def test_configs_yaml_wins_over_the_data_yaml(tmp_path):
    conf = tmp_path / "configs"
    shutil.copytree(default_config_dir(), conf)
    (conf / "dataset" / "shop.yaml").write_text("modalities: {image: image_feat.npy}\n")
    data = tmp_path / "data"
    write_data(data, "shop", "modalities: {audio: audio_feat.npy}\n", feats=["audio_feat.npy", "image_feat.npy"])
    c = cfg(data, "shop", config_dir=str(conf))
    assert str(conf / "dataset" / "shop.yaml") in c.sources
    assert not any(s.endswith("data/shop/shop.yaml") for s in c.sources)
    assert list(load_dataset(c).features) == ["image"]


def test_missing_file_named_in_the_data_yaml_is_an_error(tmp_path):
    d = write_data(tmp_path, "shop", "modalities:\n  image: image_feat.npy\n  text: text_feat.npy\n",
                   feats=["image_feat.npy"])
    with pytest.raises(MMRecError) as e:
        load_dataset(cfg(tmp_path, "shop"))
    msg = str(e.value)
    assert f"feature file {d / 'text_feat.npy'} of modality 'text' does not exist" in msg
    assert f"{d / 'shop.yaml'} names it (text_feat.npy)" in msg


def test_missing_file_named_by_a_configs_yaml_or_the_command_line(tmp_path):
    conf = tmp_path / "configs"
    shutil.copytree(default_config_dir(), conf)
    (conf / "dataset" / "shop.yaml").write_text("vision_feature_file: pics.npy\n")
    write_data(tmp_path / "data", "shop")
    with pytest.raises(MMRecError, match=r"pics.npy of modality 'image' does not exist, but .*configs/dataset/shop"
                                         r"\.yaml names it"):
        load_dataset(cfg(tmp_path / "data", "shop", config_dir=str(conf)))
    write_data(tmp_path, "toy")
    with pytest.raises(MMRecError, match="modality 'audio' does not exist, but command line names it"):
        load_dataset(cfg(tmp_path, "toy", modalities={"audio": "audio_feat.npy"}))


def test_default_feature_names_are_read_only_when_present(tmp_path):
    write_data(tmp_path, "toy")                               # no yaml, no feature file
    assert list(load_dataset(cfg(tmp_path, "toy")).features) == []
    write_data(tmp_path, "toy2", feats=["text_feat.npy"])
    assert list(load_dataset(cfg(tmp_path, "toy2")).features) == ["text"]


def test_amazon_yamls_load_interactions_without_feature_files(tmp_path):
    # configs/dataset/baby.yaml must not claim feature files: the shared baby data has none
    write_data(tmp_path, "baby")
    ds = load_dataset(cfg(tmp_path, "baby"))
    assert list(ds.features) == [] and ds.n_items == 3
