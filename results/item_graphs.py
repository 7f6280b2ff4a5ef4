"""How informative are the item-item links EGRA adds, compared with the raw-feature graph?

    python results/item_graphs.py office [--data_path data/]
    python results/item_graphs.py tiktok --data_path ../shared/data/

For one dataset: the teacher kNN graph EGRA adds to its behaviour graph (k = egra_knn_k,
self excluded, symmetrised; from the stored teacher export of seed 999), the raw-feature
kNN graph of each modality (same k), and a random graph with as many links. For every
graph, over its links (i, j):
  train co    : i and j share a training user (already connected through R in A_ui),
  held-out co : some user has i in train and j in valid/test or the reverse (a link that
                predicts a held-out interaction from a training one),
and the mean item degree. Prints a markdown table. Seconds on office.
"""
from __future__ import annotations

import argparse

import numpy as np
import scipy.sparse as sp

from mmrec_egra.artifacts import artifact_dir_for, open_store
from mmrec_egra.data import load_dataset
from mmrec_egra.fit import make_config
from mmrec_egra.graphs import knn_graph, symmetrize
from mmrec_egra.models.egra import teacher_knn_graph
from mmrec_egra.pipeline import stored_teachers


def link_rates(S: sp.csr_matrix, R_train: sp.csr_matrix, R_held: sp.csr_matrix) -> tuple:
    S = sp.triu(sp.csr_matrix(S), k=1).tocoo()            # each undirected link once
    co_train = (R_train.T @ R_train).tocsr()
    cross = (R_train.T @ R_held).tocsr()
    cross = (cross + cross.T).tocsr()
    hit_train = np.asarray(co_train[S.row, S.col]).ravel() > 0
    hit_held = np.asarray(cross[S.row, S.col]).ravel() > 0
    return S.nnz, hit_train.mean(), hit_held.mean()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--data_path", default="data/")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=999, help="teacher export of this seed")
    args = ap.parse_args()
    config = make_config("EGRA", args.dataset, {"data_path": args.data_path})
    ds = load_dataset(config)
    R_train = sp.csr_matrix(ds.inter_matrix("csr", "train"), dtype=np.float32)
    R_held = sp.csr_matrix(ds.inter_matrix("csr", "valid") + ds.inter_matrix("csr", "test"), dtype=np.float32)
    R_train.data[:] = 1.0
    R_held.data[:] = 1.0
    store = open_store(artifact_dir_for(config))       # where EGRA's stage 1 stored the teacher exports
    graphs = {}
    for e in stored_teachers(store, seed=args.seed, kind="final"):
        T = store.get(e["key"])[0]["items"]
        graphs[f"teacher {e['meta'].get('teacher')} (seed {args.seed}, EGRA's added links)"] = \
            symmetrize(teacher_knn_graph(T, args.k, weighted=True), "max")
    for name, feat in ds.features.items():
        graphs[f"raw {name} features"] = symmetrize(knn_graph(np.asarray(feat, dtype=np.float32), args.k,
                                                               include_self=False), "max")
    n = ds.n_items
    rng = np.random.default_rng(0)
    m = max(g.nnz for g in graphs.values()) // 2
    rows, cols = rng.integers(0, n, m), rng.integers(0, n, m)
    graphs["random (same number of links)"] = symmetrize(sp.csr_matrix((np.ones(m), (rows, cols)), shape=(n, n)), "max")
    print(f"{args.dataset}: {n} items, k = {args.k}; rates over each graph's undirected links")
    print("| graph | links | mean degree | train co-interaction | held-out co-interaction |")
    print("|---|---|---|---|---|")
    for name, g in graphs.items():
        links, tr, ho = link_rates(g, R_train, R_held)
        print(f"| {name} | {links:,} | {2 * links / n:.1f} | {tr:.3f} | {ho:.3f} |")


if __name__ == "__main__":
    main()
