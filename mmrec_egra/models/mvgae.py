"""MVGAE: Multi-modal Variational Graph Auto-Encoder for recommendation systems
(Yi & Chen; IEEE Transactions on Multimedia, 2021). Trains on [3, B] batches.

Experts: one per modality m (users: a preference table P_m [U, d]; items: l2norm(Linear(X_m)))
plus a collaborative expert on ID embeddings ([E_u; E_i]). Each expert is a variational
graph encoder on A = D^-1/2 (B + I) D^-1/2, B = [[0, R], [R^T, 0]] (self loops, as in VGAE):
    h^(0) = x,  h^(l+1) = LeakyReLU(A h^(l) W_l)          (n_layers - 1 hidden layers)
    mu_e = A h W_mu,   logvar_e = A h W_var + b_var         a Gaussian per node
Product of experts, with the prior N(0, I) as one more expert (precisions add):
    prec = 1 + sum_e exp(-logvar_e),  mu = (sum_e mu_e exp(-logvar_e)) / prec,  var = 1 / prec
Decoder: score(u, i) = z_u . z_i with z = mu + sqrt(var) * eps in training (the
reparameterisation trick, eps ~ N(0, I) from torch's seeded RNG) and z = mu at prediction.
Loss: BPR(z) + kl_weight * mean over the batch's nodes (users, positives, negatives) of
    KL(N(mu, var) || N(0, I)) = 0.5 * sum_d (mu^2 + var - 1 - log var)
    + reg_weight * L2 (half squared norms / batch) of the batch's ID and preference rows.

Choices where the paper leaves room (config keys where they matter):
- the ID expert is on by default (`id_expert: true`); false keeps only the modalities.
- logvar is clamped to [-10, 10] so exp() cannot overflow early in training.
- the logvar heads have a bias b_var that starts at `init_logvar` (-6): with variances near
  1 at the start (a bias-free head), the sampling noise of 64 dimensions swamps the scores
  (measured on TikTok, seed 999: batch BPR ~1.2 and valid Recall@20 0.007 -> 0.004 over
  the first two epochs); the KL term still pulls the variances up towards the prior.
- the projected features are scaled to unit norm (l2norm above): raw TikTok image rows
  have norms ~33, which would start the modality experts far from the ID expert's scale.
- every expert has width d = embedding_size; any number (>= 1) of modalities.
- features are fixed inputs unless `freeze_features: false` (see _mm_inputs.py).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, sym_normalize
from ..losses import bpr_loss, l2_reg
from ..registry import register_model
from ..utils import MMRecError
from ._mm_inputs import feature, feature_projections, setup_feature_inputs
from .base import GeneralRecommender, inter_matrix_csr

LOGVAR_CLAMP = 10.0


def product_of_experts(mus: Sequence[torch.Tensor], logvars: Sequence[torch.Tensor]
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gaussian product of the experts N(mu_e, exp(logvar_e)) and the prior N(0, I) -> (mu, logvar)."""
    precisions = [torch.exp(-lv) for lv in logvars]
    prec = 1.0 + torch.stack(precisions).sum(0)
    mu = torch.stack([m * p for m, p in zip(mus, precisions)]).sum(0) / prec
    return mu, -torch.log(prec)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-row KL(N(mu, exp(logvar)) || N(0, I)), summed over dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


class _VariationalGCN(nn.Module):
    """One expert's encoder: hidden GCN layers, then linear GCN heads for mu and logvar."""

    def __init__(self, dim: int, n_layers: int, init_logvar: float = -6.0):
        super().__init__()
        self.hidden = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(n_layers - 1))
        self.mu = nn.Linear(dim, dim, bias=False)
        self.logvar = nn.Linear(dim, dim)
        for lin in [*self.hidden, self.mu, self.logvar]:
            nn.init.xavier_uniform_(lin.weight)
        nn.init.constant_(self.logvar.bias, init_logvar)

    def forward(self, adj: SparseMat, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = x
        for lin in self.hidden:
            h = F.leaky_relu(adj @ lin(h))
        ah = adj @ h
        return self.mu(ah), self.logvar(ah).clamp(-LOGVAR_CLAMP, LOGVAR_CLAMP)


def mvgae_adjacency(R) -> sp.csr_matrix:
    """D^-1/2 ([[0, R], [R^T, 0]] + I) D^-1/2 (VGAE's normalised adjacency with self loops)."""
    B = bipartite_adjacency(R, normalize=False)
    return sym_normalize(B + sp.identity(B.shape[0], dtype=np.float32, format="csr"))


@register_model
class MVGAE(GeneralRecommender):
    is_multimodal = True

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config_value(config, "embedding_size", 64))
        self.n_layers = int(config_value(config, "n_layers", 2))
        if self.n_layers < 1:
            raise MMRecError(f"MVGAE: n_layers must be >= 1, found {self.n_layers}")
        self.kl_weight = float(config_value(config, "kl_weight", 1e-3))
        self.reg_weight = float(config_value(config, "reg_weight", 0.0))
        self.id_expert = config_value(config, "id_expert", True) is not False
        init_logvar = float(config_value(config, "init_logvar", -6.0))
        setup_feature_inputs(self, config)
        self.names: List[str] = list(self.mm_feats)
        self.projections = feature_projections(self, dim, init="xavier_normal")
        self.user_pref = nn.ParameterDict()
        for n in self.names:
            p = nn.Parameter(torch.empty(self.n_users, dim))
            nn.init.xavier_uniform_(p)
            self.user_pref[n] = p
        self.encoders = nn.ModuleDict({n: _VariationalGCN(dim, self.n_layers, init_logvar)
                                       for n in self.names})
        if self.id_expert:
            self.id_embedding = nn.Parameter(torch.empty(self.n_users + self.n_items, dim))
            nn.init.xavier_uniform_(self.id_embedding)
            self.id_encoder = _VariationalGCN(dim, self.n_layers, init_logvar)
        self.adj = SparseMat.of(mvgae_adjacency(inter_matrix_csr(dataloader)), self.device, symmetric=True)

    def experts(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """(mus, logvars) of every expert, each [U+I, d] (modalities first, then the ID expert)."""
        mus, logvars = [], []
        for n in self.names:
            x = torch.cat([self.user_pref[n], F.normalize(self.projections[n](feature(self, n)), dim=1)])
            mu, lv = self.encoders[n](self.adj, x)
            mus.append(mu)
            logvars.append(lv)
        if self.id_expert:
            mu, lv = self.id_encoder(self.adj, self.id_embedding)
            mus.append(mu)
            logvars.append(lv)
        return mus, logvars

    def posterior(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return product_of_experts(*self.experts())

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        mu, logvar = self.posterior()
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        zi = z[self.n_users:]
        u = z.index_select(0, users)
        bpr = bpr_loss((u * zi.index_select(0, pos)).sum(-1), (u * zi.index_select(0, neg)).sum(-1))
        nodes = torch.cat([users, pos + self.n_users, neg + self.n_users])
        kl = kl_standard_normal(mu.index_select(0, nodes), logvar.index_select(0, nodes)).mean()
        out = [bpr, self.kl_weight * kl]
        if self.reg_weight:
            rows = [p.index_select(0, users) for p in self.user_pref.values()]
            if self.id_expert:
                rows.append(self.id_embedding.index_select(0, nodes))
            out.append(self.reg_weight * l2_reg(*rows))
        return tuple(out)

    def full_sort_predict(self, interaction):
        mu = self.cached("mu", lambda: self.posterior()[0])
        return mu[interaction[0]] @ mu[self.n_users:].t()
