"""MENTOR: multi-level self-supervised learning for multimodal recommendation
(Xu, Chen, Liu, Gao, Zhang, ...; AAAI 2025). Trains on [3, B] batches.

Graphs (built once, frozen):
    A    = D^-1/2 [[0, R], [R^T, 0]] D^-1/2                    user-item graph
    S_m  = D^-1/2 K_m D^-1/2, K_m = binary kNN(x_m, k), self included (per modality m)
    S    = sum_m w_m S_m   (w_image = mm_image_weight, the rest share 1 - w_image: FREEDOM's rule)
Views (d-dimensional), each propagated with LightGCN (mean over layers 0..L, n_ui_layers):
    ID view      [u_id; i_id] = LGN(A, [E_u; E_i]);          i_id += S^n E_i
    modality m   h_m = normalize(W_m x_m + b_m) (items, unit rows), P_m (users, learned)
                 [u_m; i_m]   = LGN(A, [P_m; h_m]);           i_m  += S_m^n h_m
    final        e = e_id + (1/M) sum_m e_m,  score(u, i) = e_u . e_i
Loss = BPR(final) + reg_weight * L2(ego ID embeddings of the batch)
     + align_weight * L_align + cl_weight * (L_mask + L_perturb), where
  L_align   multi-level cross-modal alignment guided by the ID view: each modality's
            batch embeddings are pulled to the ID embeddings' distribution, treating
            each as a diagonal Gaussian over the batch rows:
            G(a, b) = ||mean(a) - mean(b)||^2 + ||std(a) - std(b)||^2 (per-dimension
            statistics over the rows of the ROW-NORMALISED embeddings); levels: raw projected features h_m vs E_i, and
            propagated views i_m vs i_id, u_m vs u_id (sum over modalities and levels);
  L_mask    feature masking: two independent dropout masks (rate mask_ratio) on the batch
            items' raw features, projected by W_m; in-batch InfoNCE (cl_temp) between the
            two views, summed over modalities;
  L_perturb graph perturbation: the ID view propagated twice with random noise added to
            every layer, x <- x + eps * sign(x) * normalize(uniform noise) (SimGCL's noise);
            in-batch InfoNCE between the two runs, for the batch users and positive items.

Choices where the paper is silent or we simplified: the projected features are
L2-normalised per item (TikTok's raw image rows have norm ~33, so unnormalised modality
views outweighed the ID view by two orders of magnitude and ranking stalled at valid
R@20 0.02); the fusion is the ID view plus the
MEAN of the modality views (works for any number of modalities); the Gaussian distance
above stands for the paper's distribution alignment; feature masking is dropout on the
raw feature values of the batch items (not whole rows); the perturbation views are the ID
view only; the alignment gradient reaches both sides (no stop-gradient on the ID view); rows are
L2-normalised before the statistics (unnormalised, the raw projected features' scale made
the term ~100x the BPR loss at the start and training drifted away from the ranking task).
Features are fixed inputs (`freeze_features: false`: trainable tables, see _mm_inputs.py).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, propagate
from ..losses import bpr_loss, info_nce, l2_reg
from ..modules import modality_knn_graphs
from ..registry import register_model
from ..utils import MMRecError
from ._mm_inputs import feature, feature_projections, setup_feature_inputs
from .base import PairForwardRecommender, inter_matrix_csr
from .freedom import freedom_modality_weights


def gaussian_alignment(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||mean(a) - mean(b)||^2 + ||std(a) - std(b)||^2 of the row-normalised a and b
    (statistics per column over the rows; row normalisation bounds the term by 8 and makes
    it independent of the raw feature scale)."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    mean_gap = (a.mean(0) - b.mean(0)).pow(2).sum()
    std_gap = (a.std(0, unbiased=False) - b.std(0, unbiased=False)).pow(2).sum()
    return mean_gap + std_gap


def perturb(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x + eps * sign(x) * normalize(U(0, 1) noise), row-wise (SimGCL's perturbation)."""
    noise = F.normalize(torch.rand_like(x), dim=-1)
    return x + eps * torch.sign(x) * noise


@register_model
class MENTOR(PairForwardRecommender):
    is_multimodal = True

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config_value(config, "embedding_size", 64))
        self.knn_k = int(config_value(config, "knn_k", 10))
        self.n_ui_layers = int(config_value(config, "n_ui_layers", 2))
        self.n_layers = int(config_value(config, "n_layers", 1))
        self.reg_weight = float(config_value(config, "reg_weight", 1e-4))
        self.align_weight = float(config_value(config, "align_weight", 0.1))
        self.cl_weight = float(config_value(config, "cl_weight", 0.01))
        self.cl_temp = float(config_value(config, "cl_temp", 0.2))
        self.mask_ratio = float(config_value(config, "mask_ratio", 0.5))
        self.noise_eps = float(config_value(config, "noise_eps", 0.1))
        self.image_weight = float(config_value(config, "mm_image_weight", 0.1))
        if self.cl_temp <= 0:
            raise MMRecError(f"MENTOR: cl_temp must be positive, found {self.cl_temp}; set e.g. `cl_temp: 0.2` "
                             f"in configs/model/MENTOR.yaml")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise MMRecError(f"MENTOR: mask_ratio must be in [0, 1), found {self.mask_ratio}; set e.g. "
                             f"`mask_ratio: 0.5` in configs/model/MENTOR.yaml")

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.names = list(self.mm_feats)
        setup_feature_inputs(self, config)
        self.projections = feature_projections(self, dim, init="xavier_normal")
        self.user_modal = nn.ParameterDict()
        for m, name in enumerate(self.names):
            p = nn.Parameter(torch.empty(self.n_users, dim))
            nn.init.xavier_uniform_(p)
            self.user_modal[str(m)] = p            # indexed by position: names need not be identifiers

        self.norm_adj = SparseMat.of(bipartite_adjacency(inter_matrix_csr(dataloader)), self.device, symmetric=True)
        graphs = modality_knn_graphs(self, self.knn_k, weighted=False, include_self=True, norm="sym", on_device=False)
        self.modality_weights = freedom_modality_weights(self.names, self.image_weight)
        fused = None
        for name, g in graphs.items():
            fused = g * self.modality_weights[name] if fused is None else fused + g * self.modality_weights[name]
        self.item_graphs: Dict[str, SparseMat] = OrderedDict(
            (name, SparseMat.of(g, self.device)) for name, g in graphs.items())
        self.fused_graph = SparseMat.of(fused, self.device)

    # ---- views ---------------------------------------------------------------
    def _item_graph_part(self, graph: SparseMat, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.n_layers):
            x = graph @ x
        return x

    def _lgn(self, users: torch.Tensor, items: torch.Tensor, eps: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([users, items], dim=0)
        if eps <= 0.0:
            out = propagate(self.norm_adj, ego, self.n_ui_layers)
        else:
            x, acc = ego, ego
            for _ in range(self.n_ui_layers):
                x = perturb(self.norm_adj @ x, eps)
                acc = acc + x
            out = acc / (self.n_ui_layers + 1)
        return torch.split(out, [self.n_users, self.n_items])

    def views(self):
        """(id view (u, i), {modality: (u_m, i_m)}, {modality: h_m}) over all users/items."""
        u_id, i_id = self._lgn(self.user_embedding.weight, self.item_embedding.weight)
        i_id = i_id + self._item_graph_part(self.fused_graph, self.item_embedding.weight)
        per, feats = OrderedDict(), OrderedDict()
        for m, name in enumerate(self.names):
            h = F.normalize(self.projections[name](feature(self, name)), dim=-1)
            u_m, i_m = self._lgn(self.user_modal[str(m)], h)
            per[name] = (u_m, i_m + self._item_graph_part(self.item_graphs[name], h))
            feats[name] = h
        return (u_id, i_id), per, feats

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        (u, i), per, _ = self.views()
        M = len(per)
        u = u + sum(v[0] for v in per.values()) / M
        i = i + sum(v[1] for v in per.values()) / M
        return u, i

    # ---- training ------------------------------------------------------------
    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        (u_id, i_id), per, feats = self.views()
        M = len(per)
        u_all = u_id + sum(v[0] for v in per.values()) / M
        i_all = i_id + sum(v[1] for v in per.values()) / M
        # index_select: the backward of advanced indexing uses atomics (irreproducible)
        sel = lambda x, idx: x.index_select(0, idx)
        u = sel(u_all, users)
        bpr = bpr_loss((u * sel(i_all, pos)).sum(-1), (u * sel(i_all, neg)).sum(-1))
        reg = l2_reg(self.user_embedding(users), self.item_embedding(pos), self.item_embedding(neg))
        loss = bpr + self.reg_weight * reg
        if self.align_weight != 0.0:
            align = 0.0
            e_pos = self.item_embedding(pos)
            for name in self.names:
                u_m, i_m = per[name]
                align = align + gaussian_alignment(sel(feats[name], pos), e_pos)
                align = align + gaussian_alignment(sel(i_m, pos), sel(i_id, pos))
                align = align + gaussian_alignment(sel(u_m, users), sel(u_id, users))
            loss = loss + self.align_weight * align
        if self.cl_weight != 0.0:
            cl = 0.0
            for name in self.names:
                x = sel(feature(self, name), pos)
                v1 = self.projections[name](F.dropout(x, self.mask_ratio, training=True))
                v2 = self.projections[name](F.dropout(x, self.mask_ratio, training=True))
                cl = cl + info_nce(v1, v2, self.cl_temp)
            u1, i1 = self._lgn(self.user_embedding.weight, self.item_embedding.weight, self.noise_eps)
            u2, i2 = self._lgn(self.user_embedding.weight, self.item_embedding.weight, self.noise_eps)
            cl = cl + info_nce(sel(u1, users), sel(u2, users), self.cl_temp)
            cl = cl + info_nce(sel(i1, pos), sel(i2, pos), self.cl_temp)
            loss = loss + self.cl_weight * cl
        return loss

    def item_representations(self, kind: str = "final") -> torch.Tensor:
        was = self.training
        self.eval()
        with torch.no_grad():
            if kind == "final":
                out = self.forward()[1]
            else:
                (_, i_id), per, _ = self.views()
                out = i_id if kind == "behaviour" else sum(v[1] for v in per.values()) / len(per)
        self.train(was)
        return out
