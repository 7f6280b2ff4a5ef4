"""SLMRec: Self-supervised Learning for Multimedia Recommendation (Tao et al., IEEE
Transactions on Multimedia, 2022). Trains on [3, B] batches.

Backbone: one LightGCN per branch on A_ui = D^-1/2 [[0, R], [R^T, 0]] D^-1/2 (L layers, mean
over layers 0..L):
    Z_id = LightGCN([E_u ; E_i])                         collaborative (ID) branch
    Z_m  = LightGCN([P_m ; l2norm(W_m X_m + b_m)])       one branch per modality m: P_m is
                                                         a user table, items are projected features
    r    = [Z_id ; Z_m1 ; Z_m2 ; ...]  (concatenation), score(u, i) = r_u . r_i
Loss: BPR(r) + reg_weight * L2 (half squared norms / batch) of the layer-0 rows of the batch
      + ssl_alpha * L_ssl on the batch's distinct positive items, where `ssl_task` is
  FD  (feature dropout): two views, each re-running the modality branches on features with
      dropout (rate ssl_dropout); L_ssl = InfoNCE(h(v1), h(v2), ssl_temp) on the views'
      concatenated modality item representations, h a shared Linear+ReLU+Linear head.
  FM  (feature masking): as FD, but each view zeroes the features of ONE modality drawn at
      random (needs >= 2 modalities).
  FAC (fine and coarse, the default; after the multimodal versatile networks of Alayrac
      et al.): per-modality heads f_m map Z_m into a shared fine space, where every pair of
      modalities is aligned: sum over pairs InfoNCE(f_m(Z_m), f_n(Z_n)); a coarse head c maps
      the mean of the fine vectors to the space of the ID branch: + InfoNCE(c(mean f), Z_id).
(InfoNCE: in-batch, cosine, positives on the diagonal.)

Choices where the paper leaves room (config keys where they matter):
- FAC for ANY modality set: the paper aligns vision and audio finely and text coarsely
  (a fixed set); here all available modalities meet in the fine space and the coarse
  target is the collaborative branch, so one modality (only the coarse term) works too.
- the projected features are scaled to unit norm (l2norm above): raw projections of
  TikTok's image features (row norms ~33) start the item vectors at norms ~25 against ~0.2
  for the xavier ID rows, so the first scores are in the hundreds and BPR saturates
  (measured: batch BPR ~4.3 in the first epoch, valid Recall@20 0.022 after 5 epochs).
- views are computed for the whole graph but the loss uses only the batch's distinct
  positive items (torch.unique, sorted, so the order is deterministic).
- the random parts of FD/FM (dropout masks, the masked modality) use torch's RNG, which
  the host seeds, so runs are reproducible.
- features are fixed inputs unless `freeze_features: false` (see _mm_inputs.py).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, propagate
from ..losses import bpr_loss, info_nce, l2_reg
from ..registry import register_model
from ..utils import MMRecError
from ._mm_inputs import feature, feature_projections, setup_feature_inputs
from .base import GeneralRecommender, inter_matrix_csr

SSL_TASKS = ("FAC", "FD", "FM")


@register_model
class SLMRec(GeneralRecommender):
    is_multimodal = True

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config_value(config, "embedding_size", 64))
        self.n_layers = int(config_value(config, "n_layers", 2))
        self.reg_weight = float(config_value(config, "reg_weight", 1e-4))
        self.ssl_task = str(config_value(config, "ssl_task", "FAC")).upper()
        self.ssl_alpha = float(config_value(config, "ssl_alpha", 0.01))
        self.ssl_temp = float(config_value(config, "ssl_temp", 0.2))
        self.ssl_dropout = float(config_value(config, "ssl_dropout", 0.2))
        if self.ssl_task not in SSL_TASKS:
            raise MMRecError(f"SLMRec: ssl_task must be one of {', '.join(SSL_TASKS)}, found {self.ssl_task!r}")
        if self.ssl_temp <= 0:
            raise MMRecError(f"SLMRec: ssl_temp must be positive, found {self.ssl_temp}")
        setup_feature_inputs(self, config)
        self.names: List[str] = list(self.mm_feats)
        if self.ssl_task == "FM" and len(self.names) < 2:
            raise MMRecError(f"SLMRec: ssl_task FM masks one of several modalities, but the data has only "
                             f"{self.names}; use ssl_task FAC or FD")
        M = len(self.names)
        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.user_pref = nn.ParameterDict()
        for n in self.names:
            p = nn.Parameter(torch.empty(self.n_users, dim))
            nn.init.xavier_uniform_(p)
            self.user_pref[n] = p
        self.projections = feature_projections(self, dim, init="xavier_normal")
        # SSL heads (only the chosen task's: no idle parameters)
        if self.ssl_task == "FAC":
            self.fine_heads = nn.ModuleDict({n: nn.Linear(dim, dim) for n in self.names})
            self.coarse_head = nn.Linear(dim, dim)
        else:
            self.view_head = nn.Sequential(nn.Linear(M * dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.adj = SparseMat.of(bipartite_adjacency(inter_matrix_csr(dataloader)), self.device, symmetric=True)

    # ---- branches ----------------------------------------------------------
    def id_branch(self) -> torch.Tensor:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        return propagate(self.adj, ego, self.n_layers)

    def modality_branches(self, feats: Dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        """name -> LightGCN([P_m; W_m x_m]) ([U+I, d]) for the given (possibly corrupted) features."""
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for n in self.names:
            ego = torch.cat([self.user_pref[n], F.normalize(self.projections[n](feats[n]), dim=1)])
            out[n] = propagate(self.adj, ego, self.n_layers)
        return out

    def raw_features(self) -> Dict[str, torch.Tensor]:
        return {n: feature(self, n) for n in self.names}

    def view_features(self, task: str) -> Dict[str, torch.Tensor]:
        """Corrupted features of one SSL view: FD drops entries, FM zeroes one random modality."""
        feats = self.raw_features()
        if task == "FD":
            return {n: F.dropout(x, p=self.ssl_dropout, training=True) for n, x in feats.items()}
        if task == "FM":
            masked = self.names[int(torch.randint(len(self.names), (1,)))]
            return {n: torch.zeros_like(x) if n == masked else x for n, x in feats.items()}
        raise MMRecError(f"SLMRec: no feature views for ssl_task {task!r}")

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, "OrderedDict[str, torch.Tensor]"]:
        z_id = self.id_branch()
        z_m = self.modality_branches(self.raw_features())
        rep = torch.cat([z_id, *z_m.values()], dim=1)
        u, i = torch.split(rep, [self.n_users, self.n_items])
        return u, i, z_id, z_m

    # ---- SSL -------------------------------------------------------------
    def ssl_loss(self, items: torch.Tensor, z_id: torch.Tensor, z_m: "OrderedDict[str, torch.Tensor]") -> torch.Tensor:
        rows = items + self.n_users
        if self.ssl_task == "FAC":
            fine = [self.fine_heads[n](z.index_select(0, rows)) for n, z in z_m.items()]
            loss = z_id.new_zeros(())
            for a in range(len(fine)):
                for b in range(a + 1, len(fine)):
                    loss = loss + info_nce(fine[a], fine[b], self.ssl_temp, fused=False)
            coarse = self.coarse_head(torch.stack(fine).mean(0))
            return loss + info_nce(coarse, z_id.index_select(0, rows), self.ssl_temp, fused=False)
        views = []
        for _ in range(2):
            branches = self.modality_branches(self.view_features(self.ssl_task))
            views.append(self.view_head(torch.cat([z.index_select(0, rows) for z in branches.values()], dim=1)))
        return info_nce(views[0], views[1], self.ssl_temp, fused=False)   # fused=False: as recorded

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all, z_id, z_m = self.forward()
        u = u_all.index_select(0, users)
        bpr = bpr_loss((u * i_all.index_select(0, pos)).sum(-1), (u * i_all.index_select(0, neg)).sum(-1))
        ego = [self.user_embedding(users), self.item_embedding(pos), self.item_embedding(neg),
               *[self.user_pref[n].index_select(0, users) for n in self.names]]
        reg = self.reg_weight * l2_reg(*ego) if self.reg_weight else bpr.new_zeros(())
        ssl = self.ssl_alpha * self.ssl_loss(torch.unique(pos), z_id, z_m) if self.ssl_alpha else bpr.new_zeros(())
        return bpr, reg, ssl

    def full_sort_predict(self, interaction):
        u_all, i_all = self.cached("forward", lambda: self.forward()[:2])
        return u_all[interaction[0]] @ i_all.t()
