"""PGL: Principal Graph Learning for multimedia recommendation ("Mind Individual
Information! Principal Graph Learning for Multimedia Recommendation"; Yu et al., AAAI'25).
Trains on [3, B] batches.

Idea: message passing over the COMPLETE user-item graph blurs each node's individual
information with its many neighbours; PGL trains on a PRINCIPAL subgraph that keeps the
edges carrying the main signal of each node, and predicts with the complete graph.
Principal subgraph extraction, per user a quota q_u = ceil(principal_ratio * d_u) of its
training edges (at least one) is kept:
    local  (local-aware, sparse sampling): q_u edges drawn uniformly at random, anew
           before every epoch (numpy's seeded global RNG, as FREEDOM's pruning);
    global (global-aware, low rank): the q_u edges with the largest value in the rank-r
           truncated-SVD reconstruction of R_norm = D_u^-1/2 R D_i^-1/2 (r = svd_rank), i.e.
           the interactions the global low-rank structure explains best; fixed, built once.
Backbone (FREEDOM-style latent item graph, frozen):
    S = sum_m w_m D^-1/2 kNN_m D^-1/2 (binary top-k cosine kNN of each modality's raw
        features with self; image weight mm_image_weight, the rest share the remainder)
    h = S^L e_item                                          (L = n_layers)
    [u; i] = mean_{l=0..L'} A_p^l [e_user; e_item]          A_p = D^-1/2 [[0,P],[P^T,0]] D^-1/2,
                                                            P = principal subgraph (training)
                                                            or the complete R (prediction)
    item = i + h, score(u, i) = u . item
Loss: BPR + reg_weight * L2 (half squared norms / batch) of the batch's ego embeddings.

Choices where the paper leaves room (config keys where they matter):
- the quota is per USER (every user keeps at least one edge, so no user is cut off);
  items may lose all their edges in an epoch.
- global extraction scores only OBSERVED edges (the low-rank matrix is never made dense:
  the score of edge (u, i) is the dot product of the two factor rows).
- the SVD uses ARPACK with a fixed start vector, so the graph is deterministic.
- we implement the ranking loss with L2 only; no auxiliary loss terms.
- any number of modalities (weights as FREEDOM); features only shape the frozen graph.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
import torch.nn as nn

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, propagate
from ..losses import bpr_loss, l2_reg
from ..modules import normalized_interactions
from ..registry import register_model
from ..utils import MMRecError
from .base import GeneralRecommender, inter_matrix_csr
from .freedom import freedom_item_graph, freedom_modality_weights

EXTRACTIONS = ("local", "global")


def keep_top_per_row(R: sp.csr_matrix, scores: np.ndarray, ratio: float) -> sp.csr_matrix:
    """Keep, in every row of the binary R, its ceil(ratio * d_u) (>= 1) edges of largest
    `scores` (one score per stored entry, in CSR order; ties to the lower column)."""
    R = sp.csr_matrix(R, dtype=np.float32)
    R.sort_indices()
    deg = np.diff(R.indptr)
    rows = np.repeat(np.arange(R.shape[0]), deg)
    quota = np.maximum(1, np.ceil(ratio * deg - 1e-9)).astype(np.int64)
    order = np.lexsort((R.indices, -np.asarray(scores, dtype=np.float64), rows))   # by row, score desc
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - R.indptr[rows[order]]
    keep = rank < quota[rows]
    return sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (rows[keep], R.indices[keep])), shape=R.shape)


def global_edge_scores(R: sp.csr_matrix, rank: int) -> np.ndarray:
    """Rank-r truncated-SVD reconstruction of R_norm, evaluated on R's stored entries (CSR order)."""
    R = sp.csr_matrix(R, dtype=np.float32)
    R.sort_indices()
    Rn = sp.csr_matrix(normalized_interactions(R), dtype=np.float64)
    r = max(1, min(int(rank), min(Rn.shape) - 1))
    v0 = np.ones(min(Rn.shape), dtype=np.float64) / np.sqrt(min(Rn.shape))
    U, s, Vt = spla.svds(Rn, k=r, v0=v0, solver="arpack")
    rows = np.repeat(np.arange(R.shape[0]), np.diff(R.indptr))
    return ((U[rows] * s) * Vt.T[R.indices]).sum(1)


@register_model
class PGL(GeneralRecommender):
    is_multimodal = True

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config_value(config, "embedding_size", 64))
        self.knn_k = int(config_value(config, "knn_k", 10))
        self.n_layers = int(config_value(config, "n_layers", 1))
        self.n_ui_layers = int(config_value(config, "n_ui_layers", 2))
        self.reg_weight = float(config_value(config, "reg_weight", 1e-4))
        self.ratio = float(config_value(config, "principal_ratio", 0.5))
        self.extraction = str(config_value(config, "extraction", "local"))
        self.svd_rank = int(config_value(config, "svd_rank", 64))
        image_weight = float(config_value(config, "mm_image_weight", 0.1))
        if self.extraction not in EXTRACTIONS:
            raise MMRecError(f"PGL: extraction must be one of {', '.join(EXTRACTIONS)}, found {self.extraction!r}")
        if not 0.0 < self.ratio <= 1.0:
            raise MMRecError(f"PGL: principal_ratio must be in (0, 1], found {self.ratio}")

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)

        self._R = inter_matrix_csr(dataloader)
        self._R.sort_indices()
        self.full_adj = SparseMat.from_scipy(bipartite_adjacency(self._R), self.device)
        self._global_scores = global_edge_scores(self._R, self.svd_rank) if self.extraction == "global" else None
        self.principal_adj = self.full_adj
        weights = freedom_modality_weights(list(self.mm_feats), image_weight)
        raw = {n: f.detach().cpu() for n, f in self.mm_feats.items()}
        graph = self.graph_cache().get_or_build(
            "freedom_item_graph", {"knn_k": self.knn_k, "weights": dict(weights)}, dict(raw),
            lambda: freedom_item_graph(raw, weights, self.knn_k))
        self.item_adj = SparseMat.from_scipy(graph, self.device)

    # ---- principal subgraph --------------------------------------------------
    def principal_edges(self) -> sp.csr_matrix:
        """The principal subgraph P (binary [U, I]) for the next epoch."""
        if self.extraction == "global":
            return keep_top_per_row(self._R, self._global_scores, self.ratio)
        keys = np.random.random(self._R.nnz)           # numpy's global RNG: seeded and checkpointed
        return keep_top_per_row(self._R, keys, self.ratio)

    def pre_epoch_processing(self) -> None:
        if self.ratio >= 1.0:
            self.principal_adj = self.full_adj
        elif self.extraction == "global" and self.principal_adj is not self.full_adj:
            return                                        # fixed: built on the first epoch
        else:
            self.principal_adj = SparseMat.from_scipy(bipartite_adjacency(self.principal_edges()), self.device)

    # ---- model -------------------------------------------------------------
    def forward(self, adj: SparseMat):
        h = self.item_id_embedding.weight
        for _ in range(self.n_layers):
            h = self.item_adj.mm(h)
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight])
        u, i = torch.split(propagate(adj, ego, self.n_ui_layers), [self.n_users, self.n_items])
        return u, i + h

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all = self.forward(self.principal_adj)
        u = u_all.index_select(0, users)
        bpr = bpr_loss((u * i_all.index_select(0, pos)).sum(-1), (u * i_all.index_select(0, neg)).sum(-1))
        if not self.reg_weight:
            return bpr
        reg = l2_reg(self.user_embedding(users), self.item_id_embedding(pos), self.item_id_embedding(neg))
        return bpr, self.reg_weight * reg

    def full_sort_predict(self, interaction):
        u_all, i_all = self.cached("forward", lambda: self.forward(self.full_adj))
        return u_all[interaction[0]] @ i_all.t()
