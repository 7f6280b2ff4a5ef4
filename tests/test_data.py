"""Dataset reading, validation of bad input, and the loaders."""
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrec_egra.data import EvalDataLoader, NegativeSampler, TrainDataLoader, load_dataset
from mmrec_egra.runner import make_config
from mmrec_egra.utils import MMRecError


def write_ds(root: Path, name="toy", text=None, feats=None):
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    if text is None:
        text = ("userID\titemID\trating\tx_label\n"
                "0\t0\t5\t0\n0\t1\t5\t0\n1\t1\t4\t0\n1\t2\t4\t0\n2\t0\t1\t0\n"
                "0\t2\t5\t1\n1\t0\t3\t1\n2\t2\t1\t2\n3\t1\t1\t1\n")
    (d / f"{name}.inter").write_text(text)
    for fname, arr in (feats or {}).items():
        np.save(d / fname, arr)
    return str(root) + "/"


def cfg(root, model="LightGCN", **kw):
    base = {"data_path": root, "show_progress": False, "device": "cpu"}
    base.update(kw)
    return make_config(model, "toy", base)


def test_reads_inter_and_filters_cold_users(tmp_path):
    ds = load_dataset(cfg(write_ds(tmp_path)))
    assert (ds.n_users, ds.n_items) == (4, 3)
    assert len(ds.train_users) == 5
    # user 3 has no training rows: its valid row is dropped
    assert sorted(zip(ds.valid_users.tolist(), ds.valid_items.tolist())) == [(0, 2), (1, 0)]
    assert ds.test_users.tolist() == [2]
    m = ds.inter_matrix("coo")
    assert m.shape == (4, 3) and m.nnz == 5 and set(m.data) == {1.0}


def test_three_column_file_and_extra_columns(tmp_path):
    ds = load_dataset(cfg(write_ds(tmp_path, text="userID\titemID\tx_label\n0\t0\t0\n0\t1\t1\n1\t1\t0\n")))
    assert ds.n_users == 2 and len(ds.valid_users) == 1


@pytest.mark.parametrize("text,needle", [
    ("userID\titem\tx_label\n0\t0\t0\n", "missing ['itemID']"),
    ("userID\titemID\n0\t0\n", "missing ['x_label']"),
    ("userID\titemID\tx_label\n0\tabc\t0\n", "line 2: column itemID holds 'abc'"),
    ("userID\titemID\tx_label\n0\t1\t0\n-1\t0\t0\n", "line 3: column userID holds '-1'"),
    ("userID\titemID\tx_label\n0\t1\t0\n\t0\t0\n", "line 3: column userID"),
    ("userID\titemID\tx_label\n0\t1.5\t0\n", "column itemID holds '1.5'"),
    ("userID\titemID\tx_label\n0\t1\t0\n1\t0\t3\n", "line 3: x_label is 3"),
    ("userID\titemID\tx_label\n0\t1\t1\n1\t0\t2\n", "train split is empty"),
])
def test_bad_inter_files(tmp_path, text, needle):
    root = write_ds(tmp_path, text=text)
    with pytest.raises(MMRecError) as e:
        load_dataset(cfg(root))
    assert needle in str(e.value)
    assert "toy.inter" in str(e.value)


def test_missing_inter_file(tmp_path):
    (tmp_path / "toy").mkdir()
    with pytest.raises(MMRecError, match="interaction file not found: .*toy.inter.*--data_path"):
        load_dataset(cfg(str(tmp_path) + "/"))


@pytest.mark.parametrize("arr,needle", [
    (np.zeros((2, 4), np.float32), "has 2 rows; expected 3"),
    (np.zeros((3,), np.float32), "expected a 2-D array"),
    (np.array([[0, 1], [np.nan, 0], [0, 0]], np.float32), "holds nan at row 1, column 0"),
    (np.array([[0, 1], [0, 0], [0, np.inf]], np.float32), "holds inf at row 2, column 1"),
])
def test_bad_feature_files(tmp_path, arr, needle):
    root = write_ds(tmp_path, feats={"image_feat.npy": arr})
    with pytest.raises(MMRecError) as e:
        load_dataset(cfg(root))
    assert needle in str(e.value) and "image_feat.npy" in str(e.value)


def test_named_modalities_and_multimodal_without_features(tmp_path):
    root = write_ds(tmp_path, feats={"audio_feat.npy": np.ones((3, 2), np.float32)})
    ds = load_dataset(cfg(root, modalities={"audio": "audio_feat.npy"}))
    assert list(ds.features) == ["audio"]
    from mmrec_egra.models.base import GeneralRecommender

    class MM(GeneralRecommender):
        is_multimodal = True
    c = cfg(root)  # default modalities: image/text files, which do not exist
    ds2 = load_dataset(c)
    with pytest.raises(MMRecError, match="multimodal model but no feature file was found"):
        MM(c, TrainDataLoader(c, ds2))
    m = MM(cfg(root, modalities={"audio": "audio_feat.npy"}), TrainDataLoader(c, ds))
    assert m.t_feat is not None and m.t_feat.shape == (3, 2)


def test_negative_sampler_rejects_own_items_vectorised():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 100, 2000)
    items = rng.integers(0, 60, 2000)
    s = NegativeSampler(users, items, 60)
    neg = s.sample(users, np.random.default_rng(1))
    own = set(zip(users.tolist(), items.tolist()))
    assert not any((u, n) in own for u, n in zip(users.tolist(), neg.tolist()))
    assert set(neg.tolist()) <= set(items.tolist())


def test_negative_sampler_impossible_user():
    s = NegativeSampler(np.array([0, 0]), np.array([0, 1]), 2)
    with pytest.raises(MMRecError, match="interacted with every training item"):
        s.sample(np.array([0]), np.random.default_rng(0))


def test_train_loader_batches_and_determinism(tmp_path):
    c = cfg(write_ds(tmp_path), train_batch_size=2)
    ds = load_dataset(c)
    dl = TrainDataLoader(c, ds)
    batches = list(dl)
    assert len(batches) == len(dl) == 3
    assert all(b.dtype == torch.int64 and b.shape[0] == 3 for b in batches)
    flat = torch.cat(batches, dim=1)
    assert sorted(zip(flat[0].tolist(), flat[1].tolist())) == sorted(zip(ds.train_users.tolist(), ds.train_items.tolist()))
    dl.set_seed(5); a = dl.epoch_arrays()
    dl.set_seed(5); b = dl.epoch_arrays()
    assert (a == b).all()
    c2 = cfg(write_ds(tmp_path), use_neg_sampling=False)
    assert next(iter(TrainDataLoader(c2, load_dataset(c2)))).shape[0] == 2


def test_eval_loader_masks_training_items(tmp_path):
    c = cfg(write_ds(tmp_path))
    ds = load_dataset(c)
    ev = EvalDataLoader(c, ds, "valid")
    users, (rows, cols) = next(iter(ev))
    assert users.tolist() == [0, 1]
    got = sorted(zip(users[rows].tolist(), cols.tolist()))
    assert got == [(0, 0), (0, 1), (1, 1), (1, 2)]
