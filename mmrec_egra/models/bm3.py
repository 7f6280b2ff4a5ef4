"""BM3: bootstrap latent representations for multimodal recommendation
(Zhou et al., WWW'23). Trains on [2, B] batches (user, item): no negatives
(`input_type = 'pointwise'`; BM3.yaml sets use_neg_sampling: false).

Online encoder: LightGCN on A~_ui (n_layers), mean over layers 0..L, items with their ID
embedding added back (residual):
    [h_u; h_i'] = mean_{l=0..L} A~^l [e_user; e_item],   h_i = h_i' + e_i
Modality encoders: z_m = W_m x_m + b_m (one Linear per available modality, features fixed).
Shared predictor f(h) = W_p h + b_p. Target views are dropout copies with stopped gradient:
    h_u^t = sg(Dropout_p(h_u)),  h_i^t = sg(Dropout_p(h_i)),  z_m^t = sg(Dropout_p(z_m))
With C(a, b) = 1 - cos(a, b) averaged over the batch:
    L_rec   = C(f(h_u), h_i^t) + C(f(h_i), h_u^t)                         (user <-> item)
    L_align = sum_m [ C(f(z_m), h_i^t) + C(f(z_m), z_m^t) ]               (modality terms:
              inter-modality alignment with the item view + intra-modality masking)
    L = L_rec + reg_weight * (||H_u||_F + ||H_i||_F) / n_items + cl_weight * L_align
(The regulariser is the reference toolbox's embedding loss: Frobenius norms of all online
user and item embeddings divided by the item count.) Score(u, i) = f(h_u) . f(h_i), the
predicted online views of both sides (the paper's ranking rule).
Only the batch rows are projected and passed through the predictor: the same values as
projecting every item, for a fraction of the work. The alignment terms are skipped when
cl_weight == 0.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, propagate
from ..registry import register_model
from ._mm_inputs import feature, feature_projections, setup_feature_inputs
from .base import GeneralRecommender, inter_matrix_csr


def cosine_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - mean cosine similarity of matching rows (BM3's alignment loss C).

    Normalise-then-dot: fewer kernels than F.cosine_similarity (which differs only for
    near-zero vectors, through its eps)."""
    return 1.0 - (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1).mean()


class _FrobeniusNorm(torch.autograd.Function):
    """||x||_F with a one-kernel backward (x * g / ||x||): the regulariser touches every
    user and item row at every step, so its backward cost matters."""

    @staticmethod
    def forward(ctx, x):
        flat = x.reshape(-1)
        norm = torch.dot(flat, flat).sqrt()
        ctx.save_for_backward(x, norm)
        return norm

    @staticmethod
    def backward(ctx, grad):
        x, norm = ctx.saved_tensors
        return x * (grad / norm.clamp_min(1e-12))


@register_model
class BM3(GeneralRecommender):
    is_multimodal = True
    input_type = "pointwise"

    def __init__(self, config, dataloader):
        super().__init__(config, dataloader)
        dim = int(config["embedding_size"])
        self.n_layers = int(config_value(config, "n_layers", 1))
        self.dropout = float(config_value(config, "dropout", 0.3))
        self.reg_weight = float(config_value(config, "reg_weight", 0.1))
        self.cl_weight = float(config_value(config, "cl_weight", 2.0))

        self.user_embedding = nn.Embedding(self.n_users, dim)
        self.item_id_embedding = nn.Embedding(self.n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        self.predictor = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.predictor.weight)
        setup_feature_inputs(self, config)
        self.projections = feature_projections(self, dim, init="xavier_normal")
        self.norm_adj = SparseMat.from_scipy(bipartite_adjacency(inter_matrix_csr(dataloader)), self.device)

    def forward(self):
        """Online user and item embeddings (all rows)."""
        ego = torch.cat([self.user_embedding.weight, self.item_id_embedding.weight], dim=0)
        out = propagate(self.norm_adj, ego, self.n_layers)
        u, i = torch.split(out, [self.n_users, self.n_items])
        return u, i + self.item_id_embedding.weight

    def _targets(self, views):
        """Dropout copies of `views` that receive no gradient (the target views).

        The 1/(1-p) rescaling of dropout is left out: every target only enters through a
        cosine, which ignores scale. The keep mask compares 16-bit uniform integers with
        p * 2^16 (p is quantised to 2^-16): four per 64-bit random draw, about 3x cheaper
        than float uniforms and 7x cheaper than Bernoulli sampling on CPU."""
        with torch.no_grad():
            x = torch.cat([v.detach() for v in views])
            n = x.numel()
            bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
            r16 = bits.view(torch.int16)[:n].view_as(x)
            x = x * (r16 >= int(round(self.dropout * 65536)) - 32768)
            return torch.split(x, [v.shape[0] for v in views])

    def calculate_loss(self, interaction):
        users, items = interaction[0], interaction[1]
        u_all, i_all = self.forward()
        # index_select: its backward is deterministic on CPU threads (x[idx]'s is not)
        u_on, i_on = u_all.index_select(0, users), i_all.index_select(0, items)
        online = [u_on, i_on]
        if self.cl_weight != 0.0:
            # project each distinct batch item once (popular items repeat within a batch)
            uniq, inv = torch.unique(items, return_inverse=True)
            online += [proj(feature(self, name).index_select(0, uniq)) for name, proj in self.projections.items()]
        # one predictor product for every view of the batch
        preds = list(torch.split(self.predictor(torch.cat(online)), [v.shape[0] for v in online]))
        for m in range(2, len(online)):   # back to one row per batch entry
            online[m], preds[m] = online[m].index_select(0, inv), preds[m].index_select(0, inv)
        targets = self._targets(online)
        loss = cosine_gap(preds[0], targets[1]) + cosine_gap(preds[1], targets[0])
        if self.reg_weight != 0.0:
            frob = _FrobeniusNorm.apply
            loss = loss + self.reg_weight * (frob(u_all) + frob(i_all)) / self.n_items
        if self.cl_weight != 0.0:
            align = 0.0
            for m in range(2, len(online)):
                align = align + cosine_gap(preds[m], targets[1]) + cosine_gap(preds[m], targets[m])
            loss = loss + self.cl_weight * align
        return loss

    def _predicted(self):
        u_all, i_all = self.forward()
        return self.predictor(u_all), self.predictor(i_all)

    def full_sort_predict(self, interaction):
        u_pred, i_pred = self.cached("predicted", self._predicted)
        return u_pred[interaction[0]] @ i_pred.t()

    def item_representations(self, kind: str = "final") -> torch.Tensor:
        was = self.training
        self.eval()
        with torch.no_grad():
            if kind == "final":
                out = self._predicted()[1]
            elif kind == "behaviour":
                out = self.forward()[1]
            elif kind == "modality":
                out = torch.stack([proj(feature(self, n)) for n, proj in self.projections.items()]).mean(0)
            else:
                raise KeyError(kind)
        self.train(was)
        return out
