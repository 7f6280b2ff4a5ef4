"""EGRA: Enhanced behaviour Graphs and Representation Alignment for multimodal
recommendation (Zhang, Zhou, Zeng, Wang, Niyato, Shen; arXiv 2508.16170, 2025), stage 2.

What the paper states (abstract and third-party summaries only; no equations are
available to us):
  * the item-item links added to the behaviour graph should come from item
    REPRESENTATIONS OF A PRETRAINED MULTIMODAL RECOMMENDER (reportedly MGCN), not from raw
    modality features ("enhanced behaviour graph");
  * modality-behaviour alignment should be weighted per entity by its current alignment
    degree, and its global strength should grow during training ("bi-level dynamic
    alignment weighting").
Everything below beyond those two ideas is OUR choice (docs/egra.md sets the two apart);
each choice is a config key so that the ablation arms can switch it off.

Stage 1 (pipeline.stage1, called from `EGRA.prepare` in our host): train the teacher
(`teacher_model`, MGCN by default) with early stopping on valid and export its item
vectors T [I, d_t] (`teacher_embedding: final|behaviour|modality`); the export is stored
and reused. In a foreign host (a real MMRec checkout) the constructor gets T through
pipeline.teacher_embeddings_for_model (stored export, `teacher_embeddings_file`, or a
teacher trained for `teacher_epochs` epochs on the training matrix).

Stage 2 (this class, an MGCN backbone: parameter names equal MGCN's):
  Enhanced behaviour graph
      S   = sym_max(kNN_k(T))                top-k cosine neighbours (`egra_knn_k`), self
                                             excluded, weights max(cos, 0) or 1
                                             (`egra_knn_weighted`), symmetrised with max
      A+  = [[0, R], [R^T, beta S]]          (`egra_beta`)
      joint:    D^-1/2 A+ D^-1/2            (`egra_graph_merge: joint`, D = row sums of A+)
      separate: A_ui + beta D_S^-1/2 S D_S^-1/2     (the yaml default: best 3-seed TikTok
                                             validation Recall@20, 0.1138 vs joint 0.1094)
      b   = mean_{l=0..L} (A+)^l [E_u; E_i]  LightGCN, L = n_ui_layers
    `egra_graph_source`: teacher (S from T) | raw (S = sym_max(mean_m kNN_k(X_m)), the
    per-modality raw-feature graphs with the same k / weighting / no self, averaged:
    what "existing methods" do, for the ablation) | none (A+ = A_ui: MGCN's graph).
  Modality side s: MGCN's ModalityBranch unchanged (purifier, raw-feature kNN graphs
    with self, attention fusion). `egra_modality_graph`: raw (MGCN) | teacher (every
    modality propagates on the teacher graph built like MGCN's: kNN_knn_k(T) with self,
    weights max(cos, 0), not symmetrised, D^-1/2 . D^-1/2) | both (0.5 (raw_m + teacher)
    before that normalisation, per modality).
  Score: (b_u + s_u) . (b_i + s_i).
  Loss on a batch [3, B] (users, positive items, negative items), returned as the tuple
      (BPR, reg_weight * L2(final u, pos, neg), L_align)
      a_e      = cos(s_e, b_e)                                   no gradient
      w        = n softmax(sign a / tau_w) over the batch         mean exactly 1
                 sign -1 focus_misaligned, +1 trust_aligned; uniform: w = 1
      l_e      = InfoNCE(s_e, b_e; cl_temp) per entity           in-batch negatives
      L_align  = lambda(t) (mean_u w_u l_u + mean_i w_i l_i)      users, positive items
      lambda(t) = schedule_lambda(t, egra_schedule, egra_lambda_min, egra_lambda_max, ramp)
    t is the epoch index (`egra_schedule_unit: epoch`, advanced in pre_epoch_processing)
    or the optimisation step (`step`); `egra_ramp` is always given in EPOCHS and, for
    the step unit, converted to steps with batches per epoch = ceil(n_train / batch).

Reduction: egra_graph_source none + egra_modality_graph raw + egra_weight_mode uniform +
egra_schedule constant with egra_lambda_max = c is MGCN with cl_loss = c (same loss).

Defaults (configs/model/EGRA.yaml) were picked on VALIDATION Recall@20 of real TikTok
(seed 999, one MGCN teacher): lambda rises linearly from 0.001 (not 0: with lambda = 0 in
the first epochs MGCN-style training lost ~10% valid Recall@20, since the alignment term
shapes the early epochs) to 0.01 over 50 epochs; tau_w = 0.2 (at 1.0 the weights stay
within a few % of 1, i.e. uniform); beta 1.0, k 10.

Batch type: pairwise, LongTensor [3, B] (user, positive item, negative item).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ..config import config_value
from ..graphs import SparseMat, bipartite_adjacency, knn_graph, sym_normalize, symmetrize
from ..losses import info_nce
from ..modules import modality_knn_graphs
from ..registry import register_model
from ..utils import MMRecError, get_logger
from .base import inter_matrix_csr
from .mgcn import MGCN

GRAPH_SOURCES = ("teacher", "raw", "none")
GRAPH_MERGES = ("joint", "separate")
MODALITY_GRAPHS = ("raw", "teacher", "both")
WEIGHT_MODES = ("focus_misaligned", "trust_aligned", "uniform")
SCHEDULES = ("linear", "cosine", "sigmoid", "exp", "constant")
SCHEDULE_UNITS = ("epoch", "step")


# ---------------------------------------------------------------------------------------
# pure functions (tested on their own)
# ---------------------------------------------------------------------------------------
def entity_weights(a: torch.Tensor, mode: str, temp: float = 1.0) -> torch.Tensor:
    """Entity-level alignment weights w [n] from alignment degrees a [n] (cosines).

    w = n * softmax(sign * a / temp), so mean(w) = 1 and the overall strength stays
    with lambda(t); sign = -1 for 'focus_misaligned' (poorly aligned entities get more
    weight), +1 for 'trust_aligned' (well aligned ones get more: a misaligned entity is
    treated as likely noise); 'uniform' gives ones. No gradient flows through w.
    """
    if mode == "uniform":
        return torch.ones_like(a)
    if mode not in ("focus_misaligned", "trust_aligned"):
        raise MMRecError(f"egra_weight_mode must be one of {', '.join(WEIGHT_MODES)}, found {mode!r}")
    if temp <= 0:
        raise MMRecError(f"egra_weight_temp must be positive, found {temp}")
    sign = -1.0 if mode == "focus_misaligned" else 1.0
    a = a.detach()
    return a.shape[0] * torch.softmax(sign * a / temp, dim=0)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def schedule_lambda(t: float, kind: str, lam_min: float, lam_max: float, ramp: float) -> float:
    """Global alignment strength lambda(t) = lam_min + (lam_max - lam_min) f(p), p = clip(t / ramp, 0, 1).

    Curves f on [0, 1] (all non-decreasing, f(0) = 0 and f(1) = 1 exactly, so lambda
    rises from lam_min at t = 0 to lam_max at t = ramp and is held at lam_max after):
      linear   f(p) = p
      cosine   f(p) = (1 - cos(pi p)) / 2                       slow start and end
      sigmoid  f(p) = (g(p) - g(0)) / (g(1) - g(0)),  g(p) = 1 / (1 + exp(-10 (p - 1/2)))
               (logistic centred at ramp/2 with slope 10/ramp, rescaled to hit the ends)
      exp      f(p) = (exp(5 p) - 1) / (exp(5) - 1)             late rise
      constant lambda = lam_max for every t (fixed strength, as MGCN)
    `ramp <= 0` means no ramp: lam_max from t = 0.
    """
    if kind not in SCHEDULES:
        raise MMRecError(f"egra_schedule must be one of {', '.join(SCHEDULES)}, found {kind!r}")
    if kind == "constant" or ramp <= 0:
        return float(lam_max)
    p = min(max(float(t) / float(ramp), 0.0), 1.0)
    if kind == "linear":
        f = p
    elif kind == "cosine":
        f = 0.5 * (1.0 - math.cos(math.pi * p))
    elif kind == "sigmoid":
        g0, g1 = _sigmoid(-5.0), _sigmoid(5.0)
        f = (_sigmoid(10.0 * (p - 0.5)) - g0) / (g1 - g0)
    else:  # exp
        f = math.expm1(5.0 * p) / math.expm1(5.0)
    if p >= 1.0:  # hit the end exactly, whatever the rounding of the curve
        f = 1.0
    return float(lam_min) + (float(lam_max) - float(lam_min)) * f


def teacher_knn_graph(vectors, k: int, weighted: bool = True, include_self: bool = False) -> sp.csr_matrix:
    """Top-k cosine neighbours of each item vector (not symmetrised), [I, I] CSR.

    Weights are max(cos, 0) (`weighted`) or 1. Why clamp: a negative weight would make
    a propagated message point away from the neighbour and can make a degree <= 0, for
    which D^-1/2 is undefined; zero-weight entries are dropped, so a row can hold fewer
    than k entries only when fewer than k neighbours have a positive cosine.
    """
    g = knn_graph(vectors, int(k), weighted=True, include_self=include_self)
    if weighted:
        np.maximum(g.data, 0.0, out=g.data)
    else:
        g.data = (g.data > 0).astype(np.float32)  # binary, but still only positive-cosine links
    g.eliminate_zeros()
    return g


def needs_teacher(config) -> bool:
    """True when this configuration reads teacher vectors (graph or modality side)."""
    source = str(config_value(config, "egra_graph_source", "teacher")).lower()
    mod = str(config_value(config, "egra_modality_graph", "raw")).lower()
    return source == "teacher" or mod in ("teacher", "both")


def _choice(config, key: str, default: str, allowed) -> str:
    v = str(config_value(config, key, default)).lower()
    if v not in allowed:
        raise MMRecError(f"{key} must be one of {', '.join(allowed)}, found {config[key]!r}")
    return v


# ---------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------
@register_model
class EGRA(MGCN):
    """MGCN backbone on a teacher-enhanced behaviour graph with bi-level dynamic alignment."""

    is_multimodal = True

    @classmethod
    def prepare(cls, config, dataset, loaders) -> None:
        """Stage 1 in our host, before each combination: train or reuse the teacher export."""
        log = get_logger()
        if needs_teacher(config) and config["_teacher_embeddings"] is None:
            from ..pipeline import stage1
            emb, info = stage1(config, dataset, loaders)
            config["_teacher_embeddings"] = emb
            config["_teacher_info"] = info
        info = config["_teacher_info"] or {}
        log.info("stage 2: training EGRA (behaviour graph %s, beta %s, k %s, merge %s; modality graph %s; "
                 "weights %s tau %s; schedule %s %s->%s over %s %s; teacher %s)",
                 config["egra_graph_source"], config["egra_beta"], config["egra_knn_k"], config["egra_graph_merge"],
                 config["egra_modality_graph"], config["egra_weight_mode"], config["egra_weight_temp"],
                 config["egra_schedule"], config["egra_lambda_min"], config["egra_lambda_max"], config["egra_ramp"],
                 "epochs", info.get("source", "not used") if needs_teacher(config) else "not used")

    def __init__(self, config, dataloader):
        # MGCN builds the embeddings, A_ui and the modality branch exactly as MGCN does (same
        # random draws in the same order), so a seed gives EGRA and MGCN the same initial weights
        super().__init__(config, dataloader)
        self.graph_source = _choice(config, "egra_graph_source", "teacher", GRAPH_SOURCES)
        self.graph_merge = _choice(config, "egra_graph_merge", "separate", GRAPH_MERGES)
        self.modality_graph = _choice(config, "egra_modality_graph", "raw", MODALITY_GRAPHS)
        self.weight_mode = _choice(config, "egra_weight_mode", "focus_misaligned", WEIGHT_MODES)
        self.schedule = _choice(config, "egra_schedule", "linear", SCHEDULES)
        self.schedule_unit = _choice(config, "egra_schedule_unit", "epoch", SCHEDULE_UNITS)
        self.egra_k = int(config_value(config, "egra_knn_k", 10))
        self.knn_weighted = config["egra_knn_weighted"] is not False
        self.beta = float(config_value(config, "egra_beta", 1.0))
        self.weight_temp = float(config_value(config, "egra_weight_temp", 0.2))
        self.lam_min = float(config_value(config, "egra_lambda_min", 0.001))
        self.lam_max = float(config_value(config, "egra_lambda_max", 0.01))
        self.ramp = float(config_value(config, "egra_ramp", 50))
        if self.egra_k < 1:
            raise MMRecError(f"egra_knn_k must be >= 1, found {self.egra_k}")
        if self.beta < 0:
            raise MMRecError(f"egra_beta must be >= 0, found {self.beta}")
        if self.weight_temp <= 0:
            raise MMRecError(f"egra_weight_temp must be positive, found {self.weight_temp}")
        self.cl_weight = None  # MGCN's fixed cl_loss is replaced by lambda(t) (keeps misuse loud)

        R = inter_matrix_csr(dataloader)
        # ramp in epochs -> steps: the loader yields ceil(n_train / batch) batches per epoch
        self.batches_per_epoch = max(1, math.ceil(R.nnz / int(self.batch_size or 2048)))

        self.teacher: Optional[torch.Tensor] = None
        if needs_teacher(config):
            from ..pipeline import teacher_embeddings_for_model
            emb = np.asarray(teacher_embeddings_for_model(config, dataloader, self.n_items), dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != self.n_items:
                raise MMRecError(f"teacher item vectors have shape {emb.shape}; expected [{self.n_items}, d] "
                                 f"(one row per item id)")
            if not np.isfinite(emb).all():
                raise MMRecError("teacher item vectors hold NaN or inf values")
            self.teacher = torch.from_numpy(np.ascontiguousarray(emb))   # CPU: graphs are built on the host

        # enhanced behaviour graph A+ (replaces MGCN's A_ui unless the source is 'none')
        self.item_item: Optional[sp.csr_matrix] = self._behaviour_item_graph()
        if self.item_item is not None:
            adj = bipartite_adjacency(R, self.item_item, beta=self.beta, merge=self.graph_merge)
            self.norm_adj = SparseMat.of(adj, self.device, symmetric=True)
        if self.modality_graph != "raw":
            self.modality.set_item_graphs(self._modality_item_graphs())

        # schedule clock [epoch index, steps done]; a buffer so that --resume continues it
        self.register_buffer("schedule_state", torch.tensor([-1, 0], dtype=torch.long))
        self._align_sum = torch.zeros(2, device=self.device)
        self._align_batches = 0
        self._last_lambda = self.current_lambda()

    # ---- graphs ------------------------------------------------------------
    def _behaviour_item_graph(self) -> Optional[sp.csr_matrix]:
        """S for A+ (symmetric, no self loops, before beta), or None for 'none'."""
        if self.graph_source == "none":
            return None
        cache = self.graph_cache()
        if self.graph_source == "teacher":
            params = {"k": self.egra_k, "weighted": self.knn_weighted, "self": False, "clamp": 0.0, "sym": "max"}
            return cache.get_or_build("egra_teacher_item_graph", params, {"teacher": self.teacher},
                                      lambda: symmetrize(teacher_knn_graph(self.teacher, self.egra_k,
                                                                           self.knn_weighted), "max"))
        # raw: the per-modality raw-feature graphs (each cached) averaged, clamped, symmetrised
        raw = modality_knn_graphs(self, self.egra_k, weighted=self.knn_weighted, include_self=False,
                                  norm="none", on_device=False)
        mean = sum(raw.values()) / len(raw)
        mean = sp.csr_matrix(mean, dtype=np.float32)
        np.maximum(mean.data, 0.0, out=mean.data)
        mean.eliminate_zeros()
        return symmetrize(mean, "max")

    def _modality_item_graphs(self):
        """Per-modality item graphs for egra_modality_graph teacher|both (normalised like MGCN's)."""
        params = {"k": self.knn_k, "weighted": True, "self": True, "clamp": 0.0}
        teacher_graph = self.graph_cache().get_or_build(
            "egra_teacher_modality_graph", params, {"teacher": self.teacher},
            lambda: teacher_knn_graph(self.teacher, self.knn_k, weighted=True, include_self=True))
        if self.modality_graph == "teacher":
            g = SparseMat.of(sym_normalize(teacher_graph), self.device)
            return {name: g for name in self.modality.names}
        raw = modality_knn_graphs(self, self.knn_k, weighted=True, include_self=True, norm="none", on_device=False)
        return {name: SparseMat.of(sym_normalize(0.5 * (raw[name] + teacher_graph)), self.device)
                for name in self.modality.names}

    # ---- schedule ------------------------------------------------------------
    def schedule_time(self) -> Tuple[float, float]:
        """(t, ramp) in the schedule's unit: (epoch index, ramp epochs) or (step, ramp * batches)."""
        if self.schedule_unit == "step":
            return float(self.schedule_state[1]), self.ramp * self.batches_per_epoch
        return float(max(int(self.schedule_state[0]), 0)), self.ramp

    def current_lambda(self) -> float:
        t, ramp = self.schedule_time()
        return schedule_lambda(t, self.schedule, self.lam_min, self.lam_max, ramp)

    def pre_epoch_processing(self) -> None:
        self.schedule_state[0] += 1
        self._align_sum = torch.zeros(2, device=self.device)
        self._align_batches = 0

    def post_epoch_processing(self) -> Optional[str]:
        if self._align_batches == 0:
            return f"lambda {self._last_lambda:.3g}"
        a_u, a_i = (self._align_sum / self._align_batches).tolist()
        return f"lambda {self._last_lambda:.3g} align(u) {a_u:.3f} align(i) {a_i:.3f}"

    # ---- MMRec interface ---------------------------------------------------
    def calculate_loss(self, interaction):
        behaviour = self.behaviour_embeddings()
        per_modality = self.modality.modality_embeddings(self.item_id_embedding.weight)
        # fusion is row-wise: only the batch's rows (users, pos, neg) are fused, as in MGCN
        b, rows = self.batch_rows(interaction)
        beh = behaviour[rows]
        side = self.modality.fuse({k: v[rows] for k, v in per_modality.items()}, beh)
        bpr, reg = self.bpr_and_reg(beh + side, b)

        lam = self.current_lambda()
        if self.training and torch.is_grad_enabled():
            self.schedule_state[1] += 1
            self._last_lambda = lam
        s_u, b_u, s_i, b_i = side[:b], beh[:b], side[b:2 * b], beh[b:2 * b]
        with torch.no_grad():   # alignment degrees steer the weights; they are not a training signal
            a_u = F.cosine_similarity(s_u, b_u, dim=-1)
            a_i = F.cosine_similarity(s_i, b_i, dim=-1)
            self._align_sum = self._align_sum + torch.stack([a_u.mean(), a_i.mean()])
            self._align_batches += 1
        if lam == 0:   # no alignment this step: skip the B x B similarity work
            return bpr, reg, bpr.new_zeros(())
        w_u = entity_weights(a_u, self.weight_mode, self.weight_temp)
        w_i = entity_weights(a_i, self.weight_mode, self.weight_temp)
        # same values and gradients as losses.info_nce, with one [B, B] buffer (the in-batch
        # loss dominates the step on CPU)
        l_u = info_nce(s_u, b_u, self.cl_temp, reduction="none")
        l_i = info_nce(s_i, b_i, self.cl_temp, reduction="none")
        align = lam * ((w_i * l_i).mean() + (w_u * l_u).mean())
        return bpr, reg, align
