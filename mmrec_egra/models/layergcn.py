"""LayerGCN: layer-refined graph convolutional networks for recommendation
(Zhou, Lin, Liu, Miao; ICDE 2023). ID-only; trains on [3, B] batches.

Propagation on the normalised behaviour graph A = D^-1/2 [[0, R], [R^T, 0]] D^-1/2, with
every layer REFINED against the ego (layer-0) embeddings before it is propagated further:
    x^0     = [E_u; E_i]
    z^l     = A x^(l-1)                                  l = 1..L
    x^l     = cos(z^l, x^0) * z^l                        one scalar per node and layer
    final   = sum_{l=1..L} x^l                           (the ego layer itself is not added)
so a layer keeps only as much of each node's smoothed signal as still resembles the
node's own embedding (the paper's answer to over-smoothing in deep GCNs).
Sparse training graph: before each epoch A is rebuilt from (1 - dropout) of the training
edges, sampled without replacement with probability proportional to 1/sqrt(d_u d_i)
(degree-sensitive pruning, `graphs.degree_sensitive_prune`) and re-normalised on the
kept edges; prediction uses the full graph.
Loss: BPR(final) + reg_weight * EmbLoss(ego embeddings of the batch) (unsquared norms / B).

Choices where the paper is silent: the cosine weight is NOT clamped at 0 (a negative
similarity flips the layer, as the equation reads); the pruning seed is drawn from numpy's
global RandomState (covered by the host's seeding and checkpoints, as FREEDOM);
`dropout: 0` trains on the full graph.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, degree_sensitive_prune
from ..losses import bpr_loss, emb_norm_reg
from ..registry import register_model
from .base import PairForwardRecommender, inter_matrix_csr


def layer_refined_propagate(adj, ego: torch.Tensor, n_layers: int) -> torch.Tensor:
    """sum_{l=1..L} x^l with x^l = cos(A x^(l-1), x^0) * (A x^(l-1)), x^0 = ego."""
    x = ego
    acc = None
    for _ in range(n_layers):
        z = adj @ x
        x = F.cosine_similarity(z, ego, dim=-1).unsqueeze(-1) * z
        acc = x if acc is None else acc + x
    return ego if acc is None else acc


@register_model
class LayerGCN(PairForwardRecommender):
    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config_value(config, "embedding_size", 64))
        self.n_layers = int(config_value(config, "n_layers", 4))
        self.reg_weight = float(config_value(config, "reg_weight", 0.0))
        self.dropout = float(config_value(config, "dropout", 0.0))
        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self._R = inter_matrix_csr(dataloader)
        self.norm_adj = SparseMat.from_scipy(bipartite_adjacency(self._R), self.device)
        self.masked_adj = self.norm_adj

    def pre_epoch_processing(self) -> None:
        """Degree-sensitive pruning of the training graph for this epoch."""
        if self.dropout <= 0.0:
            self.masked_adj = self.norm_adj
            return
        rng = np.random.default_rng(np.random.randint(2 ** 31))
        kept = degree_sensitive_prune(self._R, self.dropout, rng)
        self.masked_adj = SparseMat.from_scipy(bipartite_adjacency(kept), self.device)

    def forward(self, adj: SparseMat = None) -> Tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        out = layer_refined_propagate(self.norm_adj if adj is None else adj, ego, self.n_layers)
        return torch.split(out, [self.n_users, self.n_items])

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all = self.forward(self.masked_adj)
        # index_select: the backward of advanced indexing uses atomics (irreproducible)
        u = u_all.index_select(0, users)
        loss = bpr_loss((u * i_all.index_select(0, pos)).sum(-1), (u * i_all.index_select(0, neg)).sum(-1))
        if self.reg_weight != 0.0:
            reg = emb_norm_reg(self.user_embedding(users), self.item_embedding(pos), self.item_embedding(neg))
            loss = loss + self.reg_weight * reg
        return loss
