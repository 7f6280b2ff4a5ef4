"""What a run shows: the final table, curves.png, the HTML report of compare, TensorBoard."""
from __future__ import annotations

import base64
import json
import logging
import re
import sys
from pathlib import Path

import pytest

from mmrec_egra import report
from mmrec_egra.report import best_epoch, final_table, learning_curves, write_html_report
from mmrec_egra.utils import MMRecError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history():
    """Six epochs; valid recall@20 peaks first at epoch 3 (ties later must not move it)."""
    valid = [0.10, 0.20, 0.25, 0.30, 0.30, 0.28]
    test = [0.11, 0.19, 0.26, 0.29, 0.31, 0.27]
    return [{"epoch": e, "loss": 10.0 - e, "train_seconds": 0.5, "eval_seconds": 0.1, "lr": 0.001,
             "loss_parts": [9.0 - e, 1.0], "valid": {"recall@20": v, "ndcg@20": v / 2},
             "test": {"recall@20": t, "ndcg@20": t / 2}} for e, (v, t) in enumerate(zip(valid, test))]


def _png_size(data: bytes):
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_best_epoch_is_the_first_maximum():
    assert best_epoch(_history(), "recall@20") == 3
    assert best_epoch([{"epoch": 0, "loss": 1.0}], "recall@20") is None     # never evaluated


def test_learning_curves_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = learning_curves(_history(), tmp_path / "curves.png", "toy", "recall@20", 3)
    w, h = _png_size(path.read_bytes())
    assert (w, h) == (1000, 360)          # figsize 10 x 3.6 inches at 100 dpi
    assert learning_curves([], tmp_path / "none.png", "toy") is None
    assert not (tmp_path / "none.png").exists()


def _summary(run_dir: Path = None, best_index=1):
    def row(i, v, t):
        return {"index": i, "combination": {"seed": 999, "reg_weight": [0.1, 0.01][i]},
                "dir": str(run_dir) if run_dir else None,
                "result": {"status": "finished", "best_epoch": 3, "epochs_run": 6, "seconds_per_epoch": 0.25,
                           "total_seconds": 2.5,
                           "best_valid": {"recall@10": v, "recall@20": v + 0.1, "ndcg@10": v / 2, "ndcg@20": v / 3},
                           "best_test": {"recall@10": t, "recall@20": t + 0.1, "ndcg@10": t / 2, "ndcg@20": t / 3}}}
    rows = [row(0, 0.2, 0.25), row(1, 0.3, 0.35)]
    best = rows[best_index] if best_index is not None else None
    return {"model": "LightGCN", "dataset": "demo", "valid_metric": "recall@20", "rows": rows,
            "best_index": best_index, "best": best}


def test_final_table_shows_best_combination_metrics_epochs_time_and_files(tmp_path):
    run_dir = tmp_path / "LightGCN-demo" / "seed=999_reg_weight=0.01-abc"
    run_dir.mkdir(parents=True)
    (run_dir / "curves.png").write_bytes(PNG_MAGIC)
    text = final_table(_summary(run_dir), tmp_path / "LightGCN-demo")
    lines = text.splitlines()
    assert "LightGCN on demo: 2 combinations, best chosen on valid recall@20" in text
    assert 'best combination  #1 {"seed": 999, "reg_weight": 0.01}' in text
    assert "finished: best epoch 3 of epochs 0-5 (0.25 s/epoch, 2.5 s in all)" in text
    valid = next(line for line in lines if line.strip().startswith("valid"))
    test = next(line for line in lines if line.strip().startswith("test"))
    assert valid.split()[1:] == ["0.3000", "0.4000", "0.1500", "0.1000"]
    assert test.split()[1:] == ["0.3500", "0.4500", "0.1750", "0.1167"]
    assert f"{tmp_path / 'LightGCN-demo'}/: summary.md" in text
    assert f"{run_dir}/: curves.png, history.json" in text


def test_final_table_without_saving_and_without_result(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    text = final_table(_summary(None), None)
    assert "files             none (--no_save)" in text and "best run" not in text
    text = final_table(_summary(None, best_index=None), tmp_path / "saved" / "X-demo")
    assert "no combination produced a result" in text
    assert "saved/X-demo/: summary.md" in text            # shown relative to the current folder


def test_run_ends_with_the_table_and_writes_curves(demo_root, tmp_path, caplog):
    pytest.importorskip("matplotlib")
    from mmrec_egra.runner import run
    with caplog.at_level(logging.INFO, logger="mmrec_egra"):
        summary = run("BPR", "demo", {"data_path": demo_root, "checkpoint_dir": str(tmp_path / "saved"),
                                      "epochs": 3, "grid": "first", "show_progress": False, "device": "cpu"})
    run_dir = Path(summary["best"]["dir"])
    assert _png_size((run_dir / "curves.png").read_bytes()) == (1000, 360)
    res = json.loads((run_dir / "result.json").read_text())["result"]
    log = caplog.text
    assert "BPR on demo: 1 combination, best chosen on valid recall@20" in log
    valid_line = re.search(r"^\s+valid\s+([\d.]+)\s+([\d.]+)", log, re.M)
    assert float(valid_line.group(2)) == pytest.approx(res["best_valid"]["recall@20"], abs=5e-5)
    assert f"{run_dir}/: curves.png" in log


def test_without_matplotlib_the_run_finishes_and_says_what_to_install(demo_root, tmp_path, caplog, monkeypatch):
    from mmrec_egra.runner import run
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)     # import now raises ImportError
    monkeypatch.setattr(report, "_hint_logged", False)
    with caplog.at_level(logging.INFO, logger="mmrec_egra"):
        summary = run("BPR", "demo", {"data_path": demo_root, "checkpoint_dir": str(tmp_path / "saved"),
                                      "epochs": 2, "show_progress": False, "device": "cpu",
                                      "reg_weight": [1e-5, 1e-4]})
    assert len(summary["rows"]) == 2
    for r in summary["rows"]:
        assert (Path(r["dir"]) / "result.json").is_file() and not (Path(r["dir"]) / "curves.png").exists()
    hints = [r for r in caplog.records if 'pip install -e ".[plots]"' in r.getMessage()]
    assert len(hints) == 1                    # one line, not one per picture
    assert "best run" in caplog.text and "curves.png" not in caplog.text.split("best run")[-1]


def _rows(longtail: bool):
    def runs(vals, spe):
        out = []
        for seed, v, s in zip((999, 1), vals, spe):
            test = {"recall@10": v, "recall@20": v + 0.1, "ndcg@10": v / 2, "ndcg@20": v / 2 + 0.01}
            if longtail:
                test.update({"head/recall@20": v + 0.2, "tail/recall@20": v / 10, "tail/ndcg@20": v / 20})
            out.append({"seed": seed, "combination": {"seed": seed}, "best_epoch": 4, "valid": {"recall@20": v},
                        "test": test, "seconds_per_epoch": s})
        return out
    from mmrec_egra.compare import aggregate
    extra = ("head/recall@20", "tail/recall@20", "tail/ndcg@20") if longtail else ()
    return [aggregate("BPR", "BPR", runs([0.4, 0.6], [0.1, 0.3]), "recall@20", extra),
            aggregate("LightGCN", "LightGCN", runs([0.7, 0.7], [0.5, 0.5]), "recall@20", extra)], extra


def _images(text: str):
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_html_report_tables_charts_longtail_and_demo_banner(tmp_path):
    pytest.importorskip("matplotlib")
    rows, extra = _rows(longtail=True)
    path = write_html_report(tmp_path, "Model comparison on demo", rows, "recall@20", extra, "demo")
    text = path.read_text()
    assert path == tmp_path / "report.html"
    assert "<b>Demo data.</b>" in text
    # BPR: recall@10 over seeds 0.4, 0.6 -> mean 0.5, population std 0.1; LightGCN best, in bold
    assert "<td>0.5000<span class='sd'> ± 0.1000</span></td>" in text
    assert "<td><b>0.7000<span class='sd'> ± 0.0000</span></b></td>" in text
    assert "<td>0.2000</td>" in text                  # BPR median s/epoch of 0.1 and 0.3
    imgs = _images(text)
    assert len(imgs) == 3                            # metrics, long tail, seconds per epoch
    assert all(img[:8] == PNG_MAGIC for img in imgs)
    assert "test head/recall@20" in text and "--longtail" not in text
    assert text.count("<tr>") == 1 + 2 + 1 + 4        # results table, per-seed table (2 models x 2 seeds)


def test_html_report_without_longtail_or_matplotlib(tmp_path, monkeypatch):
    rows, extra = _rows(longtail=False)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(report, "_hint_logged", False)
    text = write_html_report(tmp_path, "EGRA ablation on tiktok", rows, "recall@20", extra, "tiktok").read_text()
    assert "Demo data" not in text and "<code>--longtail</code>" in text
    assert _images(text) == [] and text.count('pip install -e &quot;.[plots]&quot;') == 2
    assert "<td>0.5000<span class='sd'> ± 0.1000</span></td>" in text


def test_compare_writes_the_html_report(demo_root, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from mmrec_egra.compare import main
    out = tmp_path / "cmp"
    rc = main(["-d", "demo", "-m", "BPR", "--seeds", "999", "--epochs", "2", "--out", str(out),
               "--data_path", demo_root, "--checkpoint_dir", str(tmp_path / "saved"), "--device", "cpu"])
    assert rc == 0
    text = (out / "report.html").read_text()
    table = json.loads((out / "runs.json").read_text())
    assert f"{table[0]['test_recall@20_mean']:.4f}<span class='sd'> ± 0.0000" in text
    assert len(_images(text)) == 2 and "<b>Demo data.</b>" in text
    assert "report.html" in capsys.readouterr().out


def test_log_backend_is_checked_before_training(demo_root, tmp_path, monkeypatch):
    from mmrec_egra.runner import run
    opts = {"data_path": demo_root, "checkpoint_dir": str(tmp_path / "saved"), "epochs": 1, "grid": "first",
            "show_progress": False, "device": "cpu"}
    with pytest.raises(MMRecError, match="log_backend is 'wandb'; expected one of none, tensorboard"):
        run("BPR", "demo", dict(opts, log_backend="wandb"))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(MMRecError, match=r"needs the tensorboard package.*pip install tensorboard"):
        run("BPR", "demo", dict(opts, log_backend="tensorboard"))
    assert not list((tmp_path / "saved").rglob("history.json"))     # nothing trained


def test_log_backend_does_not_change_the_run_identity(demo_root):
    from mmrec_egra.runner import combo_key, make_config
    keys = []
    for backend in ("none", "tensorboard"):
        cfg = make_config("BPR", "demo", {"data_path": demo_root, "device": "cpu", "log_backend": backend})
        keys.append(combo_key(cfg.for_combination(cfg.grid()[0]), "fp"))
    assert keys[0] == keys[1]


def test_tensorboard_events_hold_the_history(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    hist = _history()
    out = report.write_tensorboard(hist, tmp_path / "tensorboard")
    report.write_tensorboard(hist, tmp_path / "tensorboard")        # a rerun replaces, never appends
    assert len(list(out.iterdir())) == 1
    acc = EventAccumulator(str(out))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_part_0", "train/loss_part_1", "train/lr", "valid/recall@20",
            "test/ndcg@20", "train/eval_seconds"} <= tags
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(6)) and [e.value for e in loss] == [10.0 - e for e in range(6)]
    assert [round(e.value, 6) for e in acc.Scalars("valid/recall@20")] == [0.1, 0.2, 0.25, 0.3, 0.3, 0.28]


def test_run_with_tensorboard_backend_writes_events(demo_root, tmp_path):
    pytest.importorskip("tensorboard")
    from mmrec_egra.runner import run
    summary = run("BPR", "demo", {"data_path": demo_root, "checkpoint_dir": str(tmp_path / "saved"), "epochs": 2,
                                  "grid": "first", "show_progress": False, "device": "cpu",
                                  "log_backend": "tensorboard"})
    events = list((Path(summary["best"]["dir"]) / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_a_failing_picture_does_not_lose_the_run(tmp_path, monkeypatch, caplog):
    (tmp_path / "history.json").write_text(json.dumps(_history()))

    def broken(*args, **kwargs):
        raise RuntimeError("renderer broke")
    monkeypatch.setattr(report, "learning_curves", broken)
    with caplog.at_level(logging.WARNING, logger="mmrec_egra"):
        report.after_combination(tmp_path, {"valid_metric": "Recall@20", "model": "BPR", "dataset": "demo",
                                            "log_backend": None})
    assert "could not write the pictures" in caplog.text and "renderer broke" in caplog.text


def test_write_csv_one_column_set_and_no_per_seed_runs(tmp_path):
    """compare's table.csv (and results/seed_table.py): the first row's columns, `runs` left out,
    a row lacking a column (a teacher seed with no long-tail split) gets an empty cell."""
    import csv as _csv
    from mmrec_egra.compare import write_csv
    (with_tail, _), (plain, _) = _rows(longtail=True), _rows(longtail=False)
    path = tmp_path / "t.csv"
    write_csv(path, [with_tail[0], plain[1]])
    got = list(_csv.DictReader(open(path, newline="")))
    assert "runs" not in got[0] and [r["model"] for r in got] == ["BPR", "LightGCN"]
    assert float(got[0]["test_recall@10_mean"]) == pytest.approx(0.5)
    assert float(got[0]["test_recall@10_std"]) == pytest.approx(0.1)
    assert float(got[0]["test_tail/recall@20_mean"]) == pytest.approx(0.05)
    assert got[1]["test_tail/recall@20_mean"] == "" and float(got[1]["test_recall@20_mean"]) == pytest.approx(0.8)
    assert not list(tmp_path.glob("*.tmp*"))
