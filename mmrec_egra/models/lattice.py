"""LATTICE: mining latent structures for multimedia recommendation (Zhang et al., MM'21).
Trains on [3, B] batches (user, positive, negative).

Per available modality m (features x_m fixed, projections learned):
    z_m = W_m x_m + b_m
    S_m = D^-1/2 kNN(z_m, k) D^-1/2          learned graph: each item's top-k cosine
                                             neighbours (self included), weighted by the
                                             cosines, D = row sums
    O_m = D^-1/2 kNN(x_m, k) D^-1/2          the same on the raw features, built once
    A_m = (1 - lambda_coeff) S_m + lambda_coeff O_m
    A   = sum_m softmax(alpha)_m A_m         learned modality weights alpha
Embeddings:
    h = A^L e_item                                         (L = n_layers = 1)
    [u; i] = mean_{l=0..L'} A~_ui^l [e_user; e_item]       (LightGCN, L' = n_ui_layers = 2)
    item = i + h / ||h||,  score(u, i) = u . item
Loss: BPR + reg_weight * L2 of the batch's final user / positive / negative embeddings.

The learned graph: the neighbour indices are discrete (chosen blockwise without a dense
items x items matrix, graphs.knn_graph_torch); the kept cosine values are recomputed from
z_m and carry gradients into W_m, and softmax(alpha) does into alpha. When it is rebuilt
(`lattice_graph_refresh`):
  epoch (default): at the first training step of each epoch, with gradients; the rest of
         the epoch's steps reuse it detached. This is what the authors' code and MMRec do.
  step:  at every training step, with gradients (costs one kNN search per step).
Evaluation rebuilds it once from the current projections and caches the result for all
user batches (MMRec rebuilds a dense graph for every evaluation batch: same values).
Normalisation order follows the paper (normalise each learned S_m, then mix); MMRec mixes
the unnormalised learned kNN graphs of the modalities first and normalises the sum.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, knn_graph, knn_graph_torch, propagate, sym_normalize
from ..losses import bpr_loss, l2_reg
from ..registry import register_model
from ..utils import MMRecError
from ._mm_inputs import feature, feature_projections, setup_feature_inputs
from .base import PairForwardRecommender, inter_matrix_csr


@register_model
class LATTICE(PairForwardRecommender):
    is_multimodal = True

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config["embedding_size"])
        self.knn_k = int(config_value(config, "knn_k", 10))
        self.lambda_coeff = float(config_value(config, "lambda_coeff", 0.9))
        self.n_layers = int(config_value(config, "n_layers", 1))
        self.n_ui_layers = int(config_value(config, "n_ui_layers", 2))
        self.reg_weight = float(config_value(config, "reg_weight", 0.0))
        self.refresh = str(config_value(config, "lattice_graph_refresh", "epoch")).lower()
        if self.refresh not in ("epoch", "step"):
            raise MMRecError(f"lattice_graph_refresh must be 'epoch' or 'step', found {self.refresh!r}")

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        setup_feature_inputs(self, config)
        self.projections = feature_projections(self, int(config_value(config, "feat_embed_dim", dim)))
        # equal weights at the start (softmax of zeros)
        self.modal_weight = nn.Parameter(torch.zeros(len(self.mm_feats)))

        self.norm_adj = SparseMat.from_scipy(bipartite_adjacency(inter_matrix_csr(dataloader)), self.device)
        cache = self.graph_cache()
        self.original_adj = OrderedDict()
        for name, x in self.mm_feats.items():
            raw = x.detach().cpu()
            g = cache.get_or_build("lattice_original_graph", {"knn_k": self.knn_k}, {"features": raw},
                                   lambda raw=raw: sym_normalize(knn_graph(raw, self.knn_k, weighted=True,
                                                                           include_self=True)))
            self.original_adj[name] = SparseMat.from_scipy(g, self.device)
        self._item_adj: Optional[SparseMat] = None
        self._rebuild = True

    # ---- item graph --------------------------------------------------------
    def build_item_graph(self) -> SparseMat:
        """A = sum_m softmax(alpha)_m [(1 - lambda) S_m + lambda O_m] (values keep gradients)."""
        w = torch.softmax(self.modal_weight, dim=0)
        mats, weights = [], []
        for idx, (name, proj) in enumerate(self.projections.items()):
            learned = knn_graph_torch(proj(feature(self, name)), self.knn_k, include_self=True).sym_normalized()
            mats += [learned, self.original_adj[name]]
            weights += [w[idx] * (1.0 - self.lambda_coeff), w[idx] * self.lambda_coeff]
        return SparseMat.add(mats, weights)

    def pre_epoch_processing(self) -> None:
        self._rebuild = True

    def item_graph(self) -> SparseMat:
        """The graph for this step (training) or this evaluation (cached)."""
        if not self.training:
            return self.cached("item_graph", self.build_item_graph)
        if self.refresh == "step" or self._rebuild or self._item_adj is None:
            adj = self.build_item_graph()
            self._item_adj = adj.detach()
            self._rebuild = False
            return adj
        return self._item_adj

    # ---- model -------------------------------------------------------------
    def forward_parts(self, item_adj: SparseMat) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(users, LightGCN items, item-graph part h)."""
        h = self.item_id_embedding.weight
        for _ in range(self.n_layers):
            h = item_adj.mm(h)
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight], dim=0)
        out = propagate(self.norm_adj, ego, self.n_ui_layers)
        u, i = torch.split(out, [self.n_users, self.n_items])
        return u, i, h

    def forward(self, item_adj: Optional[SparseMat] = None):
        u, i, h = self.forward_parts(self.item_graph() if item_adj is None else item_adj)
        return u, i + F.normalize(h, p=2, dim=1)

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all = self.forward()
        # index_select: its backward is deterministic on CPU threads (x[idx]'s is not)
        u, p, n = u_all.index_select(0, users), i_all.index_select(0, pos), i_all.index_select(0, neg)
        loss = bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        if self.reg_weight != 0.0:
            loss = loss + self.reg_weight * l2_reg(u, p, n)
        return loss

    def item_representations(self, kind: str = "final") -> torch.Tensor:
        was = self.training
        self.eval()
        with torch.no_grad():
            _, i, h = self.forward_parts(self.item_graph())
        self.train(was)
        return {"final": i + F.normalize(h, p=2, dim=1), "behaviour": i, "modality": h}[kind]
