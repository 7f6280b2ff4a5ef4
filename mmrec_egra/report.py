"""What a run shows its user: the final result table, learning curves, the HTML report.

- `final_table(summary, run_root)`: the text block a run ends with (best combination,
  valid and test metrics, epochs, time, where the files are).
- `after_combination(run_dir, config)`: `curves.png` (train loss, valid and test metric
  per epoch) beside `history.json`; with `log_backend: tensorboard` also TensorBoard
  event files under `<combination>/tensorboard/`.
- `write_html_report(out_dir, ...)`: `report.html` for `compare` and `--ablation`: the
  table, bar charts with seed error bars, the long-tail breakdown and seconds per epoch,
  charts embedded as base64 PNG so the file stands alone.

matplotlib and tensorboard are optional extras (`pip install -e ".[plots]"`,
`pip install tensorboard`) and imported only here, inside the functions that need them.
Without matplotlib runs and reports still finish (text and HTML tables); one log line
says what to install.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .utils import MMRecError, atomic_write, get_logger

PLOTS_HINT = 'pip install -e ".[plots]"'
TENSORBOARD_HINT = 'pip install tensorboard (or pip install -e ".[tensorboard]")'
LOG_BACKENDS = ("none", "tensorboard")
TABLE_KEYS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
CHART_WIDTH = 11.0        # inches at 100 dpi: every chart 1100 px wide, so fonts match across charts

_hint_logged = False


# ---- optional dependencies -------------------------------------------------
def _figure(width: float, height: float):
    """A matplotlib Figure (no pyplot: no global state, no GUI backend), or None without matplotlib."""
    global _hint_logged
    try:
        from matplotlib.figure import Figure
    except ImportError:
        if not _hint_logged:      # one line per process, not one per picture
            get_logger().warning("matplotlib is not installed: no PNG learning curves or report charts "
                                 "(tables are still written). To get them: %s", PLOTS_HINT)
            _hint_logged = True
        return None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def check_log_backend(config) -> str:
    """Validate `log_backend` before training starts; tensorboard must be importable."""
    value = str(config["log_backend"] or "none").lower()
    if value not in LOG_BACKENDS:
        raise MMRecError(f"log_backend is '{config['log_backend']}'; expected one of {', '.join(LOG_BACKENDS)} "
                         f"(set it in configs/overall.yaml or --log_backend tensorboard)")
    if value == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise MMRecError(f"log_backend: tensorboard needs the tensorboard package, which is not installed: "
                             f"{TENSORBOARD_HINT}, or set log_backend: none") from None
    return value


# ---- one run (combination) -------------------------------------------------
def _series(history: List[Dict[str, Any]], split: str, key: str):
    pts = [(h["epoch"], h[split][key]) for h in history if isinstance(h.get(split), dict) and key in h[split]]
    return [p[0] for p in pts], [p[1] for p in pts]


def learning_curves(history: List[Dict[str, Any]], path: Path, title: str, valid_metric: str = "recall@20",
                    best_epoch: Optional[int] = None) -> Optional[Path]:
    """PNG with train loss (left) and the valid/test metric (right) per epoch; None without matplotlib."""
    if not history:
        return None
    fig = _figure(10, 3.6)
    if fig is None:
        return None
    ax_loss, ax_metric = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(epochs, [h["loss"] for h in history], color="tab:gray", label="train loss (sum over batches)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss")
    ax_loss.legend(loc="upper right", fontsize=8)
    for split, color in (("valid", "tab:blue"), ("test", "tab:orange")):
        x, y = _series(history, split, valid_metric)
        if x:
            ax_metric.plot(x, y, color=color, label=f"{split} {valid_metric}")
    if best_epoch is not None and best_epoch >= 0:
        for ax in (ax_loss, ax_metric):
            ax.axvline(best_epoch, color="tab:green", linestyle="--", linewidth=1)
        ax_metric.plot([], [], color="tab:green", linestyle="--", label=f"best valid (epoch {best_epoch})")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(valid_metric)
    ax_metric.legend(loc="lower right", fontsize=8)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    data = _png_bytes(fig)
    atomic_write(path, lambda fh: fh.write(data), mode="wb")
    return path


def write_tensorboard(history: List[Dict[str, Any]], log_dir: Path) -> Path:
    """Per-epoch scalars (train loss and its parts, lr, timings, every valid/test metric) as event files.

    Written into a fresh folder that replaces `log_dir`, so a resumed or rerun
    combination never mixes two event files of the same steps.
    """
    from torch.utils.tensorboard import SummaryWriter
    tmp = log_dir.with_name(f".{log_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = SummaryWriter(log_dir=str(tmp))
    try:
        for h in history:
            step = int(h["epoch"])
            writer.add_scalar("train/loss", h["loss"], step)
            for i, part in enumerate(h.get("loss_parts") or []):
                writer.add_scalar(f"train/loss_part_{i}", part, step)
            for key in ("lr", "train_seconds", "eval_seconds"):
                if h.get(key) is not None:
                    writer.add_scalar(f"train/{key}", h[key], step)
            for split in ("valid", "test"):
                for metric, value in (h.get(split) or {}).items():
                    writer.add_scalar(f"{split}/{metric}", value, step)
    finally:
        writer.close()
    shutil.rmtree(log_dir, ignore_errors=True)
    os.replace(tmp, log_dir)
    return log_dir


def best_epoch(history: List[Dict[str, Any]], valid_metric: str) -> Optional[int]:
    """The trainer's best epoch: the first one reaching the highest valid metric (strict improvement)."""
    x, y = _series(history, "valid", valid_metric)
    return x[y.index(max(y))] if y else None


def after_combination(run_dir: Optional[Path], config) -> None:
    """Pictures of one finished combination from its history.json: curves.png (+ TensorBoard)."""
    if run_dir is None or not (Path(run_dir) / "history.json").is_file():
        return
    run_dir = Path(run_dir)
    history = json.loads((run_dir / "history.json").read_text())
    vm = str(config["valid_metric"] or "Recall@20").lower()
    best = best_epoch(history, vm)
    title = f"{config['model']} on {config['dataset']}: {run_dir.name}"
    try:
        learning_curves(history, run_dir / "curves.png", title, vm, best)
        if str(config["log_backend"] or "none").lower() == "tensorboard":
            write_tensorboard(history, run_dir / "tensorboard")
    except (MMRecError, OSError, ValueError, RuntimeError) as exc:
        # pictures are a view of history.json: a failure here must not lose a finished run
        get_logger().warning("could not write the pictures of %s: %s", run_dir, exc)


# ---- the table a run ends with -------------------------------------------------
def _show(path: Path) -> str:
    """A path relative to the current folder when it lies below it (shorter to read and copy)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def final_table(summary: Dict[str, Any], run_root: Optional[Path]) -> str:
    """The closing block of a run: the best combination on valid, its metrics, epochs, time, files."""
    rows = summary["rows"]
    vm = summary["valid_metric"]
    rule = "=" * 78
    n = len(rows)
    head = (f"{summary['model']} on {summary['dataset']}: {n} combination{'s' if n != 1 else ''}, "
            f"best chosen on valid {vm}")
    lines = [rule, head]
    best = summary.get("best")
    if best is None:
        lines.append("no combination produced a result (every one stopped on a NaN loss): see the log above")
    else:
        res = best["result"]
        keys = [k for k in TABLE_KEYS if k in res["best_test"]] or sorted(res["best_test"])[:4]
        spe = res.get("seconds_per_epoch")
        total = res.get("total_seconds")
        last = (res.get("epochs_run") or 0) - 1
        timing = []
        if spe is not None:
            timing.append(f"{spe:.2f} s/epoch")
        if total is not None:
            timing.append(f"{total:.1f} s in all")
        lines += [f"best combination  #{best['index']} {json.dumps(best['combination'])}",
                  f"status            {res['status']}: best epoch {res['best_epoch']} of epochs 0-{last}"
                  + (f" ({', '.join(timing)})" if timing else ""),
                  "",
                  "        " + "".join(f"{k:>12}" for k in keys),
                  "  valid " + "".join(f"{res['best_valid'].get(k, math.nan):>12.4f}" for k in keys),
                  "  test  " + "".join(f"{res['best_test'].get(k, math.nan):>12.4f}" for k in keys),
                  ""]
    if run_root is None:
        lines.append("files             none (--no_save)")
    else:
        lines.append(f"files             {_show(run_root)}/: summary.md (every combination), run.log")
        if best is not None and best.get("dir"):
            pics = "curves.png, " if (Path(best["dir"]) / "curves.png").is_file() else ""
            lines.append(f"best run          {_show(Path(best['dir']))}/: {pics}history.json, result.json, best.pt")
    lines.append(rule)
    return "\n".join(lines)


# ---- the HTML report of compare / --ablation ----------------------------------
def _mean_std(row: Dict[str, Any], key: str):
    m, s = row.get(f"test_{key}_mean"), row.get(f"test_{key}_std")
    return (math.nan if m is None else m), (0.0 if s is None else s)


def _bars(rows: List[Dict[str, Any]], keys: Sequence[str], title: str, ylabel: str, one_axis: bool = True):
    """Grouped bars (one group per model, one bar per key) with ± std over seeds; PNG bytes or None."""
    labels = [r["label"] for r in rows]
    if one_axis:
        fig = _figure(CHART_WIDTH, 3.6)
        if fig is None:
            return None
        ax = fig.subplots()
        step = 0.8 / len(keys)
        for j, key in enumerate(keys):
            means, stds = zip(*[_mean_std(r, key) for r in rows])
            xs = [i - 0.4 + step * (j + 0.5) for i in range(len(labels))]
            ax.bar(xs, means, step * 0.95, yerr=stds, capsize=3, label=key)
        ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 5 else 0, ha="right"
                      if len(labels) > 5 else "center")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(axis="y", alpha=0.3)
        fig.suptitle(title, fontsize=10)
        return _png_bytes(fig)
    fig = _figure(CHART_WIDTH, 3.0)
    if fig is None:
        return None
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        means, stds = zip(*[_mean_std(r, key) for r in rows])
        ax.bar(range(len(labels)), means, 0.7, yerr=stds, capsize=3, color="tab:purple" if "tail" in key
               else "tab:cyan")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"test {key}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _png_bytes(fig)


def _speed_chart(rows: List[Dict[str, Any]]):
    labels = [r["label"] for r in rows]
    fig = _figure(CHART_WIDTH, 2.6)
    if fig is None:
        return None
    ax = fig.subplots()
    med, spread = [], []
    for r in rows:
        vals = [x["seconds_per_epoch"] for x in r.get("runs", []) if x.get("seconds_per_epoch") is not None]
        med.append(r["seconds_per_epoch"] if r.get("seconds_per_epoch") is not None else math.nan)
        spread.append(float((sum((v - sum(vals) / len(vals)) ** 2 for v in vals) / len(vals)) ** 0.5)
                      if len(vals) > 1 else 0.0)
    ax.bar(range(len(labels)), med, 0.6, yerr=spread, capsize=3, color="tab:gray")
    ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 5 else 0,
                  ha="right" if len(labels) > 5 else "center")
    ax.set_ylabel("seconds per training epoch")
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Training time: median seconds per epoch over seeds (± std of the per-seed medians)", fontsize=10)
    return _png_bytes(fig)


def _img(png: Optional[bytes], alt: str) -> str:
    if png is None:
        return f'<p class="note">({html.escape(alt)}: chart not drawn, matplotlib is not installed: ' \
               f'<code>{html.escape(PLOTS_HINT)}</code>)</p>'
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table_html(rows: List[Dict[str, Any]], keys: Sequence[str], valid_metric: str) -> str:
    best = {}
    for k in keys:
        vals = [_mean_std(r, k)[0] for r in rows]
        finite = [v for v in vals if not math.isnan(v)]
        best[k] = max(finite) if finite else None
    head = ["model", "seeds"] + [f"test {k}" for k in keys] + [f"valid {valid_metric}", "epochs to best", "s/epoch"]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cells = [html.escape(str(r["label"])), str(r["n_seeds"])]
        for k in keys:
            m, s = _mean_std(r, k)
            txt = "n/a" if math.isnan(m) else f"{m:.4f}<span class='sd'> ± {s:.4f}</span>"
            cells.append(f"<b>{txt}</b>" if best[k] is not None and m == best[k] else txt)
        v = r.get(f"valid_{valid_metric}_mean")
        cells += ["n/a" if v is None else f"{v:.4f}",
                  "n/a" if r.get("best_epoch_mean") is None else f"{r['best_epoch_mean']:.0f}",
                  "n/a" if r.get("seconds_per_epoch") is None else f"{r['seconds_per_epoch']:.2f}"]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def _seed_table(rows: List[Dict[str, Any]], keys: Sequence[str]) -> str:
    head = ["model", "seed", "combination (chosen on valid)", "best epoch"] + [f"test {k}" for k in keys] + ["s/epoch"]
    out = ["<table class='small'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        for x in r.get("runs", []):
            spe = x.get("seconds_per_epoch")
            cells = [html.escape(str(r["label"])), str(x["seed"]), html.escape(json.dumps(x.get("combination"))),
                     str(x.get("best_epoch"))] + [f"{x['test'][k]:.4f}" if k in x["test"] else "n/a" for k in keys]
            cells.append("n/a" if spe is None else f"{spe:.2f}")
            out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "\n".join(out + ["</table>"])


_CSS = """body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:24px;max-width:1150px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 5px;text-align:right}
td{white-space:nowrap}.sd{color:#666;font-size:10px}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}table.small{font-size:11px}
img{max-width:100%}.note{color:#555;font-size:13px}
.banner{background:#fff4ce;border:1px solid #e0c060;padding:8px 12px;margin:10px 0;font-size:14px}"""


def write_html_report(out_dir: Path, title: str, rows: List[Dict[str, Any]], valid_metric: str,
                      extra_keys: Sequence[str] = (), dataset: Optional[str] = None) -> Path:
    """report.html beside table.md: table, metric bars with seed error bars, long tail, s/epoch."""
    out_dir = Path(out_dir)
    keys = list(TABLE_KEYS)
    tail_keys = [k for k in extra_keys if k.startswith(("head/", "tail/"))]
    n_seeds = sorted({r["n_seeds"] for r in rows})
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    if dataset == "demo":
        parts.append("<div class='banner'><b>Demo data.</b> The built-in synthetic demo dataset (2,000 users, "
                     "1,500 items, planted topics): these numbers show the tool working, they say nothing "
                     "about model quality on real data.</div>")
    parts.append(f"<p class='note'>Test metrics at the best-valid epoch; every combination chosen on valid "
                 f"{html.escape(valid_metric)}, never on test. Mean ± std (population) over seeds "
                 f"(n = {', '.join(map(str, n_seeds))}). Written {time.strftime('%Y-%m-%d %H:%M')}.</p>")
    parts += ["<h2>Results</h2>", _table_html(rows, keys + list(extra_keys), valid_metric)]
    parts += ["<h2>Test metrics</h2>",
              _img(_bars(rows, keys, "Test metrics at the best-valid epoch (error bars: ± std over seeds)",
                         "test metric"), "test metrics")]
    parts.append("<h2>Long tail</h2>")
    if tail_keys:
        parts.append("<p class='note'>Head: the most popular training items (longtail_head_ratio); tail: the "
                     "rest. Recall and NDCG counted on each group's test items alone.</p>")
        parts.append(_img(_bars(rows, tail_keys, "Head vs tail items (error bars: ± std over seeds)", "",
                                one_axis=False), "long-tail breakdown"))
    else:
        parts.append("<p class='note'>Not measured in this comparison: rerun with <code>--longtail</code> "
                     "for head/tail Recall@20 and NDCG@20.</p>")
    parts += ["<h2>Training time</h2>", _img(_speed_chart(rows), "seconds per epoch"),
              "<p class='note'>Seconds per epoch depend on the machine and on what else runs on it.</p>",
              "<h2>Per seed</h2>", _seed_table(rows, keys + list(extra_keys)), "</body></html>"]
    path = out_dir / "report.html"
    text = "\n".join(parts)
    atomic_write(path, lambda fh: fh.write(text))
    return path
