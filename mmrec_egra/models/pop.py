"""Pop (most popular): every user gets the items ranked by their number of training
interactions. The reference line of RecBole's Pop and Cornac's MostPop; no training.

    score(u, i) = |{v : (v, i) in train}|      (the same for every user; evaluation masks
                                                 the user's own training items)

A model whose accuracy is at Pop's level has gained nothing over popularity (whatever its
ranking looks like): the zoo table uses it as the floor.
The host trains every model, so the model holds one dummy parameter and its loss is a
constant 0 (`epochs: 1` in its yaml: one "epoch", one evaluation). Ties in the count keep
the evaluator's top-k order (deterministic).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..registry import register_model
from .base import GeneralRecommender, inter_matrix_csr


@register_model
class Pop(GeneralRecommender):

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        counts = np.asarray(inter_matrix_csr(dataloader).sum(axis=0), dtype=np.float32).reshape(-1)
        self.register_buffer("counts", torch.as_tensor(counts).to(self.device))
        # the host's optimiser needs a parameter; the loss never depends on it
        self.dummy = nn.Parameter(torch.zeros(1, device=self.device))

    def calculate_loss(self, interaction):
        return self.dummy.sum() * 0.0

    def full_sort_predict(self, interaction):
        return self.counts.unsqueeze(0).repeat(len(interaction[0]), 1)   # a copy: the evaluator masks in place
