"""FREEDOM: freezing and denoising graph structures for multimodal recommendation
(Zhou & Shen, ACM MM'23). Trains on [3, B] batches (user, positive, negative).

Item graph, built once from the raw features and frozen:
    S_m = D^-1/2 K_m D^-1/2,  K_m = binary kNN(x_m, k) (each item's top-k cosine
          neighbours INCLUDING itself; not symmetrised; D = row sums, so every value is 1/k)
    S   = sum_m w_m S_m,  w_image = mm_image_weight (0.1), the other modalities share
          1 - w_image equally; a single modality gets weight 1; with several modalities
          but no image they share equally. (MMRec: image 0.1, text 0.9; on TikTok audio sits
          in the text slot, which this rule reproduces.)
Embeddings:
    h   = S^L e_item                                    (L = n_layers = 1)
    [u; i] = mean_{l=0..L'} A~^l [e_user; e_item]       (LightGCN, L' = n_ui_layers = 2)
    item = i + h,  score(u, i) = u . item
Degree-sensitive edge pruning: before each epoch A~ is rebuilt from the training edges
kept by sampling (1 - dropout) of them without replacement with probability proportional
to 1/sqrt(d_u d_i), and re-normalised D^-1/2 A D^-1/2 on the kept edges; prediction uses
the full graph. The sampling seed is drawn from numpy's global RandomState, which the
seeding and the trainer's checkpoints cover (resume reproduces the same prunings).
Loss: BPR(u, item_pos, item_neg) + reg_weight * sum_m BPR(u, W_m x_m[pos], W_m x_m[neg])
(MMRec: the text and image terms; here every available modality). The feature terms are
not computed at all when reg_weight == 0. Features are fixed inputs (see _mm_inputs.py;
MMRec trains them as tables: `freeze_features: false`).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Tuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn

from ..config import config_value
from ..graphs import (SparseMat, bipartite_adjacency, degree_sensitive_prune, knn_graph, propagate,
                      sym_normalize)
from ..losses import bpr_loss
from ..registry import register_model
from ._mm_inputs import feature, feature_projections, setup_feature_inputs
from .base import GeneralRecommender, inter_matrix_csr


def freedom_modality_weights(names: List[str], image_weight: float) -> "OrderedDict[str, float]":
    """Weights of the modality graphs: image `image_weight`, the rest share 1 - image_weight.

    One modality -> 1.0; several without an image -> equal shares.
    """
    if len(names) == 1:
        return OrderedDict((n, 1.0) for n in names)
    if "image" in names:
        rest = (1.0 - image_weight) / (len(names) - 1)
        return OrderedDict((n, image_weight if n == "image" else rest) for n in names)
    return OrderedDict((n, 1.0 / len(names)) for n in names)


def freedom_item_graph(feats: Dict[str, torch.Tensor], weights: Dict[str, float], k: int) -> sp.csr_matrix:
    """sum_m w_m * sym_normalize(binary kNN(x_m, k) with self) (scipy CSR, blockwise kNN)."""
    total = None
    for name, x in feats.items():
        g = sym_normalize(knn_graph(x.detach().cpu(), k, weighted=False, include_self=True)) * weights[name]
        total = g if total is None else total + g
    return sp.csr_matrix(total, dtype=np.float32)


@register_model
class FREEDOM(GeneralRecommender):
    is_multimodal = True

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config["embedding_size"])
        self.knn_k = int(config_value(config, "knn_k", 10))
        self.n_layers = int(config_value(config, "n_layers", 1))
        self.n_ui_layers = int(config_value(config, "n_ui_layers", 2))
        self.dropout = float(config_value(config, "dropout", 0.8))
        self.reg_weight = float(config_value(config, "reg_weight", 0.0))
        self.image_weight = float(config_value(config, "mm_image_weight", 0.1))

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        setup_feature_inputs(self, config)
        self.projections = feature_projections(self, dim, init="xavier_normal")

        self._R = inter_matrix_csr(dataloader)
        self.norm_adj = SparseMat.from_scipy(bipartite_adjacency(self._R), self.device)
        self.masked_adj = self.norm_adj
        self.modality_weights = freedom_modality_weights(list(self.mm_feats), self.image_weight)
        raw = OrderedDict((n, f.detach().cpu()) for n, f in self.mm_feats.items())
        graph = self.graph_cache().get_or_build(
            "freedom_item_graph", {"knn_k": self.knn_k, "weights": dict(self.modality_weights)}, dict(raw),
            lambda: freedom_item_graph(raw, self.modality_weights, self.knn_k))
        self.mm_adj = SparseMat.from_scipy(graph, self.device)

    # ---- graphs ------------------------------------------------------------
    def pre_epoch_processing(self) -> None:
        """Degree-sensitive pruning of the user-item graph for this epoch."""
        if self.dropout <= 0.0:
            self.masked_adj = self.norm_adj
            return
        rng = np.random.default_rng(np.random.randint(2 ** 31))
        kept = degree_sensitive_prune(self._R, self.dropout, rng)
        self.masked_adj = SparseMat.from_scipy(bipartite_adjacency(kept), self.device)

    # ---- model -------------------------------------------------------------
    def forward_parts(self, adj: SparseMat) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(users, LightGCN items, item-graph part h)."""
        h = self.item_id_embedding.weight
        for _ in range(self.n_layers):
            h = self.mm_adj.mm(h)
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight], dim=0)
        out = propagate(adj, ego, self.n_ui_layers)
        u, i = torch.split(out, [self.n_users, self.n_items])
        return u, i, h

    def forward(self, adj: SparseMat = None):
        u, i, h = self.forward_parts(self.norm_adj if adj is None else adj)
        return u, i + h

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all = self.forward(self.masked_adj)
        # index_select, not u_all[users]: the backward of advanced indexing accumulates
        # with atomics on CPU threads, which makes training irreproducible
        u = u_all.index_select(0, users)
        loss = bpr_loss((u * i_all.index_select(0, pos)).sum(-1), (u * i_all.index_select(0, neg)).sum(-1))
        if self.reg_weight != 0.0:
            feat_loss = 0.0
            for name, proj in self.projections.items():
                x = feature(self, name)
                # project only the batch rows: the same values as projecting every item
                fp, fn = proj(x.index_select(0, pos)), proj(x.index_select(0, neg))
                feat_loss = feat_loss + bpr_loss((u * fp).sum(-1), (u * fn).sum(-1))
            loss = loss + self.reg_weight * feat_loss
        return loss

    def full_sort_predict(self, interaction):
        u_all, i_all = self.cached("forward", lambda: self.forward(self.norm_adj))
        return u_all[interaction[0]] @ i_all.t()

    def item_representations(self, kind: str = "final") -> torch.Tensor:
        was = self.training
        self.eval()
        with torch.no_grad():
            _, i, h = self.forward_parts(self.norm_adj)
        self.train(was)
        return {"final": i + h, "behaviour": i, "modality": h}[kind]
