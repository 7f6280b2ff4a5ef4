"""Print the stored teacher exports of a dataset's artifact store as table rows: the teacher,
its seed, best-valid epoch, valid Recall@20 and its test metrics at that epoch (EGRA's stage 1
records them; this is how the teacher rows of beauty.md / office.md were read).

    python results/teacher_rows.py data/beauty/.artifacts
"""
import sys

from mmrec_egra.artifacts import open_store
from mmrec_egra.pipeline import stored_teachers


def main(directory: str) -> None:
    store = open_store(directory)
    print("| teacher | seed | best epoch | valid R@20 | test R@10 | test R@20 | test N@10 | test N@20 | key |")
    print("|---|---|---|---|---|---|---|---|---|")
    for entry in stored_teachers(store):
        meta = entry["meta"]
        t = meta.get("test", {})
        cells = [t.get(m, float("nan")) for m in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")]
        print(f"| {meta['teacher']} | {meta['seed']} | {meta['best_epoch']} | {meta['valid_score']:.4f} | "
              + " | ".join(f"{c:.4f}" for c in cells) + f" | {entry['key']} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/office/.artifacts")
