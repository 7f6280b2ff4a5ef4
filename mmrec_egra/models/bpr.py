"""BPR: Bayesian Personalized Ranking from implicit feedback (Rendle et al., UAI'09).

Matrix factorisation s(u, i) = e_u . e_i trained with the pairwise loss
L = -mean log sigmoid(s(u, i+) - s(u, i-)) + reg_weight * (sum of Frobenius norms of the batch embeddings) / B  (MMRec EmbLoss).
Trains on [3, B] batches (user, positive, negative).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..losses import bpr_loss, emb_norm_reg
from ..registry import register_model
from .base import GeneralRecommender


@register_model
class BPR(GeneralRecommender):
    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = config["embedding_size"]
        self.reg_weight = float(config["reg_weight"] or 0.0)
        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_embedding.weight)

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u = self.user_embedding(users)
        p = self.item_embedding(pos)
        n = self.item_embedding(neg)
        loss = bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        return loss + self.reg_weight * emb_norm_reg(u, p, n)

    def full_sort_predict(self, interaction):
        users = interaction[0]
        return self.user_embedding(users) @ self.item_embedding.weight.t()

    def item_representations(self, kind: str = "final") -> torch.Tensor:
        return self.item_embedding.weight.detach()
