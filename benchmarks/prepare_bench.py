"""Speed and memory of `mmrec-egra prepare` (no encoder) on a synthetic interaction table,
and optionally the text encoder's items/s on a prepared dataset.

    python benchmarks/prepare_bench.py                      # 10M interactions (targets: < 60 s, < 4 GiB)
    python benchmarks/prepare_bench.py --rows 1000000       # smaller
    python benchmarks/prepare_bench.py --encoder-on data/beauty --items ../shared/data/raw/beauty/beauty.items.csv

The table (user_id, item_id, timestamp; integer raw ids, Zipf-skewed users and items, ~2%
duplicate pairs) is written once to --workdir (not timed). The timed part runs in a fresh
process: read + rating-free dedup + 5-core + ids + chronological split + writing the
folder; it prints wall seconds per stage and the peak RSS of that process
(resource.getrusage, ru_maxrss).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_table(path: Path, rows: int, seed: int = 0) -> None:
    """Synthetic interactions: rows/10 users, rows/50 items, both Zipf-like, random timestamps."""
    import pandas as pd
    rng = np.random.default_rng(seed)
    n_users, n_items = max(10, rows // 10), max(10, rows // 50)
    # heavy-tailed activity: rank-based weights ~ 1/rank^0.8, sampled by inverse CDF
    def zipf(n, size):
        w = 1.0 / np.arange(1, n + 1) ** 0.8
        c = np.cumsum(w) / w.sum()
        return np.searchsorted(c, rng.random(size))
    users = rng.permutation(n_users)[zipf(n_users, rows)]
    items = rng.permutation(n_items)[zipf(n_items, rows)]
    ts = rng.integers(1_300_000_000, 1_700_000_000, size=rows)
    pd.DataFrame({"user_id": users, "item_id": items, "timestamp": ts}).to_csv(
        path, sep="\t", index=False, chunksize=1_000_000)


def child(table: str, out: str, integer_ids: bool) -> None:
    """The timed run (own process, so ru_maxrss is prepare's alone)."""
    from mmrec_egra.data.prepare import build_parser, prepare
    args = build_parser().parse_args(["--inter", table, "-d", "bench", "--data_path", out, "--force",
                                      "--kcore", "5", "--no-progress"] + (["--integer-ids"] if integer_ids else []))
    t0 = time.perf_counter()
    card = prepare(args, command="prepare_bench", log=lambda *a: None)
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rss = ru.ru_maxrss / 2 ** 20  # KiB -> GiB
    print(json.dumps({"wall_s": round(wall, 1), "cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
                      "peak_rss_gib": round(rss, 2), "stages_s": card["seconds"],
                      "counts": card["counts"], "steps": card["steps"]}))


def encoder_speed(folder: Path, items: str, fields, batch_size: int, limit: int = 0) -> None:
    """items/s of the default encoder over the real item texts of a prepared dataset."""
    import pandas as pd

    from mmrec_egra.data.prepare import read_items
    from mmrec_egra.data.text_features import encode_texts, item_sentence
    ids = pd.read_csv(folder / "i_id_mapping.csv", sep="\t", dtype=str)["item_id"]
    df, _ = read_items(Path(items))
    rows = df.reindex(pd.Index(ids)).to_dict(orient="records")
    texts = [t for t in (item_sentence(r, fields) for r in rows) if t]
    texts = texts[:limit] if limit else texts
    _, info = encode_texts(texts, batch_size=batch_size, show_progress=False)
    print(f"encoder {info['name']} on {len(texts)} texts of {folder.name} ({' + '.join(fields)}), batch "
          f"{batch_size}, torch threads {__import__('torch').get_num_threads()}: {info['encode_seconds']} s, "
          f"{info['items_per_second']} items/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--workdir", default="/tmp/mmrec_prepare_bench")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--integer-ids", action="store_true", help="time prepare --integer-ids (ids parsed as numbers)")
    p.add_argument("--encoder-on", default=None, help="a prepared dataset folder: measure the encoder there")
    p.add_argument("--items", default=None, help="the raw item file of that dataset")
    p.add_argument("--text-fields", nargs="+", default=["title"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=0, help="encode only the first N texts (0 = all)")
    a = p.parse_args()
    if a.child:
        return child(*a.child, a.integer_ids)
    if a.encoder_on:
        return encoder_speed(Path(a.encoder_on), a.items, a.text_fields, a.batch_size, a.limit)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    table = work / f"inter_{a.rows}.tsv"
    if not table.is_file():
        t0 = time.perf_counter()
        make_table(table, a.rows)
        print(f"wrote {table} ({table.stat().st_size / 2 ** 20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
    res = subprocess.run([sys.executable, __file__, "--child", str(table), str(work / "out")]
                         + (["--integer-ids"] if a.integer_ids else []),
                         capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if res.returncode:
        sys.exit(res.stderr)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    c = r["counts"]
    print(f"{'--integer-ids: ' if a.integer_ids else 'string ids: '}{a.rows:,} rows -> {c['users']:,} users, {c['items']:,} items, {c['interactions']:,} interactions after "
          f"dedup + 5-core; split {c['train']:,} / {c['valid']:,} / {c['test']:,}")
    print("stages (s): " + ", ".join(f"{k} {v}" for k, v in r["stages_s"].items()))
    print(f"prepare wall {r['wall_s']} s (CPU {r['cpu_s']} s, whole process incl. imports), peak RSS "
          f"{r['peak_rss_gib']} GiB (targets: < 60 s, < 4 GiB); load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
