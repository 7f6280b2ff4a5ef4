"""GRCN: graph-refined convolutional network for multimedia recommendation with implicit
feedback (Wei, Wang, Nie, He, Chua; ACM MM 2020). Trains on [3, B] batches.

Implicit feedback holds false-positive edges; GRCN re-weights (and prunes) every
user-item edge from how well the item's content matches the user's preference in each
modality, then convolves on the refined graph.
Per modality m (any number of modalities):
    h_i^m = normalize(leaky_relu(W_m x_i^m))                      item content, unit d-vectors
    user preference by routing (routing_iters rounds T), from a learned P_m:
        p_u <- normalize(P_m[u]),  repeat T times:
        alpha_ui = softmax_{i in N(u)} (p_u . h_i^m),  p_u <- normalize(P_m[u] + sum_i alpha_ui h_i^m)
    edge confidence a^m_ui = p_u^m . h_i^m  (a cosine, in [-1, 1])
Refined edge weight  w_ui = relu(max_m a^m_ui)  (`grcn_weight_mode: max`; `mean` averages):
an edge no modality supports gets weight 0, i.e. is pruned.
Graph convolution on A_w = D^-1/2 [[0, W], [W^T, 0]] D^-1/2 (D from the refined weights),
LightGCN-style mean over layers 0..L (n_layers) for
    the ID view [E_u; E_i] and every modality view [p^m; h^m].
Representation: the concatenation [id | view_1 | ... | view_M] (d * (M + 1) wide);
score = inner product. Loss: BPR + reg_weight * L2 (half squared norms / B) of the batch's
ego ID embeddings and user preference rows.

Choices where the paper is silent or we simplified: unit-norm content and preferences
(so the routing softmax needs no max-shift and the confidences are cosines); the routing
softmax is over a user's training items only; gradients flow through the routing and the
refined weights (the graph is rebuilt every step); the weights are symmetrically
normalised by their refined degrees; one graph layer by default.
Features are fixed inputs (`freeze_features: false`: trainable tables, see _mm_inputs.py).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Tuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, propagate
from ..losses import bpr_loss, l2_reg
from ..registry import register_model
from ..utils import MMRecError
from ._mm_inputs import feature, feature_projections, setup_feature_inputs
from .base import GeneralRecommender, inter_matrix_csr


def routed_preferences(R: SparseMat, base: torch.Tensor, content: torch.Tensor, iters: int) -> torch.Tensor:
    """User preferences by routing over each user's items (R: [U, I] pattern, values unused).

    p = normalize(base); T times: alpha = softmax over the user's items of p_u . h_i,
    p = normalize(base + sum_i alpha_ui h_i). `content` rows must be unit vectors.
    """
    p = F.normalize(base, dim=-1)
    for _ in range(iters):
        score = R.edge_dots(p, content)
        e = score.exp()                                    # |score| <= 1: no overflow
        denom = R.with_values(e).row_sums().clamp_min(1e-12)
        alpha = e / denom.index_select(0, R.rows)
        p = F.normalize(base + R.with_values(alpha).mm(content), dim=-1)
    return p


@register_model
class GRCN(GeneralRecommender):
    is_multimodal = True

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config_value(config, "embedding_size", 64))
        self.n_layers = int(config_value(config, "n_layers", 1))
        self.routing_iters = int(config_value(config, "routing_iters", 3))
        self.reg_weight = float(config_value(config, "reg_weight", 1e-4))
        self.weight_mode = str(config_value(config, "grcn_weight_mode", "max"))
        if self.weight_mode not in ("max", "mean"):
            raise MMRecError(f"GRCN: grcn_weight_mode must be 'max' or 'mean', found {self.weight_mode!r}; "
                             f"set it in configs/model/GRCN.yaml")
        self.names = list(self.mm_feats)
        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        setup_feature_inputs(self, config)
        self.projections = feature_projections(self, dim, init="xavier_normal")
        self.user_pref = nn.ParameterDict()
        for m in range(len(self.names)):
            p = nn.Parameter(torch.empty(self.n_users, dim))
            nn.init.xavier_uniform_(p)
            self.user_pref[str(m)] = p             # by position: modality names need not be identifiers

        R = inter_matrix_csr(dataloader)
        R.sort_indices()
        self.R = SparseMat.from_scipy(R, self.device)          # edges in CSR order = edge ids
        # the (U+I) x (U+I) pattern and, per entry, the id of its user-item edge
        full = sp.csr_matrix(bipartite_adjacency(R, normalize=False))
        full.sort_indices()
        self.pattern = SparseMat.from_scipy(full, self.device)
        rows = np.repeat(np.arange(full.shape[0]), np.diff(full.indptr))
        cols = full.indices
        u = np.where(rows < self.n_users, rows, cols)
        i = np.where(rows < self.n_users, cols, rows) - self.n_users
        # edge id = position of (u, i) among R's (row, col)-sorted entries
        r_rows = np.repeat(np.arange(R.shape[0]), np.diff(R.indptr)).astype(np.int64)
        edge = np.searchsorted(r_rows * self.n_items + R.indices, u.astype(np.int64) * self.n_items + i)
        self.entry_edge = torch.from_numpy(edge.astype(np.int64)).to(self.device)
        # the transposed structures, once: every with_values() copy shares them (else each
        # step's backward would sort the pattern again)
        self.R.transpose_structure()
        self.pattern.transpose_structure()

    # ---- the refined graph ---------------------------------------------------
    def modality_parts(self) -> Tuple["OrderedDict[str, torch.Tensor]", "OrderedDict[str, torch.Tensor]"]:
        """({m: item content h^m [I, d]}, {m: routed user preference p^m [U, d]})."""
        content, prefs = OrderedDict(), OrderedDict()
        for m, name in enumerate(self.names):
            h = F.normalize(F.leaky_relu(self.projections[name](feature(self, name))), dim=-1)
            content[name] = h
            prefs[name] = routed_preferences(self.R, self.user_pref[str(m)], h, self.routing_iters)
        return content, prefs

    def edge_weights(self, content: Dict[str, torch.Tensor], prefs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """w_e = relu(max_m (or mean_m) p_u^m . h_i^m) for every training edge e (CSR order of R)."""
        conf = torch.stack([self.R.edge_dots(prefs[n], content[n]) for n in self.names])
        agg = conf.max(0).values if self.weight_mode == "max" else conf.mean(0)
        return F.relu(agg)

    def refined_graph(self, w: torch.Tensor) -> SparseMat:
        """D^-1/2 [[0, W], [W^T, 0]] D^-1/2 with the refined edge weights."""
        return self.pattern.with_values(w.index_select(0, self.entry_edge)).sym_normalized()

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        content, prefs = self.modality_parts()
        A = self.refined_graph(self.edge_weights(content, prefs))
        views = [propagate(A, torch.cat([self.user_embedding.weight, self.item_embedding.weight]), self.n_layers)]
        for n in self.names:
            views.append(propagate(A, torch.cat([prefs[n], content[n]]), self.n_layers))
        out = torch.cat(views, dim=-1)
        return torch.split(out, [self.n_users, self.n_items])

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all = self.forward()
        # index_select: the backward of advanced indexing uses atomics (irreproducible)
        u = u_all.index_select(0, users)
        loss = bpr_loss((u * i_all.index_select(0, pos)).sum(-1), (u * i_all.index_select(0, neg)).sum(-1))
        if self.reg_weight != 0.0:
            parts = [self.user_embedding(users), self.item_embedding(pos), self.item_embedding(neg)]
            parts += [p.index_select(0, users) for p in self.user_pref.values()]
            loss = loss + self.reg_weight * l2_reg(*parts)
        return loss

    def full_sort_predict(self, interaction):
        u_all, i_all = self.cached("forward", self.forward)
        return u_all[interaction[0]] @ i_all.t()
