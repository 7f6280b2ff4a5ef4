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
