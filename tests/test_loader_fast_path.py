"""The .inter loader's integer fast path (issue #13): same arrays as the text path, same errors."""
from __future__ import annotations

import numpy as np
import pytest

from mmrec_egra.data import dataset as dataset_mod
from mmrec_egra.data import load_dataset
from mmrec_egra.runner import make_config
from mmrec_egra.utils import MMRecError


def _load(root: str, name: str = "demo", **kw):
    return load_dataset(make_config("LightGCN", name, {"data_path": root, "show_progress": False, "device": "cpu",
                                                      **kw}))


def _text_path_only(monkeypatch):
    monkeypatch.setattr(dataset_mod, "_read_int_table", lambda *a, **k: None)


def _same(a, b):
    assert (a.n_users, a.n_items) == (b.n_users, b.n_items)
    assert a.n_filtered == b.n_filtered
    for split in ("train", "valid", "test"):
        for x, y in zip(a.split(split), b.split(split)):
            assert x.dtype == y.dtype == np.int64
            np.testing.assert_array_equal(x, y)
        ma, mb = a.inter_matrix("csr", split), b.inter_matrix("csr", split)
        assert ma.shape == mb.shape and (ma != mb).nnz == 0


def test_demo_fast_path_equals_text_path(demo_root, monkeypatch):
    calls = []
    real = dataset_mod._read_int_table
    monkeypatch.setattr(dataset_mod, "_read_int_table", lambda *a: calls.append(r := real(*a)) or r)
    fast = _load(demo_root)
    assert len(calls) == 1 and calls[0] is not None             # the demo file took the integer path
    assert all(calls[0][c].dtype == np.int64 for c in calls[0].columns)
    _text_path_only(monkeypatch)
    slow = _load(demo_root)
    _same(fast, slow)
    assert len(fast.train_users) > 1000 and len(fast.valid_users) > 0 and len(fast.test_users) > 0


def _write(tmp_path, name, text):
    d = tmp_path / name
    d.mkdir()
    (d / f"{name}.inter").write_text(text)
    return str(tmp_path) + "/"


@pytest.mark.parametrize("text", [
    "userID\titemID\tx_label\n0\t1.0\t0\n1\t2\t0\n0\t2\t1\n1\t0\t2\n",     # float-formatted id: text path
    'userID\titemID\tx_label\n0\t"1"\t0\n1\t2\t0\n0\t2\t1\n1\t0\t2\n',     # quoted id
])
def test_other_spellings_give_the_same_arrays(tmp_path, monkeypatch, text):
    root = _write(tmp_path, "odd", text)
    plain = _write(tmp_path, "plain", "userID\titemID\tx_label\n0\t1\t0\n1\t2\t0\n0\t2\t1\n1\t0\t2\n")
    a, b = _load(root, "odd"), _load(plain, "plain")
    _same(a, b)
    _text_path_only(monkeypatch)
    _same(_load(root, "odd"), b)


@pytest.mark.parametrize("value,fast", [("5", True), ("-1", False), ("1.5", False), ("abc", False), ("", False),
                                        (str(2 ** 62), False), ("99999999999999999999999", False)])
def test_int_table_accepts_only_plain_ids(tmp_path, value, fast):
    p = tmp_path / "x.inter"
    p.write_text(f"userID\titemID\tx_label\n0\t{value}\t0\n")
    df = dataset_mod._read_int_table(p, "\t", ["userID", "itemID", "x_label"])
    assert (df is not None) == fast
    if fast:
        assert df["itemID"].tolist() == [5]


def test_errors_are_the_same_on_both_paths(tmp_path, monkeypatch):
    # a huge id parses as int64 (fast path) and must be quoted as the file writes it
    root = _write(tmp_path, "huge", "userID\titemID\tx_label\n0\t0\t0\n1\t000012345678901\t0\n")
    with pytest.raises(MMRecError) as fast:
        _load(root, "huge")
    _text_path_only(monkeypatch)
    with pytest.raises(MMRecError) as slow:
        _load(root, "huge")
    assert str(fast.value) == str(slow.value)
    assert "line 3: itemID 000012345678901 is far beyond" in str(fast.value)
