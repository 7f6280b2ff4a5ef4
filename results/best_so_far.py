"""Best-valid epoch of each run so far, from history.json (finished or cut short).

    python results/best_so_far.py saved/qual/office/*/*/history.json

Prints one markdown row per run: epochs run, whether early stopping fired (result.json
written), the best valid Recall@20 epoch and that epoch's test Recall/NDCG@10/20.
A run that was cut before stopping is marked "cut": its row is a lower bound, not a result.
"""
import json
import sys
from pathlib import Path

print("| run | epochs run | status | best-valid epoch | valid R@20 | test R@10 | test R@20 | test N@10 | test N@20 | tail R@20 |")
print("|---|---|---|---|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    p = Path(path)
    h = [r for r in json.loads(p.read_text()) if r.get("valid")]
    if not h:
        continue
    b = max(h, key=lambda r: r["valid"]["recall@20"])       # first maximum = the trainer's strict rule
    status = "finished" if (p.parent / "result.json").is_file() else "cut"
    t = b["test"]
    tail = t.get("tail/recall@20")
    print(f"| {p.parent.parent.name} | {len(h)} | {status} | {b['epoch']} | {b['valid']['recall@20']:.4f} | "
          f"{t['recall@10']:.4f} | {t['recall@20']:.4f} | {t['ndcg@10']:.4f} | {t['ndcg@20']:.4f} | "
          f"{'n/a' if tail is None else f'{tail:.4f}'} |")
