"""Loss functions shared by all models (defined once, reused everywhere)."""
from __future__ import annotations

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


def info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float,
             reduction: str = "mean") -> torch.Tensor:
    """In-batch InfoNCE on cosine similarities; row i of view1 is positive with row i of view2.

    reduction 'none' returns the per-row losses (used by EGRA's entity weights).
    """
    z1 = F.normalize(view1, dim=-1)
    z2 = F.normalize(view2, dim=-1)
    logits = z1 @ z2.t() / temperature
    labels = torch.arange(z1.shape[0], device=z1.device)
    return F.cross_entropy(logits, labels, reduction=reduction)


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
            raise RuntimeError("info_nce_fast reuses its buffer in the backward: it cannot be "
                               "differentiated twice (use info_nce with retain_graph)")
        ctx.consumed = True
        z1, z2, exp, denom = ctx.saved_tensors
        inv_t = ctx.inv_t
        # d loss_i / d logits_ij = softmax_ij - [i == j]; scaled by grad_i and 1/t
        w = exp.mul_((grad * inv_t / denom)[:, None])      # in place: exp is not needed again
        g = (grad * inv_t)[:, None]
        g1 = torch.addmm(-g * z2, w, z2)
        g2 = torch.addmm(-g * z1, w.t(), z1)
        return g1, g2, None


def info_nce_fast(view1: torch.Tensor, view2: torch.Tensor, temperature: float,
                  reduction: str = "mean") -> torch.Tensor:
    """Same value and gradients as `info_nce` (in-batch, cosine, positives on the diagonal),
    computed with one [B, B] buffer and about a third of the memory passes.

    Falls back to `info_nce` for temperatures below 0.05 (exp(+-1/t) near float32 limits).
    """
    if temperature < 0.05:
        return info_nce(view1, view2, temperature, reduction)
    z1 = F.normalize(view1, dim=-1)
    z2 = F.normalize(view2, dim=-1)
    loss = _UnitInfoNCE.apply(z1, z2, float(temperature))
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', found {reduction!r}")
