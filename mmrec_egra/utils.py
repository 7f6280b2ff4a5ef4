"""Small shared helpers: the user-facing error type, seeding, atomic file writes, logging."""
from __future__ import annotations

import json
import logging
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


class MMRecError(Exception):
    """A user-facing error: bad file, bad key or bad value. The CLI prints only its message."""


def init_seed(seed: int, deterministic: bool = True) -> None:
    """Seed every RNG we use; `deterministic` also selects torch's deterministic kernels.

    Without it, the backward of embedding lookups with repeated ids (x[ids]) accumulates
    with atomics on multi-threaded CPUs and CUDA, so two runs with one seed can differ.
    """
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; read when its handle is created
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    # Deterministic mode also NaN-fills every new uninitialised tensor (a debugging aid for
    # ops that read memory they never wrote); it does not change results, and it cost up to
    # a quarter of a training step here (e.g. gathering 4096-d feature rows).
    if hasattr(torch.utils, "deterministic"):
        torch.utils.deterministic.fill_uninitialized_memory = False
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def atomic_write(path: str | os.PathLike, writer: Callable[[Any], None], mode: str = "w") -> None:
    """Write through `writer(fh)` into a temp file beside `path`, then rename over it.

    A crash mid-write never leaves a half-written file at `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            writer(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as pretty JSON."""
    atomic_write(path, lambda fh: json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a temp file and rename."""
    atomic_write(path, lambda fh: torch.save(obj, fh), mode="wb")


_LOGGER_NAME = "mmrec_egra"


def get_logger() -> logging.Logger:
    """The package logger (console handler installed once)."""
    logger = logging.getLogger(_LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = True  # lets pytest caplog and host applications see our records
    return logger


def add_log_file(path: str | os.PathLike) -> logging.Handler:
    """Also log to `path`; returns the handler so the caller can remove it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    get_logger().addHandler(handler)
    return handler


def resolve_device(name: str | None) -> torch.device:
    """'cuda' falls back to CPU with a warning when no GPU is present; None means auto."""
    if name is None or str(name).lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(str(name))
    if dev.type == "cuda" and not torch.cuda.is_available():
        get_logger().warning("device '%s' requested but CUDA is not available; using CPU", name)
        return torch.device("cpu")
    return dev
