"""DualGNN: dual graph neural network for multimedia recommendation
(Wang, Wei, Yin, Li, Nie; IEEE Transactions on Multimedia 2021). Trains on [3, B] batches.

Two graphs: the user-item graph carries each modality's signal, and a user co-occurrence
graph lets users borrow the (fused) preferences of users who consumed the same items.
Single-modal representations, per modality m (any number of modalities):
    item input  h^m = leaky_relu(W_m x^m + b_m)              [I, d]
    user input  P_m (learned)                                 [U, d]
    [u^m; i^m] = mean_{l=0..L} A^l [P_m; h^m],  A = D^-1/2 [[0, R], [R^T, 0]] D^-1/2
Multi-modal fusion of the user side (`fusion: weighted`): per-user weights over the
modalities, alpha_u = softmax(a_u) with a learned [U, M] table (zeros at start: equal
weights), u = sum_m alpha_um u^m; `fusion: mean` uses equal weights throughout.
User co-occurrence graph: C_uv = number of items u and v share; each user keeps its top-k
(user_knn_k) co-occurring users (`graphs.co_interaction_graph` on R^T, ties to the lower
id), rows normalised to sum 1 (G = D^-1 C). Final user: u* = u + G u (user_graph_layers
hops of G, added), so a user's representation mixes in its neighbours' preferences.
Item: i* = E_i + (1/M) sum_m i^m (a learned item ID embedding plus the modality views).
Score: u* . i*. Loss: BPR + reg_weight * L2 (half squared norms / B) of the batch's P_m
rows and item ID rows.

Choices where the paper is silent or offers options: LightGCN-style propagation (mean
over layers, no transforms) for the single-modal GCNs; the item ID embedding added to the
mean of the modality views; the co-occurrence counts, row-normalised, as the user-graph
weights (the paper's softmax over neighbours needs a per-pair score; counts are what the
graph holds); the user graph is fixed (built once from the training matrix).
Features are fixed inputs (`freeze_features: false`: trainable tables, see _mm_inputs.py).
"""
from __future__ import annotations

from typing import Tuple

import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, co_interaction_graph, propagate, row_normalize
from ..losses import bpr_loss, l2_reg
from ..registry import register_model
from ..utils import MMRecError
from ._mm_inputs import feature, feature_projections, setup_feature_inputs
from .base import GeneralRecommender, inter_matrix_csr


def user_cooccurrence_graph(inter: sp.spmatrix, k: int) -> sp.csr_matrix:
    """Row-normalised top-k user co-occurrence graph [U, U] (C_uv = shared items, no self loops)."""
    return row_normalize(co_interaction_graph(sp.csr_matrix(inter).T, k, norm="count"))


@register_model
class DualGNN(GeneralRecommender):
    is_multimodal = True

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config_value(config, "embedding_size", 64))
        self.n_layers = int(config_value(config, "n_layers", 2))
        self.user_knn_k = int(config_value(config, "user_knn_k", 10))
        self.user_graph_layers = int(config_value(config, "user_graph_layers", 1))
        self.reg_weight = float(config_value(config, "reg_weight", 1e-4))
        self.fusion = str(config_value(config, "fusion", "weighted"))
        if self.fusion not in ("weighted", "mean"):
            raise MMRecError(f"DualGNN: fusion must be 'weighted' or 'mean', found {self.fusion!r}; "
                             f"set it in configs/model/DualGNN.yaml")
        if self.user_knn_k < 1:
            raise MMRecError(f"DualGNN: user_knn_k must be >= 1, found {self.user_knn_k}")
        self.names = list(self.mm_feats)
        self.item_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        setup_feature_inputs(self, config)
        self.projections = feature_projections(self, dim, init="xavier_normal")
        self.user_pref = nn.ParameterDict()
        for m in range(len(self.names)):
            p = nn.Parameter(torch.empty(self.n_users, dim))
            nn.init.xavier_uniform_(p)
            self.user_pref[str(m)] = p             # by position: modality names need not be identifiers
        self.fusion_logits = nn.Parameter(torch.zeros(self.n_users, len(self.names)))

        R = inter_matrix_csr(dataloader)
        self.norm_adj = SparseMat.of(bipartite_adjacency(R), self.device, symmetric=True)
        G = self.graph_cache().get_or_build("user_cooccurrence", {"k": self.user_knn_k}, {"inter": R},
                                            lambda: user_cooccurrence_graph(R, self.user_knn_k))
        self.user_graph = SparseMat.of(G, self.device)

    def modality_views(self):
        """[(u^m [U, d], i^m [I, d]) for each modality]."""
        out = []
        for m, name in enumerate(self.names):
            h = F.leaky_relu(self.projections[name](feature(self, name)))
            x = propagate(self.norm_adj, torch.cat([self.user_pref[str(m)], h]), self.n_layers)
            out.append(torch.split(x, [self.n_users, self.n_items]))
        return out

    def fusion_weights(self) -> torch.Tensor:
        """alpha [U, M], rows sum to 1."""
        if self.fusion == "mean":
            return torch.full_like(self.fusion_logits, 1.0 / len(self.names))
        return torch.softmax(self.fusion_logits, dim=1)

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        views = self.modality_views()
        alpha = self.fusion_weights()
        u = sum(alpha[:, m:m + 1] * v[0] for m, v in enumerate(views))
        x = u
        for _ in range(self.user_graph_layers):
            x = self.user_graph @ x
            u = u + x
        i = self.item_embedding.weight + sum(v[1] for v in views) / len(views)
        return u, i

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all = self.forward()
        # index_select: the backward of advanced indexing uses atomics (irreproducible)
        u = u_all.index_select(0, users)
        loss = bpr_loss((u * i_all.index_select(0, pos)).sum(-1), (u * i_all.index_select(0, neg)).sum(-1))
        if self.reg_weight != 0.0:
            parts = [p.index_select(0, users) for p in self.user_pref.values()]
            parts += [self.item_embedding(pos), self.item_embedding(neg)]
            loss = loss + self.reg_weight * l2_reg(*parts)
        return loss

    def full_sort_predict(self, interaction):
        u_all, i_all = self.cached("forward", self.forward)
        return u_all[interaction[0]] @ i_all.t()
