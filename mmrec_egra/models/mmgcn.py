"""MMGCN: Multi-modal Graph Convolution Network for personalized recommendation of
micro-video (Wei, Wang, Nie, He, Hong, Chua; ACM MM'19). Trains on [3, B] batches.

One graph network per modality m over the user-item bipartite graph (no item-item graph):
    x_m^(0) = l2norm([P_m ; f_m(X_m)])      P_m: user preference table of modality m [U, d],
                                            f_m: Linear(d_m -> d) + LeakyReLU (item content)
Per layer l (weights per modality and layer):
    h      = LeakyReLU(A_agg x^(l) W_agg)              aggregation: mean of the neighbours
    x_hat  = LeakyReLU(x^(l) W_self + b_self) + e_id   the node itself plus its ID embedding
    x^(l+1)= LeakyReLU(h W_comb + b_comb) + x_hat      combination, element-wise-add variant
Representation of a node: mean over modalities of x_m^(L); score(u, i) = r_u . r_i.
Loss: BPR + reg_weight * L2 (half squared norms / batch) of the batch rows of the ID
embeddings e_id and of every modality's user preference P_m.

Choices where the paper leaves room (all config keys where they matter):
- `aggregation: mean` uses A_agg = D^-1 A (row-normalised, no self loops): the paper's
  average aggregator; `sym` uses D^-1/2 A D^-1/2 instead. Zero-degree nodes aggregate 0.
- the paper allows several layer widths; every layer here keeps width d = embedding_size.
- the ID embedding e_id is one table shared by all modalities (the paper's u_id / i_id).
- modalities are "whatever the dataset has" (any number >= 1), fused by the mean.
- features are fixed inputs unless `freeze_features: false` (see _mm_inputs.py).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, row_normalize, sym_normalize
from ..losses import bpr_loss, l2_reg
from ..registry import register_model
from ..utils import MMRecError
from ._mm_inputs import feature, setup_feature_inputs
from .base import GeneralRecommender, inter_matrix_csr


def mmgcn_aggregation_graph(R, aggregation: str = "mean"):
    """The (U+I) x (U+I) aggregation matrix over [[0, R], [R^T, 0]]: 'mean' D^-1 A, 'sym' D^-1/2 A D^-1/2."""
    A = bipartite_adjacency(R, normalize=False)
    if aggregation == "mean":
        return row_normalize(A)
    if aggregation == "sym":
        return sym_normalize(A)
    raise MMRecError(f"MMGCN: aggregation must be 'mean' or 'sym', found {aggregation!r} (config key "
                     f"`aggregation`)")


class _ModalityGCN(nn.Module):
    """MMGCN's graph network for one modality (see the module docstring)."""

    def __init__(self, n_users: int, feat_dim: int, dim: int, n_layers: int):
        super().__init__()
        self.preference = nn.Parameter(torch.empty(n_users, dim))
        nn.init.xavier_normal_(self.preference)
        self.project = nn.Linear(feat_dim, dim)
        nn.init.xavier_normal_(self.project.weight)
        self.agg = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(n_layers))
        self.self_lin = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))
        self.comb = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))
        for lin in [*self.agg, *self.self_lin, *self.comb]:
            nn.init.xavier_normal_(lin.weight)

    def forward(self, adj: SparseMat, feats: torch.Tensor, id_emb: torch.Tensor) -> torch.Tensor:
        items = F.leaky_relu(self.project(feats))
        x = F.normalize(torch.cat([self.preference, items], dim=0), dim=1)
        for agg, self_lin, comb in zip(self.agg, self.self_lin, self.comb):
            h = F.leaky_relu(adj @ agg(x))
            x_hat = F.leaky_relu(self_lin(x)) + id_emb
            x = F.leaky_relu(comb(h)) + x_hat
        return x


@register_model
class MMGCN(GeneralRecommender):
    is_multimodal = True

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config_value(config, "embedding_size", 64))
        self.n_layers = int(config_value(config, "n_layers", 2))
        if self.n_layers < 1:
            raise MMRecError(f"MMGCN: n_layers must be >= 1, found {self.n_layers}")
        self.reg_weight = float(config_value(config, "reg_weight", 0.0))
        self.aggregation = str(config_value(config, "aggregation", "mean"))
        setup_feature_inputs(self, config)
        self.names: List[str] = list(self.mm_feats)
        self.id_embedding = nn.Parameter(torch.empty(self.n_users + self.n_items, dim))
        nn.init.xavier_normal_(self.id_embedding)
        self.gcns = nn.ModuleDict({n: _ModalityGCN(self.n_users, f.shape[1], dim, self.n_layers)
                                   for n, f in self.mm_feats.items()})
        R = inter_matrix_csr(dataloader)
        self.adj = SparseMat.of(mmgcn_aggregation_graph(R, self.aggregation), self.device,
                                symmetric=self.aggregation == "sym")

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        reps = [self.gcns[n](self.adj, feature(self, n), self.id_embedding) for n in self.names]
        rep = torch.stack(reps).mean(0)
        return torch.split(rep, [self.n_users, self.n_items])

    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        u_all, i_all = self.forward()
        # index_select (not advanced indexing): its backward is deterministic on CPU
        u = u_all.index_select(0, users)
        loss = bpr_loss((u * i_all.index_select(0, pos)).sum(-1), (u * i_all.index_select(0, neg)).sum(-1))
        if self.reg_weight == 0.0:
            return loss
        ids = self.id_embedding
        reg = l2_reg(ids.index_select(0, users), ids.index_select(0, pos + self.n_users),
                     ids.index_select(0, neg + self.n_users),
                     *[self.gcns[n].preference.index_select(0, users) for n in self.names])
        return loss, self.reg_weight * reg

    def full_sort_predict(self, interaction):
        u_all, i_all = self.cached("forward", self.forward)
        return u_all[interaction[0]] @ i_all.t()
