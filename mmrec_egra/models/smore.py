"""SMORE: spectrum-based modality representation fusion graph convolutional network for
multimodal recommendation (Ong & Khong, WSDM 2025). Trains on [3, B] batches.

Behaviour view (LightGCN on A_ui, n_ui_layers L, mean over layers 0..L): B = [B_u; B_i].
Spectral modality fusion, per modality m (features fixed, projected h_m = W_m x_m + b_m, [I, d]):
    H_m      = FFT(h_m)                    real FFT along the d features ('ortho' scaling)
    h~_m     = IFFT(H_m * F_m)             F_m: learned complex filter of modality m (denoising)
    h~_fused = IFFT(prod_m H_m * F_f)      products in the spectrum = convolutions of the
                                           modality signals, F_f the learned fusion filter
Item graphs (raw features): S_m = D^-1/2 K_m D^-1/2, K_m the cosine kNN of x_m (k = knn_k,
self included, cosine values: MGCN's graph); the fusion graph S_f = elementwise max_m S_m.
Purified views (behaviour-guided gates on the item IDs, as MGCN):
    p_m = E_i * sigmoid(G_m(h~_m)),  p_f = E_i * sigmoid(G_f(h~_fused))
    i_v = S_v^n p_v (n = n_layers, last layer), u_v = R_norm i_v, e_v = [u_v; i_v]  (v in M + {f})
Modality-aware preference fusion:
    a_m  = softmax_m(q_m(e_f))             q_m: Linear(d,d) -> Tanh -> Linear(d,1); the fused
                                           view decides how much of each modality to keep
    side = mean( [sigmoid(P_m B) * a_m e_m for m] + [sigmoid(P_f B) * e_f] )
Final F = B + side, score F_u . F_i. Loss:
    BPR(F) + reg_weight * L2(F_u, F_pos, F_neg)
    + cl_loss * (InfoNCE(side_pos, B_pos) + InfoNCE(side_u, B_u))   (in-batch, cosine, cl_temp)
returned as (bpr, reg, cl).

Choices where the paper is silent (keys): one knn_k for every modality (the authors tune one
k per modality); filters start at N(0, 0.02^2) in real and imaginary parts; the fusion graph
is the elementwise max of the NORMALISED modality graphs, not renormalised; no dropout on
the preference gates; with a single modality the fused spectrum is that modality's spectrum
with its own filter F_f. Features are fixed inputs (`freeze_features: true`).
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, propagate
from ..losses import bpr_loss, info_nce, l2_reg
from ..modules import modality_knn_graphs, normalized_interactions
from ..registry import register_model
from ..utils import MMRecError
from ._mm_inputs import feature, setup_feature_inputs
from .base import GeneralRecommender, inter_matrix_csr


def max_fusion_graph(graphs: List[sp.spmatrix]) -> sp.csr_matrix:
    """Elementwise maximum of item-item graphs (union of their edges, the larger weight)."""
    out = sp.csr_matrix(graphs[0], dtype=np.float32)
    for g in graphs[1:]:
        out = out.maximum(sp.csr_matrix(g, dtype=np.float32))
    return sp.csr_matrix(out, dtype=np.float32)


def spectral_filter(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """IFFT(FFT(h) * w) along the last dim ('ortho'); `weight` [d//2+1, 2] = (real, imag)."""
    spec = torch.fft.rfft(h, dim=-1, norm="ortho")
    return torch.fft.irfft(spec * torch.view_as_complex(weight), n=h.shape[-1], dim=-1, norm="ortho")


def spectral_fusion(hs: List[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """IFFT(prod_m FFT(h_m) * w): the filtered circular convolution of the modality signals."""
    spec = None
    for h in hs:
        s = torch.fft.rfft(h, dim=-1, norm="ortho")
        spec = s if spec is None else spec * s
    return torch.fft.irfft(spec * torch.view_as_complex(weight), n=hs[0].shape[-1], dim=-1, norm="ortho")


def _query(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))


@register_model
class SMORE(GeneralRecommender):
    is_multimodal = True

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config_value(config, "embedding_size", 64))
        self.dim = dim
        self.n_ui_layers = int(config_value(config, "n_ui_layers", 2))
        self.n_layers = int(config_value(config, "n_layers", 1))
        self.knn_k = int(config_value(config, "knn_k", 10))
        self.reg_weight = float(config_value(config, "reg_weight", 1e-4))
        self.cl_weight = float(config_value(config, "cl_loss", 0.01))
        self.cl_temp = float(config_value(config, "cl_temp", 0.2))
        if self.cl_temp <= 0:
            raise MMRecError(f"cl_temp must be positive, found {self.cl_temp}")
        self.names = list(self.mm_feats)
        n_m = len(self.names)

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        setup_feature_inputs(self, config)
        self.proj = nn.ModuleList([nn.Linear(self.mm_feats[n].shape[1], dim) for n in self.names])
        n_freq = dim // 2 + 1
        self.filters = nn.ParameterList([nn.Parameter(torch.randn(n_freq, 2) * 0.02) for _ in self.names])
        self.fusion_filter = nn.Parameter(torch.randn(n_freq, 2) * 0.02)
        # gates and preference projections: one per modality, the fused view last
        self.purifier = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n_m + 1)])
        self.prefer_gate = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n_m + 1)])
        self.query = nn.ModuleList([_query(dim) for _ in self.names])

        R = inter_matrix_csr(dataloader)
        self.norm_adj = SparseMat.of(bipartite_adjacency(R), self.device, symmetric=True)
        self.R_norm = SparseMat.of(normalized_interactions(R), self.device)
        graphs = modality_knn_graphs(self, self.knn_k, weighted=True, include_self=True, on_device=False)
        self.item_graphs = [SparseMat.of(graphs[n], self.device) for n in self.names]
        self.fusion_graph_csr = max_fusion_graph([graphs[n] for n in self.names])
        self.fusion_graph = SparseMat.of(self.fusion_graph_csr, self.device)

    # ---- views ---------------------------------------------------------------
    def behaviour_embeddings(self) -> torch.Tensor:
        """LightGCN view, mean over layers 0..n_ui_layers, [U+I, d] (users first)."""
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight], dim=0)
        return propagate(self.norm_adj, ego, self.n_ui_layers)

    def filtered_features(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """([h~_m per modality], h~_fused), each [I, d]."""
        hs = [self.proj[m](feature(self, n)) for m, n in enumerate(self.names)]
        filtered = [spectral_filter(h, self.filters[m]) for m, h in enumerate(hs)]
        return filtered, spectral_fusion(hs, self.fusion_filter)

    def view_embeddings(self) -> List[torch.Tensor]:
        """e_v = [u_v; i_v] for every modality, then the fused view last, each [U+I, d]."""
        filtered, fused = self.filtered_features()
        graphs = self.item_graphs + [self.fusion_graph]
        out = []
        for v, (h, graph) in enumerate(zip(filtered + [fused], graphs)):
            x = self.item_id_embedding.weight * torch.sigmoid(self.purifier[v](h))
            for _ in range(self.n_layers):
                x = graph @ x
            out.append(torch.cat([self.R_norm @ x, x], dim=0))
        return out

    def fuse(self, views: List[torch.Tensor], behaviour: torch.Tensor) -> torch.Tensor:
        """side [N, d] from the views and behaviour embeddings of the same N rows (row-wise)."""
        fused = views[-1]
        att = torch.softmax(torch.cat([q(fused) for q in self.query], dim=1), dim=1)   # [N, M]
        parts = [torch.sigmoid(self.prefer_gate[m](behaviour)) * att[:, m:m + 1] * views[m]
                 for m in range(len(self.names))]
        parts.append(torch.sigmoid(self.prefer_gate[-1](behaviour)) * fused)
        return torch.stack(parts, dim=0).mean(0)

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(behaviour [U+I, d], side [U+I, d]); the scoring vectors are their sum."""
        behaviour = self.behaviour_embeddings()
        return behaviour, self.fuse(self.view_embeddings(), behaviour)

    # ---- MMRec interface -------------------------------------------------------
    def calculate_loss(self, interaction):
        users, pos, neg = interaction[0], interaction[1], interaction[2]
        b = users.shape[0]
        behaviour = self.behaviour_embeddings()
        views = self.view_embeddings()
        # the fusion is row-wise: compute it for the batch's distinct rows only
        rows = torch.cat([users, pos + self.n_users, neg + self.n_users])
        uniq, inverse = torch.unique(rows, return_inverse=True)
        beh_u = behaviour.index_select(0, uniq)
        side_u = self.fuse([v.index_select(0, uniq) for v in views], beh_u)
        beh, side = beh_u.index_select(0, inverse), side_u.index_select(0, inverse)
        final = beh + side
        u, p, n = final[:b], final[b:2 * b], final[2 * b:]
        bpr = bpr_loss((u * p).sum(-1), (u * n).sum(-1))
        reg = self.reg_weight * l2_reg(u, p, n)
        if self.cl_weight != 0:
            cl = self.cl_weight * (info_nce(side[b:2 * b], beh[b:2 * b], self.cl_temp)
                                   + info_nce(side[:b], beh[:b], self.cl_temp))
        else:
            cl = bpr.new_zeros(())
        return bpr, reg, cl

    def _final(self) -> Tuple[torch.Tensor, torch.Tensor]:
        behaviour, side = self.forward()
        final = behaviour + side
        return final[:self.n_users], final[self.n_users:]

    def full_sort_predict(self, interaction):
        u_all, i_all = self.cached("final", self._final)
        return u_all[interaction[0]] @ i_all.t()

    def item_representations(self, kind: str = "final") -> torch.Tensor:
        if kind not in ("final", "behaviour", "modality"):
            raise MMRecError(f"item_representations kind must be final, behaviour or modality; found {kind!r}")
        was = self.training
        self.eval()
        with torch.no_grad():
            behaviour, side = self.forward()
        self.train(was)
        parts = {"final": behaviour + side, "behaviour": behaviour, "modality": side}
        return parts[kind][self.n_users:].detach()
