"""LGMRec: local and global graph learning for multimodal recommendation (Guo et al., AAAI'24).

Written from the paper's description (clean room), for ANY set of modalities.

Local graph embeddings
  * collaborative: LightGCN on A_ui = D^-1/2 [[0, R], [R^T, 0]] D^-1/2 over ID embeddings,
    the MEAN over layers 0..n_ui_layers (the paper writes a layer aggregation; the mean is
    what MMRec's LGMRec computes, and keeps the scale of the layer-0 embeddings);
  * per modality m: items x_i^m W^m (W^m [d_m, d], no bias), users the mean of their
    training items (row-normalised R), both propagated on A_ui for n_mm_layers; the
    local modality embedding is the LAST layer (no layer mean, as in the paper's eq.).
Global hypergraph embeddings, per modality m
  * item memberships H_i^m = GumbelSoftmax(x_i^m V^m, tau) over hyper_num learnable
    hyperedges V^m [d_m, hyper_num] that live in the raw feature space (the paper's
    "hyperedge embeddings"); user memberships H_u^m = R_mean H_i^m (a user belongs to
    a hyperedge as much as its items do on average, so rows still sum to 1);
  * dropout (p = 1 - keep_rate) on both membership matrices while training;
  * message passing from the item collaborative embeddings E_i:
    Z = H_i^T E_i (hyperedge states), E_i <- H_i Z, repeated n_hyper_layer times; users
    read the last hyperedge states: E_u = H_u Z.
Fusion: e = e_collab + sum_m normalize(e_local^m) + alpha * normalize(sum_m e_hyper^m);
score e_u . e_i.
Loss: BPR + cl_weight * cross-modal InfoNCE(tau) on the hyper embeddings + reg_weight *
L2 of the batch ego (ID) embeddings.

Documented choices (deviations from MMRec's LGMRec code; same mathematics otherwise):
  * `freeze_features` (default FALSE here, unlike our other baselines): the raw feature
    tables are trainable, as in MMRec. Frozen inputs (`freeze_features: true`, only W^m
    and V^m learn; faster: the graph part of the local branch is then precomputed) cost
    LGMRec about a third of its TikTok Recall@20 (valid 0.058 vs 0.079 at epoch 14,
    seed 999): its modality parts are L2-normalised, so they cannot be scaled down and
    with fixed inputs they stay rigid, whereas trainable tables act as extra per-item
    embeddings.
  * `lgmrec_cl_scope: batch` (default): InfoNCE anchors are the batch's unique users /
    positive items with in-batch negatives. MMRec contrasts every batch anchor against
    ALL users / items every step (about 60% of its step for a 1e-4-weighted term);
    `lgmrec_cl_scope: all` does that (negatives = all users / items, duplicates kept).
    As in MMRec the InfoNCE is SUMMED over anchors (not averaged), so cl_weight 1e-4 has
    the same strength. One direction per pair of modalities, a -> b for a listed before b
    (MMRec: image -> text), averaged over pairs; with one modality there is no pair and
    the term is 0. (Adding the reverse direction doubles the cost of the term, which is
    already about 20% of a step.)
  * Gumbel noise and membership dropout only in training; evaluation uses the
    noise-free softmax(logits / tau) memberships and no dropout, so rankings are
    deterministic (MMRec samples Gumbel noise and drops memberships at test time too).
  * user memberships aggregate item MEMBERSHIPS (the paper), not item logits followed
    by a second Gumbel-softmax (MMRec's code).
"""
from __future__ import annotations

from itertools import combinations
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, propagate, row_normalize
from ..losses import bpr_loss, info_nce, emb_norm_reg
from ..registry import register_model
from ..utils import MMRecError
from .base import GeneralRecommender, inter_matrix_csr



#: widest modality whose propagated feature basis is precomputed (see LGMRec.__init__)
_PRECOMPUTE_MAX_DIM = 512


@register_model
class LGMRec(GeneralRecommender):
    is_multimodal = True

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config["embedding_size"])
        self.n_ui_layers = int(config_value(config, "n_ui_layers", 2))
        self.n_mm_layers = int(config_value(config, "n_mm_layers", 2))
        self.n_hyper_layer = int(config_value(config, "n_hyper_layer", 1))
        self.hyper_num = int(config_value(config, "hyper_num", 4))
        self.keep_rate = float(config_value(config, "keep_rate", 0.5))
        self.alpha = float(config_value(config, "alpha", 0.3))
        self.cl_weight = float(config_value(config, "cl_weight", 1e-4))
        self.reg_weight = float(config_value(config, "reg_weight", 1e-6))
        self.tau = float(config_value(config, "tau", 0.2))
        self.cl_scope = str(config_value(config, "lgmrec_cl_scope", "batch")).lower()
        if self.cl_scope not in ("batch", "all"):
            raise MMRecError(f"lgmrec_cl_scope must be 'batch' or 'all', found {self.cl_scope!r}")
        if self.n_hyper_layer < 1 or self.hyper_num < 1:
            raise MMRecError("LGMRec needs n_hyper_layer >= 1 and hyper_num >= 1")
        if not 0.0 < self.keep_rate <= 1.0:
            raise MMRecError(f"keep_rate must be in (0, 1], found {self.keep_rate}")
        freeze = bool(config_value(config, "freeze_features", False))   # MMRec: trainable tables

        R = inter_matrix_csr(dataloader)
        self.norm_adj = SparseMat.of(bipartite_adjacency(R), self.device)
        # users' modality embeddings / memberships = mean over their training items
        self.r_mean = SparseMat.of(row_normalize(R), self.device)

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

        self.modalities: List[str] = list(self.mm_feats)
        self.projections = nn.ParameterDict()
        self.hyperedges = nn.ParameterDict()
        self.feature_tables = nn.ParameterDict()   # only when features are trainable
        for name, feat in self.mm_feats.items():
            d_m = feat.shape[1]
            self.projections[name] = nn.Parameter(nn.init.xavier_uniform_(torch.empty(d_m, dim, device=self.device)))
            self.hyperedges[name] = nn.Parameter(
                nn.init.xavier_uniform_(torch.empty(d_m, self.hyper_num, device=self.device)))
            if not freeze:
                self.feature_tables[name] = nn.Parameter(feat.clone())
        # Frozen features make the local modality branch linear in W^m:
        #   A^L [R_mean X W; X W] = (A^L [R_mean X; X]) W,
        # so the graph part is computed once here and each step is one dense product
        # (about 30% of a TikTok step saved). Skipped for wide features (d_m > 512), where
        # the [n_users + n_items, d_m] basis costs more memory and flops than it saves.
        self._local_basis: Dict[str, torch.Tensor] = {}
        if freeze:
            for name, feat in self.mm_feats.items():
                if feat.shape[1] <= _PRECOMPUTE_MAX_DIM:
                    with torch.no_grad():
                        self._local_basis[name] = self._propagate_local(feat)

    # ---- building blocks ----------------------------------------------------
    def features(self, name: str) -> torch.Tensor:
        """Raw item features of modality `name` ([n_items, d_m]; trainable if not frozen)."""
        return self.feature_tables[name] if name in self.feature_tables else self.mm_feats[name]

    def collaborative(self) -> torch.Tensor:
        """LightGCN embeddings of users then items, mean over layers 0..n_ui_layers."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        return propagate(self.norm_adj, ego, self.n_ui_layers, mean=True)

    def _propagate_local(self, items: torch.Tensor) -> torch.Tensor:
        """[users = mean of their items; items] propagated n_mm_layers on A_ui (last layer)."""
        x = torch.cat([self.r_mean @ items, items], dim=0)
        for _ in range(self.n_mm_layers):
            x = self.norm_adj @ x
        return x

    def local_modality(self, name: str) -> torch.Tensor:
        """Users then items: projected features (users = item mean), last of n_mm_layers on A_ui."""
        basis = self._local_basis.get(name)
        if basis is not None:
            return basis @ self.projections[name]
        return self._propagate_local(self.features(name) @ self.projections[name])

    def memberships(self, name: str, stochastic: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """(item [n_items, A], user [n_users, A]) hyperedge memberships, before dropout.

        Item rows are a (Gumbel-)softmax over the A hyperedges, so each sums to 1; user
        rows are the mean of their items' rows.
        """
        logits = self.features(name) @ self.hyperedges[name]
        if stochastic:
            h_item = F.gumbel_softmax(logits, tau=self.tau, hard=False, dim=1)
        else:
            h_item = torch.softmax(logits / self.tau, dim=1)
        return h_item, self.r_mean @ h_item

    def hyper_propagate(self, h_item: torch.Tensor, h_user: torch.Tensor,
                        item_emb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Hyperedge message passing: Z = H_i^T E, E <- H_i Z (n_hyper_layer times); users H_u Z."""
        x = item_emb
        for _ in range(self.n_hyper_layer):
            edges = h_item.t() @ x
            x = h_item @ edges
        return h_user @ edges, x

    def forward(self) -> Dict[str, object]:
        """All user/item embeddings: final, collaborative, local modality sum and hyper parts."""
        stochastic = self.training
        drop = 1.0 - self.keep_rate
        collab = self.collaborative()
        collab_items = collab[self.n_users:]
        local = torch.zeros_like(collab)
        hyper_user: Dict[str, torch.Tensor] = {}
        hyper_item: Dict[str, torch.Tensor] = {}
        for name in self.modalities:
            local = local + F.normalize(self.local_modality(name), dim=1)
            h_item, h_user = self.memberships(name, stochastic)
            if self.training and drop > 0:
                h_item = F.dropout(h_item, p=drop)
                h_user = F.dropout(h_user, p=drop)
            hyper_user[name], hyper_item[name] = self.hyper_propagate(h_item, h_user, collab_items)
        ghe = torch.cat([sum(hyper_user.values()), sum(hyper_item.values())], dim=0)
        final = collab + local + self.alpha * F.normalize(ghe, dim=1)
        users, items = torch.split(final, [self.n_users, self.n_items])
        return {"users": users, "items": items, "collab": collab, "local": local,
                "hyper_user": hyper_user, "hyper_item": hyper_item}

    # ---- losses -------------------------------------------------------------
    def _cross_modal_cl(self, embs: Dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
        """InfoNCE from modality a to modality b (a before b in the modality order) on the
        hyper embeddings, averaged over pairs; summed over anchors as in MMRec."""
        pairs = list(combinations(self.modalities, 2))
        if not pairs:
            return ids.new_zeros((), dtype=torch.float32)
        if self.cl_scope == "batch":
            # unique anchors: a duplicated id would be its own false negative in-batch
            uniq = torch.unique(ids)
            total = sum(info_nce(embs[a].index_select(0, uniq), embs[b].index_select(0, uniq), self.tau,
                                 reduction="sum", fused=False) for a, b in pairs)
        else:
            total = sum(info_nce(embs[a].index_select(0, ids), embs[b], self.tau, reduction="sum", positives=ids)
                        for a, b in pairs)
        return total / len(pairs)

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        out = self.forward()
        # index_select, not x[ids]: the backward of advanced indexing accumulates duplicate
        # ids with CPU atomics (run-to-run differences with >1 thread); index_select's is ordered
        u = out["users"].index_select(0, users)
        p, n = out["items"].index_select(0, pos), out["items"].index_select(0, neg)
        loss = bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        cl = self._cross_modal_cl(out["hyper_user"], users) + self._cross_modal_cl(out["hyper_item"], pos)
        reg = emb_norm_reg(self.user_embedding(users), self.item_embedding(pos), self.item_embedding(neg))
        return loss, self.cl_weight * cl, self.reg_weight * reg

    # ---- prediction ---------------------------------------------------------
    def _final(self) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.forward()
        return out["users"], out["items"]

    def full_sort_predict(self, interaction):
        u_all, i_all = self.cached("final", self._final)
        return u_all[interaction[0]] @ i_all.t()

    def item_representations(self, kind: str = "final") -> torch.Tensor:
        was = self.training
        self.eval()
        with torch.no_grad():
            out = self.forward()
        self.train(was)
        if kind == "final":
            return out["items"]
        if kind == "behaviour":
            return out["collab"][self.n_users:]
        if kind == "modality":
            return out["local"][self.n_users:]
        raise MMRecError(f"LGMRec item_representations: kind must be 'final', 'behaviour' or 'modality', "
                         f"found {kind!r}")
