"""LightGCN: simplifying graph convolution for recommendation (He et al., SIGIR'20).

E^(l+1) = A_ui E^(l) with A_ui = D^-1/2 [[0, R], [R^T, 0]] D^-1/2; final embeddings are
the mean over layers 0..L; score e_u . e_i; loss BPR + reg_weight * EmbLoss (unsquared norms / B, as MMRec) of the layer-0
(ego) embeddings of the batch. Trains on [3, B] batches.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..graphs import SparseMat, bipartite_adjacency, propagate
from ..losses import bpr_loss, emb_norm_reg
from ..registry import register_model
from .base import PairForwardRecommender, inter_matrix_csr


@register_model
class LightGCN(PairForwardRecommender):
    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = config["embedding_size"]
        self.n_layers = int(config["n_layers"] if config["n_layers"] is not None else 2)
        self.reg_weight = float(config["reg_weight"] or 0.0)
        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        # symmetric: A^T is A (no transpose copy: ~0.4 GiB saved at 1M x 20M)
        self.norm_adj = SparseMat.of(bipartite_adjacency(inter_matrix_csr(dataloader)), self.device, symmetric=True)

    def forward(self):
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        out = propagate(self.norm_adj, ego, self.n_layers)
        return torch.split(out, [self.n_users, self.n_items])

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all = self.forward()
        u, p, n = u_all[users], i_all[pos], i_all[neg]
        loss = bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        reg = emb_norm_reg(self.user_embedding(users), self.item_embedding(pos), self.item_embedding(neg))
        return loss + self.reg_weight * reg

