"""SIGE: Semantic Item Graph Enhancement for multimodal recommendation
(Zhang, Zhou, Zeng, Niyato, Shen; arXiv 2508.06154, 2025; also cited as SIGER).

Only the abstract is public; this is our reading of it (design/SIGE.md) on an MGCN-style
backbone. Notation: R training interactions, A_ui = D^-1/2 [[0,R],[R^T,0]] D^-1/2,
R_norm its user-item block, X_m the raw features of modality m, E_u / E_i ID embeddings.

Graphs (built once, frozen, cached by content):
    S_m     = D^-1/2 kNN_cos(X_m, knn_k) D^-1/2            raw semantic graph (MGCN's own)
    C       = D^-1/2 sym(topk_k(R^T R - diag)) D^-1/2       collaborative item graph
              (counts or cosine, `sige_co_norm`; k = `sige_co_k`)
    S~_m    = (1 - alpha) S_m + alpha C                      infusion (`sige_alpha`)
    Not renormalised by default (`sige_renorm: false`): each part has spectral radius 1
    (D^-1/2 A D^-1/2 has the positive eigenvector sqrt(diag D)) and every row sum of the
    mix lies between the parts' row sums. C is symmetric, so its eigenvalues lie in
    [-1, 1]; MGCN's S_m is not, so rho(S~_m) <= 1 is not a theorem: measured 1.0018 at
    most on the demo data and 0.95-0.98 on TikTok. `sige_renorm: true` applies
    D^-1/2 . D^-1/2 to the mix again, which restores exactly 1.
Views:
    b   = mean_{l=0..L} A_ui^l [E_u; E_i]                    behaviour (LightGCN, n_ui_layers)
    s^m = [R_norm i_m; i_m], i_m = S~_m^n p_m,               semantic view of modality m
          p_m = E_i * sigmoid(W_g(W_m X_m))                  (MGCN's purifier, n_layers n)
    f   = fuse(s^1..s^M; b)                                  attention + preference gates
    score(u, i) = (b + f)_u . (b + f)_i
Loss on a batch (users, positives, negatives); "e" = batch users and batch positives
(the first `sige_cl_batch` of each when set: the InfoNCE terms are quadratic in their
rows and, at 2048 rows, would make SIGE ~3x MGCN's cost), every InfoNCE is taken over
users and over items separately and summed (as MGCN):
    BPR + reg_weight * L2(final u, p, n)
    + sige_lambda_p * [InfoNCE(f'_e, f''_e) (+ InfoNCE(b'_e, b''_e) with perturb_on both)]
    + sige_lambda_a * sum_m InfoNCE(b_e, s^m_e)               behaviour vectors as anchors
    + sige_lambda_c * InfoNCE(f_e, b_e)                       behaviour-fused alignment
with f' = fuse(perturb(s^m_e); b_e): the semantic views of each modality are perturbed
(modulus-based noise, `modulus_perturb`) and fused, twice, giving two contrastive views.
A zero coefficient skips its term entirely (no noise is drawn when sige_lambda_p is 0).
`calculate_loss` returns (bpr, reg, pert, anchor, align), each already weighted.

Design choice: SIGE subclasses MGCN: it inherits the behaviour view, the modality branch
(purifier, fusion), scoring and item representations, and overrides only the item graphs
(`build_item_graphs`: the infused S~_m; the raw kNN graphs share MGCN's cache entry) and
the loss.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Mapping

import numpy as np
import scipy.sparse as sp
import torch

from ..config import config_value
from ..graphs import co_interaction_graph, sym_normalize
from ..losses import info_nce
from ..modules import modality_knn_graphs
from ..registry import register_model
from ..utils import MMRecError
from .base import GeneralRecommender
from .mgcn import MGCN



def modulus_perturb(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Modulus-based personalised perturbation: z + eps * ||z|| * sign(z) * u / ||u||.

    u ~ U(0, 1)^d per row, drawn from torch's global generator (so the run seed covers
    it). The noise of each row has norm eps * ||z|| exactly (components where z is exactly
    0 get none) and lies in z's orthant, so it rotates z by a bounded angle whatever its
    scale: the intensity follows the embedding's own modulus. The modulus is detached:
    the noise is a perturbation, not a path for gradients.
    """
    u = torch.rand_like(z)
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    scale = eps * z.detach().norm(dim=-1, keepdim=True)
    return z + scale * torch.sign(z.detach()) * u


def collaborative_item_graph(model: GeneralRecommender, inter: sp.spmatrix, k: int, norm: str,
                             symmetric: bool = True) -> sp.csr_matrix:
    """C = sym_normalize(co_interaction_graph(R, k, norm, symmetric)), cached through
    `model.graph_cache()` keyed by the interaction matrix content and (k, norm, symmetric)."""
    R = sp.csr_matrix(inter, dtype=np.float32)
    params = {"k": int(k), "norm": str(norm), "symmetric": bool(symmetric)}

    def build() -> sp.csr_matrix:
        return sym_normalize(co_interaction_graph(R, int(k), norm=norm, symmetric=symmetric))

    return model.graph_cache().get_or_build("co_interaction", params, {"inter": R}, build)


def infuse(semantic: sp.spmatrix, collaborative: sp.spmatrix, alpha: float, renorm: bool = False) -> sp.csr_matrix:
    """(1 - alpha) * semantic + alpha * collaborative (both already normalised); with
    `renorm` the mix is passed through sym_normalize again."""
    mix = sp.csr_matrix((1.0 - alpha) * sp.csr_matrix(semantic, dtype=np.float32)
                        + alpha * sp.csr_matrix(collaborative, dtype=np.float32), dtype=np.float32)
    mix.eliminate_zeros()
    return sym_normalize(mix) if renorm else mix


@register_model("SIGE", aliases=["SIGER"])
class SIGE(MGCN):
    """MGCN backbone (behaviour view, modality branch, scoring and item representations
    inherited) on infused item graphs, with SIGE's own loss."""
    is_multimodal = True
    input_type = "pairwise"

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)      # calls build_item_graphs below
        self.eps = float(config_value(config, "sige_eps", 0.1))
        self.perturb_on = str(config_value(config, "sige_perturb_on", "semantic"))
        self.lambda_p = float(config_value(config, "sige_lambda_p", 0.01))
        self.lambda_a = float(config_value(config, "sige_lambda_a", 0.001))
        self.lambda_c = float(config_value(config, "sige_lambda_c", 0.001))
        self.anchor_stopgrad = bool(config_value(config, "sige_anchor_stopgrad", False))
        self.cl_batch = int(config_value(config, "sige_cl_batch", 1024))
        if self.eps < 0:
            raise MMRecError(f"sige_eps must be >= 0, found {self.eps}")
        if self.perturb_on not in ("semantic", "both"):
            raise MMRecError(f"sige_perturb_on must be 'semantic' or 'both', found {self.perturb_on!r}")

    # ---- graphs ------------------------------------------------------------
    def build_item_graphs(self, R: sp.spmatrix) -> "OrderedDict[str, sp.csr_matrix]":
        """S~_m = (1 - alpha) S_m + alpha C per modality (scipy CSR, frozen).

        S_m is MGCN's weighted, self-including, D^-1/2 S D^-1/2 kNN graph (same cache
        entry); C is built only when alpha > 0, so the no-infusion arm is exactly S_m.
        Runs inside MGCN's constructor, so it reads its own keys here.
        """
        config = self.config
        self.alpha = float(config_value(config, "sige_alpha", 0.1))
        self.renorm = bool(config_value(config, "sige_renorm", False))
        self.co_k = int(config_value(config, "sige_co_k", 10))
        self.co_norm = str(config_value(config, "sige_co_norm", "cosine"))
        self.co_symmetric = bool(config_value(config, "sige_co_symmetric", True))
        if not 0.0 <= self.alpha <= 1.0:
            raise MMRecError(f"sige_alpha is the weight of the collaborative graph in a convex mix and must lie "
                             f"in [0, 1], found {self.alpha}")
        if self.co_norm not in ("count", "cosine"):
            raise MMRecError(f"sige_co_norm must be 'count' or 'cosine', found {self.co_norm!r}")
        if self.co_k < 1:
            raise MMRecError(f"sige_co_k must be >= 1, found {self.co_k}")
        semantic = modality_knn_graphs(self, self.knn_k, weighted=True, include_self=True, norm="sym",
                                       on_device=False)
        if self.alpha == 0.0:
            graphs = OrderedDict((n, sym_normalize(g) if self.renorm else g) for n, g in semantic.items())
        else:
            collab = collaborative_item_graph(self, R, self.co_k, self.co_norm, self.co_symmetric)
            graphs = OrderedDict((n, infuse(g, collab, self.alpha, self.renorm)) for n, g in semantic.items())
        self.item_graphs = graphs
        return graphs

    # ---- loss terms ------------------------------------------------------------
    def _pair_nce(self, x: torch.Tensor, y: torch.Tensor, b: int) -> torch.Tensor:
        """InfoNCE(x, y) over the user rows [:b] plus over the item rows [b:] (x anchors)."""
        # fused=False: the autograd path SIGE's recorded results used (the fused kernel differs in
        # the last float bits)
        return info_nce(x[:b], y[:b], self.cl_temp, fused=False) + info_nce(x[b:], y[b:], self.cl_temp, fused=False)

    def perturbation_loss(self, sem: Mapping[str, torch.Tensor], beh: torch.Tensor, b: int) -> torch.Tensor:
        """InfoNCE between two perturbed semantic views (rows: b users, then items)."""
        def view() -> torch.Tensor:
            return self.modality.fuse({n: modulus_perturb(v, self.eps) for n, v in sem.items()}, beh)

        loss = self._pair_nce(view(), view(), b)
        if self.perturb_on == "both":
            loss = loss + self._pair_nce(modulus_perturb(beh, self.eps), modulus_perturb(beh, self.eps), b)
        return loss

    def anchor_loss(self, sem: Mapping[str, torch.Tensor], beh: torch.Tensor, b: int) -> torch.Tensor:
        """sum_m InfoNCE(b, s^m): each modality pulled to the behaviour vector (the anchor)."""
        anchor = beh.detach() if self.anchor_stopgrad else beh
        return sum(self._pair_nce(anchor, v, b) for v in sem.values())

    # ---- MMRec interface -------------------------------------------------------
    def calculate_loss(self, interaction):
        behaviour = self.behaviour_embeddings()
        per_modality = self.modality.modality_embeddings(self.item_id_embedding.weight)
        # the fusion is row-wise: compute it only for the batch rows (users, pos, neg).
        # index_select, not x[rows]: with repeated rows the backward of x[rows]
        # (index_put_ with accumulate) sums in a thread-dependent order on CPU (torch 2.13,
        # 2 threads), so runs with the same seed drift apart; index_add_ does not
        b, rows = self.batch_rows(interaction)
        beh = behaviour.index_select(0, rows)
        sem: Dict[str, torch.Tensor] = {n: v.index_select(0, rows) for n, v in per_modality.items()}
        side = self.modality.fuse(sem, beh)
        bpr, reg = self.bpr_and_reg(beh + side, b)
        zero = bpr.new_zeros(())
        # contrastive terms act on the first c batch users and their positive items; the
        # loader shuffles every epoch, so these rows are a uniform sample of the batch
        c = b if self.cl_batch <= 0 else min(b, self.cl_batch)

        def cl_rows(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x[:c], x[b:b + c]])

        beh_e = cl_rows(beh)
        sem_e = {k: cl_rows(v) for k, v in sem.items()}
        pert = self.lambda_p * self.perturbation_loss(sem_e, beh_e, c) if self.lambda_p != 0 else zero
        anc = self.lambda_a * self.anchor_loss(sem_e, beh_e, c) if self.lambda_a != 0 else zero
        ali = self.lambda_c * self._pair_nce(cl_rows(side), beh_e, c) if self.lambda_c != 0 else zero
        return bpr, reg, pert, anc, ali
