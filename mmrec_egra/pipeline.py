"""EGRA's stage 1: train a teacher, export its item representations, reuse them.

In our host (`python main.py -m EGRA -d D`) the runner calls `stage1(config, dataset,
loaders)` before building each EGRA combination: the teacher (`teacher_model`, default
MGCN; any registered model implementing `item_representations(kind)`) is trained with
the normal protocol (early stopping on valid), its best-valid weights are restored and
its item vectors are exported to the dataset's artifact store, keyed by the content
hash of the dataset files + the teacher's resolved configuration + the export kind. A
second run with the same inputs finds the export and says so instead of retraining.

Inside a foreign host (a real MMRec checkout) no validation loader reaches the model,
so `teacher_embeddings_for_model` trains the teacher in EGRA's constructor for
`teacher_epochs` epochs on the training matrix it was given (no early stopping),
unless an export with the same key is stored or `teacher_embeddings_file` is set.
Either way the teacher runs with its OWN defaults (configs/model/<Teacher>.yaml, first
value of each grid key), overridden only by `teacher_config` / `teacher_seed`, never
with EGRA's values for keys they share.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .artifacts import artifact_dir_for, content_key, open_store
from .cache import array_digest
from .config import check_unknown_keys, default_config_dir, known_keys
from .fit import make_config, train_combination
from .utils import MMRecError, get_logger, init_seed

EXPORT_KINDS = ("final", "behaviour", "modality")
_NOT_KEYED = {"show_progress", "checkpoint_dir", "save_model", "device", "eval_batch_size", "resume",
              "save_recommended_topk", "use_gpu", "config_dir", "data_path", "artifact_dir", "graph_cache",
              "export_item_embeddings", "grid", "eval_chunk_elems"}


def _keyed_params(config) -> Dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _NOT_KEYED and not str(k).startswith("_")}


def export_key(dataset_hash: str, teacher_config, kind: str) -> str:
    """Store key of a teacher export: dataset content + teacher configuration + kind."""
    return "teacher/" + content_key(dataset_hash, teacher_config["model"], _keyed_params(teacher_config), kind)


def stored_teachers(store, teacher: Optional[str] = None, seed: Optional[int] = None,
                    kind: Optional[str] = None) -> List[Dict[str, Any]]:
    """The readable teacher exports of an artifact store, as `store.list()` entries (key, meta:
    teacher, seed, kind, best_epoch, valid/test metrics), optionally only those of one teacher
    model, seed and export kind. Reads headers only, no arrays."""
    wanted = {"teacher": teacher, "seed": seed, "kind": kind}
    return [e for e in store.list()
            if e["key"].startswith("teacher/") and "error" not in e
            and all(v is None or e["meta"].get(k) == v for k, v in wanted.items())]


def load_embeddings_file(path: str, n_items: int) -> np.ndarray:
    """Validate and load a user-supplied [n_items, d] .npy of item vectors."""
    p = Path(str(path))
    if not p.is_file():
        raise MMRecError(f"teacher_embeddings_file {p} does not exist; give the path of an .npy [n_items, d] "
                         f"(e.g. one written by --export_item_embeddings)")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise MMRecError(f"cannot read teacher_embeddings_file {p}: {exc}") from None
    if arr.ndim != 2 or arr.shape[0] != n_items:
        raise MMRecError(f"teacher_embeddings_file {p} has shape {arr.shape}; expected [{n_items}, d] "
                         f"(one row per item id)")
    if not np.isfinite(arr).all():
        raise MMRecError(f"teacher_embeddings_file {p} holds NaN or inf values")
    return arr.astype(np.float32, copy=False)


def teacher_config_for(config):
    """The teacher's configuration: its own yaml (first value of each grid key), the data
    settings of the EGRA run, the EGRA run's seed (or `teacher_seed`), then `teacher_config`
    overrides (a mapping in EGRA.yaml or on the command line)."""
    keep = {k: config[k] for k in ("data_path", "checkpoint_dir", "show_progress", "device", "artifact_dir",
                                   "modalities", "vision_feature_file", "text_feature_file", "inter_file_name",
                                   "epochs", "stopping_step", "eval_batch_size", "train_batch_size",
                                   "valid_metric", "metrics", "topk", "graph_cache")
            if config[k] is not None}
    if config["config_dir"] is not None:
        keep["config_dir"] = config["config_dir"]
    extra = config["teacher_config"] or {}
    if not isinstance(extra, dict):
        raise MMRecError(f"teacher_config must be a mapping of teacher keys (e.g. {{cl_loss: 0.001}}), found {extra!r}")
    tcfg = make_config(str(config["teacher_model"] or "MGCN"), str(config["dataset"]), keep)
    check_unknown_keys(extra, known_keys(tcfg.config_dir), where="inside teacher_config")
    combo = {k: tcfg[k][0] for k in tcfg.grid_keys}
    combo["seed"] = int(config["teacher_seed"] if config["teacher_seed"] is not None else config["seed"])
    tcfg = tcfg.for_combination(combo)
    for k, v in extra.items():
        tcfg[k] = v
    return tcfg


def stage1(config, dataset, loaders) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Teacher item vectors for an EGRA run in our host (train or reuse); returns (emb, info)."""
    log = get_logger()
    if config["teacher_embeddings_file"]:
        emb = load_embeddings_file(config["teacher_embeddings_file"], dataset.n_items)
        log.info("stage 1: using teacher_embeddings_file %s %s", config["teacher_embeddings_file"], emb.shape)
        return emb, {"source": "file", "path": str(config["teacher_embeddings_file"])}
    kind = str(config["teacher_embedding"] or "final")
    if kind not in EXPORT_KINDS:
        raise MMRecError(f"teacher_embedding must be one of {', '.join(EXPORT_KINDS)}, found {kind!r}")
    tcfg = teacher_config_for(config)
    key = export_key(dataset.content_hash(), tcfg, kind)
    store = open_store(artifact_dir_for(config))
    hit = store.get(key)
    if hit is not None:
        arrays, meta = hit
        log.info("stage 1: reusing the stored %s export of teacher %s (key %s, best epoch %s, valid %s %.4f); "
                 "inputs are unchanged, so the teacher is not retrained", kind, tcfg["model"], key,
                 meta.get("best_epoch"), meta.get("valid_metric"), meta.get("valid_score", float("nan")))
        return arrays["items"], dict(meta, source="store", key=key)
    log.info("stage 1: training teacher %s (seed %s) with early stopping on valid; export '%s' -> %s",
             tcfg["model"], tcfg["seed"], kind, store.dir)
    emb, meta = train_and_export(tcfg, dataset, loaders, kind)
    store.put(key, {"items": emb}, meta)
    log.info("stage 1: stored teacher export %s %s", key, emb.shape)
    return emb, dict(meta, source="trained", key=key)


def train_and_export(tcfg, dataset, loaders, kind: str) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Train `tcfg['model']` to early stopping, restore best-valid weights, export item vectors."""
    from .artifacts import content_key as ck
    tcfg["_combo_key"] = ck(_keyed_params(tcfg))
    t0 = time.time()
    model, trainer, result = train_combination(tcfg, dataset, loaders, run_dir=None)
    emb = export_items(model, kind)
    vm = str(tcfg["valid_metric"]).lower()
    meta = {"teacher": tcfg["model"], "kind": kind, "seed": tcfg["seed"], "best_epoch": result["best_epoch"],
            "valid_metric": vm, "valid_score": result["best_valid"].get(vm),
            "test": result["best_test"], "seconds": round(time.time() - t0, 1), "protocol": "valid-early-stopping"}
    return emb, meta


def export_items(model, kind: str = "final") -> np.ndarray:
    """model.item_representations(kind) as float32 numpy, computed in eval mode."""
    was = model.training
    model.eval()
    with torch.no_grad():
        emb = model.item_representations(kind)
    model.train(was)
    emb = emb.detach().float().cpu().numpy()
    if emb.ndim != 2 or emb.shape[0] != model.n_items:
        raise MMRecError(f"{type(model).__name__}.item_representations('{kind}') returned shape {emb.shape}; "
                         f"expected [{model.n_items}, d]")
    return emb


def teacher_embeddings_for_model(config, dataloader, n_items: int) -> np.ndarray:
    """Teacher vectors inside EGRA's constructor, whichever host built it.

    Order: an array handed over by our runner (`_teacher_embeddings`), then
    `teacher_embeddings_file`, then a stored export for this training matrix, else
    train the teacher here for `teacher_epochs` epochs (foreign host: no valid split).
    """
    given = config["_teacher_embeddings"]
    if given is not None:
        return np.asarray(given, dtype=np.float32)
    if config["teacher_embeddings_file"]:
        return load_embeddings_file(config["teacher_embeddings_file"], n_items)
    return _foreign_host_teacher(config, dataloader, n_items)


def teacher_yaml_defaults(teacher_name: str, config_dir=None) -> Dict[str, Any]:
    """The teacher's own defaults: every key of configs/model/<Teacher>.yaml, each grid key
    (`hyper_parameters`) cut to its first value, as our host's default configuration.
    Empty when the teacher has no yaml (then the host's values and the model's code defaults apply)."""
    from .config import load_yaml
    from .registry import canonical_name, get_model
    name = canonical_name(teacher_name)
    own = getattr(get_model(name), "config_file", None)
    path = Path(own) if own else Path(config_dir or default_config_dir()) / "model" / f"{name}.yaml"
    if not path.is_file():
        return {}
    data = load_yaml(path)
    grid = data.pop("hyper_parameters", None) or []
    data.pop("ablation_arms", None)
    for k in grid:
        v = data.get(k)
        if isinstance(v, list):
            if not v:
                raise MMRecError(f"{path}: grid key '{k}' holds an empty list; give at least one value")
            data[k] = v[0]
    return data


def _foreign_host_teacher(config, dataloader, n_items: int) -> np.ndarray:
    from .registry import get_model
    from .trainer import Trainer
    log = get_logger()
    kind = str(config["teacher_embedding"] or "final")
    epochs = int(config["teacher_epochs"] or 50)
    teacher_name = str(config["teacher_model"] or "MGCN")
    R = dataloader.inter_matrix(form="csr")
    seed = config["teacher_seed"] if config["teacher_seed"] is not None else config["seed"]
    seed = int(seed if not isinstance(seed, list) else seed[0])
    extra = config["teacher_config"] or {}
    if not isinstance(extra, dict):
        raise MMRecError(f"teacher_config must be a mapping of teacher keys (e.g. {{cl_loss: 0.001}}), found {extra!r}")
    check_unknown_keys(extra, known_keys(default_config_dir()), where="inside teacher_config")
    # the teacher's own yaml defaults, then explicit teacher_config; the host's config only
    # for what neither sets (data, training protocol): EGRA's keys must not leak into it
    overrides = dict(teacher_yaml_defaults(teacher_name, config["config_dir"]))
    overrides.update(extra)
    overrides["seed"] = seed
    key = "teacher/" + content_key("foreign-host", array_digest(R), teacher_name, kind, epochs, seed,
                                   overrides, config["embedding_size"])
    store = None
    try:
        store = open_store(artifact_dir_for(config))
        hit = store.get(key)
        if hit is not None:
            log.info("EGRA: reusing stored teacher export %s (%s, %d epochs)", key, teacher_name, epochs)
            return hit[0]["items"]
    except MMRecError as exc:
        log.warning("EGRA: artifact store unavailable (%s); the teacher export will not be stored", exc)
    log.info("EGRA: no validation data in this host; training teacher %s for teacher_epochs=%d epochs on the "
             "training matrix", teacher_name, epochs)
    cls = get_model(teacher_name)

    class _TeacherConfig:
        """The host's config under the teacher's yaml defaults and teacher_config (missing -> None)."""
        def __getitem__(self, k):
            return overrides[k] if k in overrides else config[k]

        def __contains__(self, k):
            return k in overrides or k in config

        def get(self, k, default=None):
            v = self[k]
            return default if v is None else v

        def items(self):
            return []

    tcfg = _TeacherConfig()
    init_seed(seed)
    teacher = cls(tcfg, dataloader)
    teacher = teacher.to(teacher.device)
    trainer = Trainer(tcfg, teacher)
    for epoch in range(epochs):
        teacher.pre_epoch_processing()
        out, nb = trainer._train_epoch(dataloader, epoch)
        if out is None:
            raise MMRecError(f"teacher {teacher_name} loss became NaN at epoch {epoch}; lower its learning rate "
                             f"through teacher_config")
        trainer.scheduler.step()
        teacher.post_epoch_processing()
    emb = export_items(teacher, kind)
    if store is not None:
        store.put(key, {"items": emb}, {"teacher": teacher_name, "kind": kind, "epochs": epochs,
                                         "protocol": "fixed-epochs (foreign host)"})
    return emb
