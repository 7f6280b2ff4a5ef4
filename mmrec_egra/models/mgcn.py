"""MGCN: Multi-View Graph Convolutional Network for multimedia recommendation
(Yu, Li, Wang, Xie, Li; ACM MM'23).

Behaviour view (LightGCN on A_ui = D^-1/2 [[0, R], [R^T, 0]] D^-1/2, n_ui_layers L):
    B = mean_{l=0..L} A_ui^l [E_u; E_i]
Modality view (`ModalityBranch`, any number M of modalities), per modality m:
    p_m = E_i * sigmoid(W_m^g (W_m X_m + b_m) + b_m^g)      behaviour-guided purifier
    i_m = S_m^n p_m, u_m = R_norm i_m                        S_m: cosine 10-NN of X_m,
                                                               D^-1/2 S D^-1/2 (row sums)
    common = sum_m softmax_m(q(e_m)) e_m, side = (sum_m sigmoid(P_m B) * (e_m - common)
             + common) / (M + 1)
Final F = B + side; score(u, i) = F_u . F_i.
Loss (batch [3, B]: users, positive items, negative items):
    BPR(F) + reg_weight * L2(F_u, F_pos, F_neg)
    + cl_loss * (InfoNCE(side_pos, B_pos, cl_temp) + InfoNCE(side_u, B_u, cl_temp))
(InfoNCE: in-batch, cosine similarities, positives on the diagonal)
returned as the tuple (bpr, reg, cl) so the trainer logs the parts.

Documented deviation from MMRec: raw features are fixed inputs unless
`freeze_features: false` (identical forward maths; MMRec lets Adam update them).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Tuple

import torch
import torch.nn as nn

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, propagate
from ..losses import bpr_loss, info_nce, l2_reg
from ..modules import ModalityBranch, modality_knn_graphs, normalized_interactions
from ..registry import register_model
from ..utils import MMRecError
from .base import GeneralRecommender, inter_matrix_csr



@register_model
class MGCN(GeneralRecommender):
    is_multimodal = True

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config_value(config, "embedding_size", 64))
        self.n_ui_layers = int(config_value(config, "n_ui_layers", 2))
        self.n_layers = int(config_value(config, "n_layers", 1))
        self.knn_k = int(config_value(config, "knn_k", 10))
        self.reg_weight = float(config_value(config, "reg_weight", 1e-4))
        self.cl_weight = float(config_value(config, "cl_loss", 0.01))
        self.cl_temp = float(config_value(config, "cl_temp", 0.2))
        if self.cl_temp <= 0:
            raise MMRecError(f"cl_temp must be positive, found {self.cl_temp}")

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)

        R = inter_matrix_csr(dataloader)
        self.norm_adj = SparseMat.of(bipartite_adjacency(R), self.device, symmetric=True)
        self.modality = ModalityBranch(self.mm_feats, self.build_item_graphs(R), normalized_interactions(R), dim,
                                       n_layers=self.n_layers,
                                       freeze_features=config["freeze_features"] is not False)

    def build_item_graphs(self, R) -> "OrderedDict[str, object]":
        """Item-item graph of each modality: MGCN's weighted, self-including cosine kNN of
        the raw features, D^-1/2 S D^-1/2 (subclasses such as SIGE change the graphs)."""
        return modality_knn_graphs(self, self.knn_k, weighted=True, include_self=True)

    # ---- forward ---------------------------------------------------------
    def behaviour_embeddings(self) -> torch.Tensor:
        """LightGCN view on A_ui: mean over layers 0..n_ui_layers, [U+I, d] (users first)."""
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight], dim=0)
        return propagate(self.norm_adj, ego, self.n_ui_layers)

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(behaviour [U+I, d], side [U+I, d]); the scoring vectors are their sum."""
        behaviour = self.behaviour_embeddings()
        side, _ = self.modality(self.item_id_embedding.weight, behaviour)
        return behaviour, side

    # ---- batch pieces shared with EGRA and SIGE ------------------------------
    def batch_rows(self, interaction) -> Tuple[int, torch.Tensor]:
        """(B, rows): the batch's users, positive and negative items as row ids of the
        [U+I] node tables (users first), in that order."""
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        return users.shape[0], torch.cat([users, pos + self.n_users, neg + self.n_users])

    def bpr_and_reg(self, final: torch.Tensor, b: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """BPR and reg_weight * L2 on the batch's final vectors (rows as `batch_rows`)."""
        u, p, n = final[:b], final[b:2 * b], final[2 * b:]
        return bpr_loss((u * p).sum(-1), (u * n).sum(-1)), self.reg_weight * l2_reg(u, p, n)

    # ---- MMRec interface ---------------------------------------------------
    def calculate_loss(self, interaction):
        behaviour = self.behaviour_embeddings()
        per_modality = self.modality.modality_embeddings(self.item_id_embedding.weight)
        # The fusion is row-wise: compute it only for the batch's DISTINCT rows (users, pos,
        # neg; about half of the 3B rows on TikTok) instead of all U+I nodes, then expand.
        # Values equal those of the full forward; gradients up to float summation order.
        b, rows = self.batch_rows(interaction)
        uniq, inverse = torch.unique(rows, return_inverse=True)
        # index_select: its backward (index_add) is cheaper than that of x[rows]
        beh_u = behaviour.index_select(0, uniq)
        side_u = self.modality.fuse({k: v.index_select(0, uniq) for k, v in per_modality.items()}, beh_u)
        beh, side = beh_u.index_select(0, inverse), side_u.index_select(0, inverse)
        bpr, reg = self.bpr_and_reg(beh + side, b)
        if self.cl_weight != 0:
            cl = info_nce(side[b:2 * b], beh[b:2 * b], self.cl_temp) + \
                 info_nce(side[:b], beh[:b], self.cl_temp)
            cl = self.cl_weight * cl
        else:  # skip the contrastive work when it has no weight
            cl = bpr.new_zeros(())
        return bpr, reg, cl

    def _final(self) -> Tuple[torch.Tensor, torch.Tensor]:
        behaviour, side = self.forward()
        final = behaviour + side
        return final[:self.n_users], final[self.n_users:]

    def full_sort_predict(self, interaction):
        u_all, i_all = self.cached("final", self._final)
        return u_all[interaction[0]] @ i_all.t()

    def item_representations(self, kind: str = "final") -> torch.Tensor:
        """Item vectors [n_items, d] (eval mode, detached): 'final' (scoring, B + side),
        'behaviour' (B) or 'modality' (side)."""
        if kind not in ("final", "behaviour", "modality"):
            raise MMRecError(f"item_representations kind must be final, behaviour or modality; found {kind!r}")
        was = self.training
        self.eval()
        with torch.no_grad():
            behaviour, side = self.forward()
        self.train(was)
        parts = {"final": behaviour + side, "behaviour": behaviour, "modality": side}
        return parts[kind][self.n_users:].detach()
