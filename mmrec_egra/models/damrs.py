"""DA-MRS: denoising and aligning multi-modal content and user feedback for multimodal
recommendation (Xv, Li, Xie, Lin, Liu, Xia, Kang, Lin; KDD 2024). Registered as DAMRS
(alias 'DA-MRS'). Trains on [3, B] batches (user, positive, negative).

DA-MRS is a plug-in on a graph backbone; here the backbone is LightGCN plus an item-item
graph on the item IDs (FREEDOM's layout), with its three parts:
1. Denoised item-item graph (consistency across modalities). Two items are related only
   as much as their LEAST similar modality says, so a neighbour that one noisy modality
   alone proposes is not kept:
       c_ij = min_m cos(x_m,i, x_m,j)
       K    = binary top-k of c per item (self excluded, k = knn_k),  S = D^-1/2 K D^-1/2
   With a single modality that is its kNN graph. (Intersecting the per-modality top-k
   lists instead leaves most items without a neighbour: on TikTok image and audio agree
   on an edge for 3% of the items at k = 10, 24% at k = 40.)
2. Representations:
       [B_u; B_i] = mean_{l=0..L} A_ui^l [E_u; E_i]     (L = n_ui_layers)
       H = S^Lh E_i                                       (Lh = n_mm_layers)
       Z_m = W_m x_m + b_m (item content of modality m, [I, d])
       P_m = D_u^-1 R Z_m (user preference of modality m: mean content of the user's items)
       user = B_u, item = B_i + H, score user . item
3. Denoised user feedback: the probability that an observed (u, i) is a true positive is
   estimated from behaviour and content and used (without gradient) to weight its BPR term:
       p_ui = mean over views v in {behaviour, m in M} of sigmoid(cos(u_v, i_v) / feedback_temp)
              (behaviour view: (B_u, B_i); modality view m: (P_m,u, Z_m,i))
       w_ui = 1 - denoise_alpha + denoise_alpha * p_ui / mean_batch(p)
       L_rec = mean_b w_ui * softplus(s_uj - s_ui)
4. Alignment of content and feedback (in-batch InfoNCE, temperature align_temp):
   user-preference guided:  L_u = (1/M) sum_m InfoNCE(B_u, P_m,u)
   graded item relations:   L_i = (1/M) sum_m [InfoNCE(B_i, Z_m,i) + graded_weight * InfoNCE(B_i, (S Z_m)_i)]
   (the item's own content is the strongest positive, its consistent neighbourhood a weaker one)
Loss = L_rec + align_weight * (L_u + L_i) + reg_weight * L2(E_u, E_pos, E_neg) (ego rows, half
squared norms / batch), returned as (rec, align, reg).

Our reading where the paper leaves freedom (all keys): the backbone (LightGCN + ID item graph),
consistency as the minimum cosine over the modalities, the cosine-with-temperature form of p_ui and its mixing with 1 by
denoise_alpha (the batch mean of the weights is 1, so the loss scale is unchanged), the
graded neighbour positive as S Z_m with weight graded_weight. Features are fixed inputs.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, propagate, row_normalize, sym_normalize
from ..losses import info_nce, l2_reg
from ..registry import register_model
from ..utils import MMRecError
from ._mm_inputs import feature, feature_projections, setup_feature_inputs
from .base import PairForwardRecommender, inter_matrix_csr


def consistent_knn_graph(feats: Dict[str, torch.Tensor], k: int,
                         max_block_bytes: int = 64 * 2 ** 20) -> sp.csr_matrix:
    """Binary top-k of c_ij = min_m cos(x_m,i, x_m,j) per item (self excluded), normalised
    D^-1/2 K D^-1/2. Computed over row blocks: per block one [rows, I] matrix per modality,
    never I x I."""
    zs = [F.normalize(x.detach().cpu().float(), dim=1) for x in feats.values()]
    n = zs[0].shape[0]
    kk = min(int(k), n - 1)
    block = max(1, min(n, max_block_bytes // (4 * max(n, 1))))
    cols = np.empty((n, kk), dtype=np.int64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        c = zs[0][start:stop] @ zs[0].t()
        for z in zs[1:]:
            c = torch.minimum(c, z[start:stop] @ z.t())
        idx = torch.arange(start, stop)
        c[idx - start, idx] = -float("inf")
        cols[start:stop] = torch.topk(c, kk, dim=1).indices.numpy()
    rows = np.repeat(np.arange(n, dtype=np.int64), kk)
    K = sp.csr_matrix((np.ones(n * kk, dtype=np.float32), (rows, cols.ravel())), shape=(n, n))
    return sym_normalize(K)


@register_model("DAMRS", aliases=["DA-MRS"])
class DAMRS(PairForwardRecommender):
    is_multimodal = True

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config_value(config, "embedding_size", 64))
        self.knn_k = int(config_value(config, "knn_k", 10))
        self.n_ui_layers = int(config_value(config, "n_ui_layers", 2))
        self.n_mm_layers = int(config_value(config, "n_mm_layers", 1))
        self.reg_weight = float(config_value(config, "reg_weight", 1e-4))
        self.denoise_alpha = float(config_value(config, "denoise_alpha", 0.5))
        self.feedback_temp = float(config_value(config, "feedback_temp", 0.2))
        self.align_weight = float(config_value(config, "align_weight", 0.01))
        self.align_temp = float(config_value(config, "align_temp", 0.2))
        self.graded_weight = float(config_value(config, "graded_weight", 0.5))
        if not 0.0 <= self.denoise_alpha <= 1.0:
            raise MMRecError(f"denoise_alpha must lie in [0, 1], found {self.denoise_alpha}")
        if self.feedback_temp <= 0 or self.align_temp <= 0:
            raise MMRecError(f"feedback_temp and align_temp must be positive, found "
                             f"{self.feedback_temp} and {self.align_temp}")
        self.names = list(self.mm_feats)

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        setup_feature_inputs(self, config)
        self.projections = feature_projections(self, dim, init="xavier_normal")

        R = inter_matrix_csr(dataloader)
        self.norm_adj = SparseMat.of(bipartite_adjacency(R), self.device, symmetric=True)
        self.user_mean = SparseMat.of(row_normalize(R), self.device)
        raw = {n: f.detach().cpu() for n, f in self.mm_feats.items()}
        graph = self.graph_cache().get_or_build(
            "damrs_consistent_graph", {"knn_k": self.knn_k}, dict(raw),
            lambda: consistent_knn_graph(raw, self.knn_k))
        self.item_graph = SparseMat.of(graph, self.device)

    # ---- representations -------------------------------------------------------
    def behaviour(self) -> Tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight], dim=0)
        return torch.split(propagate(self.norm_adj, ego, self.n_ui_layers), [self.n_users, self.n_items])

    def content(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """([Z_m] item content [I, d], [P_m] user preferences [U, d]) per modality."""
        z = [self.projections[n](feature(self, n)) for n in self.names]
        return z, [self.user_mean @ zm for zm in z]

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        b_u, b_i = self.behaviour()
        h = self.item_id_embedding.weight
        for _ in range(self.n_mm_layers):
            h = self.item_graph @ h
        return b_u, b_i + h

    def feedback_weights(self, pairs: List[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """w [B] from per-view (user rows, item rows) of the observed pairs (no gradient)."""
        with torch.no_grad():
            p = torch.stack([torch.sigmoid(F.cosine_similarity(u, i, dim=-1) / self.feedback_temp)
                             for u, i in pairs]).mean(0)
            return 1.0 - self.denoise_alpha + self.denoise_alpha * p / p.mean().clamp_min(1e-12)

    # ---- MMRec interface -------------------------------------------------------
    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        b_u, b_i = self.behaviour()
        h = self.item_id_embedding.weight
        for _ in range(self.n_mm_layers):
            h = self.item_graph @ h
        item = b_i + h
        # index_select: deterministic backward on CPU
        u = b_u.index_select(0, users)
        ip, ineg = item.index_select(0, pos), item.index_select(0, neg)
        z, pref = self.content()
        bu, bp = u, b_i.index_select(0, pos)
        views = [(bu, bp)] + [(pm.index_select(0, users), zm.index_select(0, pos)) for zm, pm in zip(z, pref)]
        w = self.feedback_weights([(a.detach(), c.detach()) for a, c in views])
        rec = (w * F.softplus((u * ineg).sum(-1) - (u * ip).sum(-1))).mean()
        align = rec.new_zeros(())
        if self.align_weight != 0:
            for zm, pm in zip(z, pref):
                nb = self.item_graph @ zm
                align = align + info_nce(bu, pm.index_select(0, users), self.align_temp) \
                    + info_nce(bp, zm.index_select(0, pos), self.align_temp) \
                    + self.graded_weight * info_nce(bp, nb.index_select(0, pos), self.align_temp)
            align = self.align_weight * align / len(self.names)
        reg = self.reg_weight * l2_reg(self.user_embedding(users), self.item_id_embedding(pos),
                                       self.item_id_embedding(neg))
        return rec, align, reg

