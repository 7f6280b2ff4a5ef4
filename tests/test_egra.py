"""EGRA stage 2: enhanced graph, entity weights, schedule, MGCN reduction, stage-1 reuse."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrec_egra.graphs import knn_graph, sym_normalize
from mmrec_egra.losses import bpr_loss, info_nce, l2_reg
from mmrec_egra.models.egra import SCHEDULES, entity_weights, schedule_lambda, teacher_knn_graph
from mmrec_egra.utils import MMRecError
from model_checks import build, check_model, train_epochs

ROOT = Path(__file__).resolve().parents[1]
# small batches keep the in-batch InfoNCE (quadratic in the batch) cheap on 2 CPU cores
FAST = dict(learning_rate=0.01, train_batch_size=1024, egra_lambda_max=0.01)


def teacher_vectors(demo_root: str) -> np.ndarray:
    """A meaningful stand-in for a trained teacher: the demo's image features (noisy item factors)."""
    return np.load(Path(demo_root) / "demo" / "image_feat.npy").astype(np.float32)


def egra(make_env, demo_root, **overrides):
    opts = dict(FAST, _teacher_embeddings=teacher_vectors(demo_root))
    opts.update(overrides)
    return build(make_env, "EGRA", **opts)


def dense_sym_normalize(a: np.ndarray) -> np.ndarray:
    d = a.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0.0)
    return a * inv[:, None] * inv[None, :]


# ---- model behaviour -------------------------------------------------------------------
def test_egra_trains_and_ranks(make_env, demo_root):
    opts = dict(FAST, _teacher_embeddings=teacher_vectors(demo_root), egra_schedule="constant")
    config, ds, loaders, model, losses, res = check_model(make_env, "EGRA", epochs=3, **opts)
    assert model.is_multimodal and model.graph_source == "teacher"
    assert model.post_epoch_processing().startswith("lambda 0.01 align(u)")


@pytest.mark.parametrize("merge", ["joint", "separate"])
def test_enhanced_adjacency_structure(make_env, demo_root, merge):
    beta, k = 0.5, 6
    config, ds, loaders, model = egra(make_env, demo_root, egra_beta=beta, egra_knn_k=k, egra_graph_merge=merge)
    T = teacher_vectors(demo_root)
    n_u, n_i = ds.n_users, ds.n_items
    # S before symmetrisation: k entries per row, no self loop, weights max(cos, 0)
    S0 = teacher_knn_graph(T, k, weighted=True)
    assert (np.diff(S0.indptr) == k).all() and S0.diagonal().sum() == 0
    Tn = T / np.linalg.norm(T, axis=1, keepdims=True)
    r, c = S0.nonzero()
    assert np.allclose(S0[r, c].A1, np.maximum((Tn[r] * Tn[c]).sum(1), 0), atol=1e-5)
    S = model.item_item.toarray()
    assert np.allclose(S, S.T) and np.allclose(S, np.maximum(S0.toarray(), S0.toarray().T))
    assert np.diag(S).sum() == 0
    # A+ = [[0, R], [R^T, beta S]], normalised as configured
    R = ds.inter_matrix("csr").toarray()
    zu = np.zeros((n_u, n_u))
    ui = np.block([[zu, R], [R.T, np.zeros((n_i, n_i))]])
    ii = np.block([[zu, np.zeros((n_u, n_i))], [np.zeros((n_i, n_u)), S]])
    # separate: beta scales the normalised S (normalising beta*S would cancel beta)
    expected = dense_sym_normalize(ui + beta * ii) if merge == "joint" \
        else dense_sym_normalize(ui) + beta * dense_sym_normalize(ii)
    A = model.norm_adj.to_dense().numpy()
    assert np.allclose(A, expected, atol=1e-6)
    assert np.abs(A[:n_u, :n_u]).sum() == 0 and np.allclose(A, A.T, atol=1e-7)
    # the product used in training is the one with A+
    x = torch.randn(n_u + n_i, 4)
    assert torch.allclose(model.norm_adj @ x, torch.tensor(expected, dtype=torch.float32) @ x, atol=1e-5)


def test_unweighted_and_other_graph_sources(make_env, demo_root):
    _, ds, _, m = egra(make_env, demo_root, egra_knn_weighted=False, egra_knn_k=4)
    assert set(np.unique(m.item_item.data)) == {1.0}
    # raw: symmetrised mean of the per-modality raw kNN graphs (same k, no self)
    _, _, _, raw = egra(make_env, demo_root, egra_graph_source="raw", egra_knn_k=4, _teacher_embeddings=None)
    assert raw.teacher is None                      # no teacher needed, none trained
    parts = [knn_graph(f, 4, weighted=True, include_self=False).toarray() for f in raw.mm_feats.values()]
    mean = np.maximum(sum(parts) / len(parts), 0)
    assert np.allclose(raw.item_item.toarray(), np.maximum(mean, mean.T), atol=1e-6)
    # none: MGCN's plain A_ui
    _, _, _, plain = egra(make_env, demo_root, egra_graph_source="none", _teacher_embeddings=None)
    _, _, _, mgcn = build(make_env, "MGCN", cl_loss=0.01, train_batch_size=1024)
    assert plain.item_item is None
    assert np.allclose(plain.norm_adj.to_dense().numpy(), mgcn.norm_adj.to_dense().numpy())


def test_modality_graph_options(make_env, demo_root):
    T = teacher_vectors(demo_root)
    _, ds, _, t = egra(make_env, demo_root, egra_modality_graph="teacher", egra_graph_source="none")
    G = teacher_knn_graph(T, 10, weighted=True, include_self=True)
    expected = sym_normalize(G).toarray()
    for name in t.modality.names:
        assert np.allclose(t.modality.item_graphs[name].to_dense().numpy(), expected, atol=1e-6)
    _, _, _, both = egra(make_env, demo_root, egra_modality_graph="both", egra_graph_source="none")
    for name, feat in both.mm_feats.items():
        raw = knn_graph(feat, 10, weighted=True, include_self=True)
        exp = sym_normalize(0.5 * (raw + G)).toarray()
        assert np.allclose(both.modality.item_graphs[name].to_dense().numpy(), exp, atol=1e-6)


# ---- entity weights and schedule ---------------------------------------------------------
def test_entity_weights():
    a = torch.tensor([-0.5, 0.0, 0.2, 0.9, 0.9])
    for mode in ("focus_misaligned", "trust_aligned"):
        for temp in (0.1, 1.0, 5.0):
            w = entity_weights(a, mode, temp)
            assert w.shape == a.shape and (w > 0).all()
            assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-6)
    focus, trust = entity_weights(a, "focus_misaligned", 1.0), entity_weights(a, "trust_aligned", 1.0)
    assert (focus[:-1] > focus[1:]).sum() == 3 and focus[3] == focus[4]      # lower a -> larger weight
    assert (trust[:-1] < trust[1:]).sum() == 3
    assert torch.allclose(focus * trust, focus[0] * trust[0] * torch.ones(5), rtol=1e-5)  # mirror images
    assert torch.allclose(focus, 5 * torch.softmax(-a, 0))
    # a lower temperature spreads the weights more
    assert entity_weights(a, "focus_misaligned", 0.1).std() > focus.std() > entity_weights(a, "focus_misaligned", 5.0).std()
    assert torch.equal(entity_weights(a, "uniform", 1.0), torch.ones(5))
    a_grad = a.clone().requires_grad_()
    assert not entity_weights(a_grad, "focus_misaligned").requires_grad
    with pytest.raises(MMRecError):
        entity_weights(a, "sometimes")


@pytest.mark.parametrize("kind", SCHEDULES)
def test_schedule_lambda(kind):
    lo, hi, ramp = 0.002, 0.1, 40
    vals = [schedule_lambda(t, kind, lo, hi, ramp) for t in np.linspace(0, 80, 161)]
    assert all(b >= a - 1e-12 for a, b in zip(vals, vals[1:]))             # monotone non-decreasing
    assert schedule_lambda(ramp, kind, lo, hi, ramp) == hi
    assert schedule_lambda(ramp + 17, kind, lo, hi, ramp) == hi
    if kind == "constant":
        assert set(vals) == {hi}
        return
    assert schedule_lambda(0, kind, lo, hi, ramp) == pytest.approx(lo, abs=1e-15)
    assert lo < schedule_lambda(ramp / 2, kind, lo, hi, ramp) < hi
    mid = (schedule_lambda(ramp / 2, kind, 0.0, 1.0, ramp))
    expected_mid = {"linear": 0.5, "cosine": 0.5, "sigmoid": 0.5, "exp": math.expm1(2.5) / math.expm1(5)}[kind]
    assert mid == pytest.approx(expected_mid, abs=1e-12)


def test_schedule_edge_cases():
    assert schedule_lambda(0, "linear", 0.0, 0.1, 0) == 0.1                 # no ramp: lam_max at once
    assert schedule_lambda(-3, "linear", 0.0, 0.1, 10) == 0.0               # clipped before 0
    assert schedule_lambda(5, "linear", 0.0, 0.1, 10) == pytest.approx(0.05)
    with pytest.raises(MMRecError):
        schedule_lambda(1, "quadratic", 0.0, 0.1, 10)


def test_schedule_in_the_model(make_env, demo_root):
    config, ds, loaders, model = egra(make_env, demo_root, egra_ramp=4, egra_lambda_max=0.1, egra_lambda_min=0.0)
    assert model.current_lambda() == 0.0
    for epoch in range(6):
        model.pre_epoch_processing()
        assert model.current_lambda() == pytest.approx(0.1 * min(epoch / 4, 1))
    assert "schedule_state" in model.state_dict()                         # continues on --resume
    # step unit: the ramp (in epochs) is converted with the loader's batches per epoch
    config, ds, loaders, model = egra(make_env, demo_root, egra_ramp=2, egra_lambda_max=0.1, egra_lambda_min=0.0,
                                      egra_schedule_unit="step")
    assert model.batches_per_epoch == len(loaders[0])
    train_epochs(config, model, loaders, 1)
    steps = len(loaders[0])
    assert int(model.schedule_state[1]) == steps
    assert model.current_lambda() == pytest.approx(0.1 * steps / (2 * steps))
    assert model.post_epoch_processing().startswith(f"lambda {0.1 * (steps - 1) / (2 * steps):.3g} align(u)")


# ---- losses -----------------------------------------------------------------------------
def test_alignment_loss_matches_the_formula(make_env, demo_root):
    config, ds, loaders, model = egra(make_env, demo_root, egra_schedule="constant", egra_lambda_max=0.1,
                                      egra_weight_temp=0.5)
    batch = next(iter(loaders[0]))
    got = model.calculate_loss(batch)
    assert len(got) == 3 and all(torch.isfinite(p) for p in got)
    sum(got).backward()
    assert model.modality.proj[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        users, pos, neg = batch
        beh, side = model.forward()
        fin = beh + side
        nu = model.n_users
        u, p, n = fin[users], fin[pos + nu], fin[neg + nu]
        align = 0.0
        for rows in (users, pos + nu):
            s, b = side[rows], beh[rows]
            a = torch.nn.functional.cosine_similarity(s, b, dim=-1)
            w = len(rows) * torch.softmax(-a / 0.5, 0)
            align = align + (w * info_nce(s, b, 0.2, reduction="none")).mean()
        ref = (bpr_loss((u * p).sum(-1), (u * n).sum(-1)), 1e-4 * l2_reg(u, p, n), 0.1 * align)
        got = model.calculate_loss(batch)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    # lambda 0 (first epoch of a linear ramp from 0): no alignment term
    _, _, _, m0 = egra(make_env, demo_root, egra_lambda_min=0.0)
    assert m0.calculate_loss(batch)[2].item() == 0.0


def test_reduces_exactly_to_mgcn(make_env, demo_root):
    c = 0.01
    mcfg, ds, loaders, mgcn = build(make_env, "MGCN", cl_loss=c, train_batch_size=1024)
    _, _, _, model = build(make_env, "EGRA", train_batch_size=1024, egra_graph_source="none",
                           egra_modality_graph="raw", egra_weight_mode="uniform", egra_schedule="constant",
                           egra_lambda_max=c)
    # same seed, same construction order: identical initial weights
    ms, es = mgcn.state_dict(), model.state_dict()
    assert set(es) - set(ms) == {"schedule_state"}
    assert all(torch.equal(ms[k], es[k]) for k in ms)
    # after training MGCN a little, EGRA loaded with its weights gives the same losses
    train_epochs(mcfg, mgcn, loaders, 1)
    missing, unexpected = model.load_state_dict(mgcn.state_dict(), strict=False)
    assert missing == ["schedule_state"] and unexpected == []
    batch = next(iter(loaders[0]))
    for got, ref in zip(model.calculate_loss(batch), mgcn.calculate_loss(batch)):
        assert torch.allclose(got, ref, rtol=1e-6, atol=1e-8), (got, ref)
    mgcn.eval(), model.eval()
    with torch.no_grad():
        users = torch.arange(9)
        assert torch.allclose(model.full_sort_predict((users, None)), mgcn.full_sort_predict((users, None)), atol=1e-6)


def test_item_representations_and_eval_cache(make_env, demo_root):
    config, ds, loaders, model = egra(make_env, demo_root)
    reps = {k: model.item_representations(k) for k in ("final", "behaviour", "modality")}
    assert all(v.shape == (ds.n_items, 64) for v in reps.values())
    assert torch.allclose(reps["final"], reps["behaviour"] + reps["modality"], atol=1e-6)
    model.eval()
    with torch.no_grad():
        s1 = model.full_sort_predict((torch.arange(4), None))
        assert "final" in model._eval_cache
        s2 = model.full_sort_predict((torch.arange(4), None))
    assert torch.equal(s1, s2)


def test_invalid_options(make_env, demo_root):
    for key, val in (("egra_graph_source", "features"), ("egra_graph_merge", "mixed"),
                     ("egra_modality_graph", "x"), ("egra_weight_mode", "x"), ("egra_schedule", "x"),
                     ("egra_schedule_unit", "batch"), ("egra_weight_temp", 0.0), ("egra_knn_k", 0)):
        with pytest.raises(MMRecError):
            egra(make_env, demo_root, **{key: val})
    with pytest.raises(MMRecError, match="expected"):
        egra(make_env, demo_root, _teacher_embeddings=np.zeros((7, 4), dtype=np.float32))


def test_yaml_defaults_and_ablation_arms(demo_root):
    from mmrec_egra.compare import ablation_entries
    from mmrec_egra.runner import make_config
    cfg = make_config("EGRA", "demo", {"data_path": demo_root})
    assert cfg["teacher_model"] == "MGCN" and cfg["teacher_embedding"] == "final" and cfg["teacher_config"] == {}
    assert cfg.grid_keys == ["seed", "egra_lambda_max"] and sorted(cfg["egra_lambda_max"]) == [0.001, 0.01, 0.1]
    # defaults picked on TikTok validation (see the yaml): ramp 0.001 -> 0.01, tau_w 0.2
    assert cfg["egra_lambda_max"][0] == 0.01 and cfg["egra_lambda_min"] == 0.001 and cfg["egra_weight_temp"] == 0.2
    entries = {label: (model, over) for label, model, over in ablation_entries("EGRA", {"data_path": demo_root})}
    assert entries["MGCN"] == ("MGCN", {}) and entries["full"] == ("EGRA", {})
    assert entries["plain_graph"][1] == {"egra_graph_source": "none"}
    assert entries["raw_links"][1] == {"egra_graph_source": "raw"}
    assert entries["uniform_weights"][1] == {"egra_weight_mode": "uniform"}
    assert entries["constant_lambda"][1] == {"egra_schedule": "constant"}
    assert entries["trust_aligned"][1] == {"egra_weight_mode": "trust_aligned"}


# ---- stage 1 in the host and outside it -----------------------------------------------------
def _run_overrides(demo_root, tmp_path, **extra):
    opts = {"data_path": demo_root, "checkpoint_dir": str(tmp_path / "saved"), "artifact_dir": str(tmp_path / "art"),
            "show_progress": False, "device": "cpu", "epochs": 1, "train_batch_size": 1024,
            "egra_lambda_max": [0.01], "save_model": False}
    opts.update(extra)
    return opts


def test_stage1_is_trained_once_then_reused_and_rebuilt_when_corrupt(demo_root, tmp_path, monkeypatch, caplog):
    import mmrec_egra.pipeline as pipeline
    from mmrec_egra.artifacts import open_store
    from mmrec_egra.runner import run
    trained = []
    real = pipeline.train_and_export
    monkeypatch.setattr(pipeline, "train_and_export", lambda *a, **kw: trained.append(1) or real(*a, **kw))
    opts = _run_overrides(demo_root, tmp_path)
    first = run("EGRA", "demo", dict(opts), save=False)
    assert len(trained) == 1 and first["best"]["result"]["best_valid"]["recall@20"] > 0
    caplog.clear()
    second = run("EGRA", "demo", dict(opts), save=False)
    assert len(trained) == 1 and "reusing the stored final export of teacher MGCN" in caplog.text
    assert "stage 2: training EGRA" in caplog.text
    # same teacher vectors -> same EGRA run
    assert second["best"]["result"]["best_valid"] == first["best"]["result"]["best_valid"]
    # a corrupted export is discarded with a warning and the teacher is trained again
    store = open_store(tmp_path / "art")
    (entry,) = pipeline.stored_teachers(store)
    assert entry["meta"]["teacher"] == "MGCN" and entry["meta"]["kind"] == "final"
    key = entry["key"]
    with store.env.begin(write=True) as txn:
        v = bytearray(txn.get(key.encode()))
        v[-5] ^= 0xFF
        txn.put(key.encode(), bytes(v))
    caplog.clear()
    run("EGRA", "demo", dict(opts), save=False)
    assert "corrupt" in caplog.text and len(trained) == 2
    assert store.get(key) is not None


def test_stored_teachers_filters_by_teacher_seed_and_kind(tmp_path):
    from mmrec_egra.artifacts import open_store
    from mmrec_egra.pipeline import stored_teachers
    store = open_store(tmp_path / "art")
    x = {"items": np.zeros((3, 2), dtype=np.float32)}
    store.put("teacher/a", x, {"teacher": "MGCN", "seed": 999, "kind": "final"})
    store.put("teacher/b", x, {"teacher": "MGCN", "seed": 1, "kind": "behaviour"})
    store.put("teacher/c", x, {"teacher": "SIGE", "seed": 999, "kind": "final"})
    store.put("graph/d", x, {"teacher": "MGCN", "seed": 999, "kind": "final"})
    keys = lambda **kw: sorted(e["key"] for e in stored_teachers(store, **kw))
    assert keys() == ["teacher/a", "teacher/b", "teacher/c"]
    assert keys(teacher="MGCN") == ["teacher/a", "teacher/b"]
    assert keys(seed=999, kind="final") == ["teacher/a", "teacher/c"]
    assert keys(teacher="SIGE", seed=1) == []


def test_teacher_embeddings_file_with_wrong_shape(demo_root, tmp_path, make_env):
    from mmrec_egra.runner import run
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((5, 8), dtype=np.float32))
    opts = _run_overrides(demo_root, tmp_path, teacher_embeddings_file=str(bad))
    with pytest.raises(MMRecError, match=r"has shape \(5, 8\); expected \[1500, d\]"):
        run("EGRA", "demo", opts, save=False)
    with pytest.raises(MMRecError, match=r"has shape \(5, 8\); expected \[1500, d\]"):   # foreign-host path
        build(make_env, "EGRA", teacher_embeddings_file=str(bad), **FAST)
    good = tmp_path / "good.npy"
    np.save(good, teacher_vectors(demo_root))
    _, _, _, model = build(make_env, "EGRA", teacher_embeddings_file=str(good), **FAST)
    assert torch.equal(model.teacher, torch.from_numpy(teacher_vectors(demo_root)))


def test_foreign_host_trains_the_teacher_in_the_constructor(make_env, caplog, monkeypatch):
    from mmrec_egra.trainer import Trainer
    epochs = []
    real = Trainer._train_epoch

    def counting(self, loader, epoch):
        epochs.append(type(self.model).__name__)
        return real(self, loader, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", counting)
    # no prepare() call and no _teacher_embeddings: what a real MMRec checkout does
    config, ds, loaders, model = build(make_env, "EGRA", teacher_epochs=2, **FAST)
    assert epochs == ["MGCN", "MGCN"]
    assert "training teacher MGCN for teacher_epochs=2" in caplog.text
    assert model.teacher.shape == (ds.n_items, 64) and model.item_item.nnz > 0
    build(make_env, "EGRA", teacher_epochs=2, **FAST)                      # stored: not trained again
    assert epochs == ["MGCN", "MGCN"] and "reusing stored teacher export" in caplog.text


def test_teacher_yaml_defaults_cut_grids_to_first_value(tmp_path):
    from mmrec_egra.pipeline import teacher_yaml_defaults
    d = teacher_yaml_defaults("mgcn")
    assert d["cl_loss"] == 0.001 and d["knn_k"] == 10 and d["learning_rate_scheduler"] == [0.96, 50]
    assert "hyper_parameters" not in d
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MGCN.yaml").write_text("cl_loss: []\nhyper_parameters: [cl_loss]\n")
    with pytest.raises(MMRecError, match=r"MGCN.yaml: grid key 'cl_loss' holds an empty list"):
        teacher_yaml_defaults("MGCN", tmp_path)


def test_foreign_host_teacher_gets_its_own_yaml_defaults(make_env, monkeypatch):
    """Inside MMRec the teacher must not inherit EGRA's values: MGCN gets its yaml's first cl_loss
    (0.001) whatever the host config says, and teacher_config alone overrides it."""
    from mmrec_egra.trainer import Trainer
    seen = []
    real = Trainer._train_epoch

    def spy(self, loader, epoch):
        seen.append((type(self.model).__name__, self.model.cl_weight))
        return real(self, loader, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", spy)
    build(make_env, "EGRA", teacher_epochs=1, cl_loss=0.05, **FAST)            # host value must not leak
    assert seen == [("MGCN", 0.001)]
    build(make_env, "EGRA", teacher_epochs=1, teacher_config={"cl_loss": 0.1}, **FAST)
    assert seen[1:] == [("MGCN", 0.1)]
    with pytest.raises(MMRecError, match="unknown config key 'cl_los' .inside teacher_config."):
        build(make_env, "EGRA", teacher_epochs=1, teacher_config={"cl_los": 0.1}, **FAST)


def test_main_end_to_end(demo_root, tmp_path):
    # speed is measured by benchmarks/, not asserted here: CI cores are shared and noisy
    cmd = [sys.executable, "main.py", "-m", "EGRA", "-d", "demo", "--data_path", demo_root,
           "--checkpoint_dir", str(tmp_path / "saved"), "--artifact_dir", str(tmp_path / "art"),
           "--epochs", "2", "--stopping_step", "1", "--train_batch_size", "1024", "--egra_lambda_max", "0.01",
           "--show_progress", "false"]
    # one thread: on shared CI cores, oversubscribed OpenMP threads slow torch down tenfold
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "stage 1: training teacher MGCN" in out.stdout and "stage 2: training EGRA" in out.stdout
    assert "best" in out.stdout
