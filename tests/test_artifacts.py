"""LMDB artifact store and the content-keyed graph cache."""
import numpy as np
import scipy.sparse as sp

from mmrec_egra.artifacts import content_key, open_store
from mmrec_egra.cache import GraphCache, make_key


def test_put_get_roundtrip_and_list(tmp_path):
    s = open_store(tmp_path / "st")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    s.put("emb/x", {"a": a, "b": np.array([1, 2], dtype=np.int64)}, {"teacher": "MGCN"})
    arrays, meta = s.get("emb/x")
    assert np.array_equal(arrays["a"], a) and arrays["b"].dtype == np.int64 and meta == {"teacher": "MGCN"}
    assert s.get("missing") is None
    listing = s.list()
    assert listing[0]["key"] == "emb/x" and listing[0]["arrays"]["a"] == "(3, 4) float32"
    assert s.clear("emb/") == 1 and s.get("emb/x") is None


def test_corrupt_and_foreign_entries_are_discarded(tmp_path, caplog):
    s = open_store(tmp_path / "st2")
    s.put("k", {"a": np.ones(100, dtype=np.float32)})
    with s.env.begin(write=True) as txn:            # flip one payload byte
        v = bytearray(txn.get(b"k"))
        v[-3] ^= 0xFF
        txn.put(b"k", bytes(v))
        txn.put(b"foreign", b"something else entirely")
    assert s.get("k") is None
    assert s.get("foreign") is None
    assert "corrupt or foreign" in caplog.text
    with s.env.begin() as txn:
        assert txn.get(b"k") is None                 # removed, so the next run rebuilds


def test_content_key_changes_with_inputs():
    assert content_key("abc", {"k": 1}) == content_key("abc", {"k": 1})
    assert content_key("abc", {"k": 1}) != content_key("abc", {"k": 2})
    x = np.ones((4, 3), dtype=np.float32)
    y = x.copy(); y[2, 1] = 0.5
    assert make_key("knn", {"k": 2}, {"f": x}) != make_key("knn", {"k": 2}, {"f": y})
    assert make_key("knn", {"k": 2}, {"f": x}) != make_key("knn", {"k": 3}, {"f": x})


def test_graph_cache_builds_once_and_rebuilds_corrupt(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return sp.random(20, 20, density=0.2, format="csr", random_state=0, dtype=np.float32)

    c = GraphCache(tmp_path / "gc")
    x = np.random.default_rng(0).random((20, 5))
    g1 = c.get_or_build("knn", {"k": 3}, {"feat": x}, build)
    g2 = c.get_or_build("knn", {"k": 3}, {"feat": x}, build)
    assert len(calls) == 1 and (g1 != g2).nnz == 0
    store = open_store(tmp_path / "gc")
    key = store.list()[0]["key"]
    with store.env.begin(write=True) as txn:
        v = bytearray(txn.get(key.encode())); v[-1] ^= 1; txn.put(key.encode(), bytes(v))
    g3 = c.get_or_build("knn", {"k": 3}, {"feat": x}, build)
    assert len(calls) == 2 and (g1 != g3).nnz == 0
    c.get_or_build("knn", {"k": 4}, {"feat": x}, build)
    assert len(calls) == 3
