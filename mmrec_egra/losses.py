"""Loss functions shared by all models (defined once, reused everywhere)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """BPR: -mean log sigmoid(s_pos - s_neg), computed stably with softplus."""
    return F.softplus(neg_scores - pos_scores).mean()


def l2_reg(*embeddings: torch.Tensor) -> torch.Tensor:
    """L2 on batch embeddings: 0.5 * sum of squared norms / batch size (batch = rows of the first)."""
    batch = embeddings[0].shape[0]
    return 0.5 * sum(e.pow(2).sum() for e in embeddings) / batch


def emb_norm_reg(*embeddings: torch.Tensor) -> torch.Tensor:
    """Sum of the (unsquared) Frobenius norms of the batch embeddings / batch size.

    The EmbLoss form that MMRec's BPR, LightGCN, VBPR and LGMRec use; MGCN and LATTICE use
    `l2_reg` (half squared norms). The two differ a lot in strength for one reg_weight.
    """
    batch = embeddings[0].shape[0]
    return sum(torch.linalg.vector_norm(e) for e in embeddings) / batch


class _UnitInfoNCE(torch.autograd.Function):
    """Per-row InfoNCE of unit vectors z1, z2 (temperature t), with a hand-written backward.

    Since |z1_i . z2_j| <= 1, every logit lies in [-1/t, 1/t], so for t >= 0.05 exp(logit)
    neither overflows nor underflows in float32: no max pass is needed. The [B, B] matrix
    is written once (mm), exponentiated in place, summed, and reused in place by the
    backward, instead of the ~10 passes and 3 buffers of log_softmax + nll (the in-batch
    loss dominates MGCN-style steps on CPU).
    """

    @staticmethod
    def forward(ctx, z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:  # type: ignore[override]
        inv_t = 1.0 / t
        exp = torch.mm(z1 * inv_t, z2.t()).exp_()          # logits in [-1/t, 1/t]: no overflow
        denom = exp.sum(dim=1)
        pos = (z1 * z2).sum(dim=1) * inv_t
        ctx.save_for_backward(z1, z2, exp, denom)
        ctx.inv_t = inv_t
        return denom.log() - pos

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        if getattr(ctx, "consumed", False):
            raise RuntimeError("the fused info_nce reuses its buffer in the backward: it cannot be "
                               "differentiated twice (use info_nce(..., fused=False) with retain_graph)")
        ctx.consumed = True
        z1, z2, exp, denom = ctx.saved_tensors
        inv_t = ctx.inv_t
        # d loss_i / d logits_ij = softmax_ij - [i == j]; scaled by grad_i and 1/t
        w = exp.mul_((grad * inv_t / denom)[:, None])      # in place: exp is not needed again
        g = (grad * inv_t)[:, None]
        g1 = torch.addmm(-g * z2, w, z2)
        g2 = torch.addmm(-g * z1, w.t(), z1)
        return g1, g2, None


def info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float, reduction: str = "mean",
             fused: bool = True, positives: Optional[torch.Tensor] = None) -> torch.Tensor:
    """InfoNCE on cosine similarities: the one implementation every model uses.

    In-batch (default): row i of view1 is positive with row i of view2, the other rows of
    view2 are its negatives. With `positives` (a LongTensor [B]): view2 holds candidates
    (e.g. all items) and row i of view1 is positive with view2[positives[i]].
    `fused=True` (in-batch, temperature >= 0.05) computes the same value and gradients with
    one [B, B] buffer and about a third of the memory passes (`_UnitInfoNCE`; it cannot be
    differentiated twice); `fused=False` goes through autograd (log_softmax + nll).
    reduction: 'mean' | 'sum' | 'none' (per-row losses, used by EGRA's entity weights).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', found {reduction!r}")
    if positives is not None:
        # scale the [B, d] side, not the [B, N] logits
        z1 = F.normalize(view1, dim=-1) / temperature
        z2 = F.normalize(view2, dim=-1)
        return F.cross_entropy(z1 @ z2.t(), positives, reduction=reduction)
    z1 = F.normalize(view1, dim=-1)
    z2 = F.normalize(view2, dim=-1)
    if not fused or temperature < 0.05:      # exp(+-1/t) near float32 limits below 0.05
        logits = z1 @ z2.t() / temperature
        labels = torch.arange(z1.shape[0], device=z1.device)
        return F.cross_entropy(logits, labels, reduction=reduction)
    loss = _UnitInfoNCE.apply(z1, z2, float(temperature))
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss
