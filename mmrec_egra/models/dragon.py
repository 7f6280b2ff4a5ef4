"""DRAGON: enhancing dyadic relations with homogeneous graphs for multimodal recommendation
(H. Zhou, X. Zhou, Zhang & Shen; ECAI 2023). Trains on [3, B] batches (user, positive, negative).

Heterogeneous (user-item) graph, one view per modality m:
    x_i^m = MLP_m(f_i^m)                       MLP: Linear(f_m, 4d) -> LeakyReLU -> Linear(4d, d)
    E_m^0 = normalize_rows([P_m; x^m])         P_m: learned user preferences of modality m, [U, d]
    E_m   = sum_{l=0..L} A_ui^l E_m^0          A_ui = D^-1/2 [[0, R], [R^T, 0]] D^-1/2, L = n_ui_layers (2)
Fusion by concatenation over the modalities: u = [u_m1 || u_m2 ...], i = [i_m1 || ...] ([*, M d]).
Homogeneous graphs, both built once and frozen:
    item-item S = sum_m w_m D^-1/2 K_m D^-1/2 (binary kNN of the raw features, k = knn_k, self
                 included; image weight mm_image_weight, the rest share 1 - w: FREEDOM's graph,
                 `freedom_item_graph`), item = i + S^Lh i  (Lh = n_mm_layers, 1)
    user-user  G: each user's top user_knn_k users by number of co-interacted items (ties: lower
                 id), edge weights softmax over those counts per row; user = u + G u
Score u . item. Loss: BPR + reg_weight * sum_m mean((P_m[users])^2) (the preference tables of
the batch users, as the paper's regulariser on the user preferences).

Choices where the paper is silent (all keys): the MLP width 4d and LeakyReLU; rows of
[P_m; x^m] are L2-normalised before propagation and the layers are summed, not averaged;
the user graph keeps user_knn_k = 40 neighbours; users without co-interacting users have
no neighbour term. No item-ID view: the representation is made of the modalities only
(the paper's M). Features are fixed inputs (`freeze_features: true`, see _mm_inputs.py).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Tuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, co_interaction_graph, propagate
from ..losses import bpr_loss
from ..registry import register_model
from ._mm_inputs import feature, setup_feature_inputs
from .base import PairForwardRecommender, inter_matrix_csr
from .freedom import freedom_item_graph, freedom_modality_weights


def user_cooccurrence_graph(inter: sp.spmatrix, k: int) -> sp.csr_matrix:
    """[U, U] CSR: each user's top-k users by co-interacted item count (self excluded, ties by
    lower id), weights softmax over the kept counts of the row (rows sum to 1; users sharing
    no item with anyone stay empty rows)."""
    counts = co_interaction_graph(sp.csr_matrix(inter).T, int(k), norm="count")   # users as "items"
    counts = sp.csr_matrix(counts, dtype=np.float64)
    lengths = np.diff(counts.indptr)
    if counts.nnz == 0:
        return sp.csr_matrix(counts, dtype=np.float32)
    starts = counts.indptr[:-1][lengths > 0]
    row_max = np.repeat(np.maximum.reduceat(counts.data, starts), lengths[lengths > 0])
    e = np.exp(counts.data - row_max)                     # max-shifted: no overflow for big counts
    denom = np.repeat(np.add.reduceat(e, starts), lengths[lengths > 0])
    out = sp.csr_matrix((e / denom, counts.indices.copy(), counts.indptr.copy()), shape=counts.shape)
    return sp.csr_matrix(out, dtype=np.float32)


@register_model
class DRAGON(PairForwardRecommender):
    is_multimodal = True

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config_value(config, "feat_embed_dim", config["embedding_size"]))
        self.dim = dim
        self.knn_k = int(config_value(config, "knn_k", 10))
        self.user_knn_k = int(config_value(config, "user_knn_k", 40))
        self.n_ui_layers = int(config_value(config, "n_ui_layers", 2))
        self.n_mm_layers = int(config_value(config, "n_mm_layers", 1))
        self.reg_weight = float(config_value(config, "reg_weight", 1e-4))
        self.image_weight = float(config_value(config, "mm_image_weight", 0.1))
        self.names = list(self.mm_feats)

        setup_feature_inputs(self, config)
        self.mlps = nn.ModuleList([
            nn.Sequential(nn.Linear(self.mm_feats[n].shape[1], 4 * dim), nn.LeakyReLU(), nn.Linear(4 * dim, dim))
            for n in self.names])
        self.preferences = nn.ParameterList([
            nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, dim))) for _ in self.names])

        R = inter_matrix_csr(dataloader)
        self.norm_adj = SparseMat.from_scipy(bipartite_adjacency(R), self.device)
        cache = self.graph_cache()
        self.modality_weights = freedom_modality_weights(self.names, self.image_weight)
        raw = OrderedDict((n, f.detach().cpu()) for n, f in self.mm_feats.items())
        item_graph = cache.get_or_build(
            "freedom_item_graph", {"knn_k": self.knn_k, "weights": dict(self.modality_weights)}, dict(raw),
            lambda: freedom_item_graph(raw, self.modality_weights, self.knn_k))
        self.item_adj = SparseMat.from_scipy(item_graph, self.device)
        user_graph = cache.get_or_build("dragon_user_graph", {"k": self.user_knn_k}, {"R": R},
                                        lambda: user_cooccurrence_graph(R, self.user_knn_k))
        self.user_adj = SparseMat.from_scipy(user_graph, self.device)

    # ---- model -------------------------------------------------------------
    def modality_views(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Concatenated heterogeneous-graph views (users [U, M d], items [I, M d])."""
        users, items = [], []
        for m, name in enumerate(self.names):
            x = self.mlps[m](feature(self, name))
            ego = F.normalize(torch.cat([self.preferences[m], x], dim=0), dim=1)
            out = propagate(self.norm_adj, ego, self.n_ui_layers, mean=False)
            u, i = torch.split(out, [self.n_users, self.n_items])
            users.append(u)
            items.append(i)
        return torch.cat(users, dim=1), torch.cat(items, dim=1)

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        u, i = self.modality_views()
        h = i
        for _ in range(self.n_mm_layers):
            h = self.item_adj.mm(h)
        return u + self.user_adj.mm(u), i + h

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all = self.forward()
        # index_select: deterministic backward on CPU (advanced indexing accumulates with atomics)
        u = u_all.index_select(0, users)
        loss = bpr_loss((u * i_all.index_select(0, pos)).sum(-1), (u * i_all.index_select(0, neg)).sum(-1))
        if self.reg_weight != 0.0:
            reg = sum(p.index_select(0, users).pow(2).mean() for p in self.preferences)
            loss = loss + self.reg_weight * reg
        return loss

