"""SelfCF_ed with a LightGCN backbone (SELFCFED_LGN): self-supervised collaborative
filtering without negative samples (Zhou, Yu, Guo, Wang, Miao; ACM TORS 2023, "SelfCF: A
Simple Framework for Self-supervised Collaborative Filtering"). ID-only.

Online encoder: LightGCN on A = D^-1/2 [[0, R], [R^T, 0]] D^-1/2,
    [u; i] = mean_{l=0..L} A^l [E_u; E_i]
Predictor: one linear layer h: R^d -> R^d shared by users and items.
Target ("embedding dropout", the _ed variant): the SAME encoder output, perturbed by
dropout with rate `dropout` and treated as a constant (stop-gradient):
    u' = sg(dropout(u)),  i' = sg(dropout(i))
Loss over the observed pairs (u, i) of the batch (only the first two rows of a [3, B]
batch are read; the sampled negatives are ignored):
    L = mean_{(u,i)} [ (1 - cos(h(u), i')) + (1 - cos(h(i), u')) ] / 2
        + reg_weight * EmbLoss(E_u[u], E_i[i])
Score: s(u, i) = h(u) . i + u . h(i)  (both directions the predictor was trained for).

Choices where the paper is silent or leaves options: the two directions are averaged (so
the loss lies in [0, 2]); the dropout mask is fresh per step, drawn from torch's seeded
generator (deterministic for a seed); `reg_weight` (EmbLoss on the ego embeddings of the
batch) defaults to 0, the paper's objective.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, propagate
from ..losses import emb_norm_reg
from ..registry import register_model
from ..utils import MMRecError
from .base import GeneralRecommender, inter_matrix_csr


def selfcf_loss(h_u: torch.Tensor, h_i: torch.Tensor, u_target: torch.Tensor, i_target: torch.Tensor) -> torch.Tensor:
    """mean over pairs of [(1 - cos(h_u, i')) + (1 - cos(h_i, u'))] / 2 (targets taken as constants)."""
    loss_ui = 1.0 - F.cosine_similarity(h_u, i_target.detach(), dim=-1)
    loss_iu = 1.0 - F.cosine_similarity(h_i, u_target.detach(), dim=-1)
    return ((loss_ui + loss_iu) / 2).mean()


@register_model(aliases=["SelfCF"])
class SELFCFED_LGN(GeneralRecommender):
    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config_value(config, "embedding_size", 64))
        self.n_layers = int(config_value(config, "n_layers", 2))
        self.dropout = float(config_value(config, "dropout", 0.1))
        self.reg_weight = float(config_value(config, "reg_weight", 0.0))
        if not 0.0 <= self.dropout < 1.0:
            raise MMRecError(f"SELFCFED_LGN: dropout must be in [0, 1), found {self.dropout}; "
                             f"set e.g. `dropout: 0.1` in configs/model/SELFCFED_LGN.yaml or on the command line")
        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.predictor = nn.Linear(dim, dim)
        self.norm_adj = SparseMat.of(bipartite_adjacency(inter_matrix_csr(dataloader)), self.device, symmetric=True)

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Online encoder output (users, items)."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        out = propagate(self.norm_adj, ego, self.n_layers)
        return torch.split(out, [self.n_users, self.n_items])

    def calculate_loss(self, interaction):
        users, items = interaction[0], interaction[1]
        u_all, i_all = self.forward()
        # index_select: the backward of advanced indexing uses atomics (irreproducible)
        u, i = u_all.index_select(0, users), i_all.index_select(0, items)
        with torch.no_grad():
            u_t = F.dropout(u, self.dropout, training=True)
            i_t = F.dropout(i, self.dropout, training=True)
        loss = selfcf_loss(self.predictor(u), self.predictor(i), u_t, i_t)
        if self.reg_weight != 0.0:
            loss = loss + self.reg_weight * emb_norm_reg(self.user_embedding(users), self.item_embedding(items))
        return loss

    def _scoring(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        u_all, i_all = self.forward()
        return u_all, i_all, self.predictor(u_all), self.predictor(i_all)

    def full_sort_predict(self, interaction):
        u_all, i_all, hu_all, hi_all = self.cached("scoring", self._scoring)
        users = interaction[0]
        return hu_all[users] @ i_all.t() + u_all[users] @ hi_all.t()
