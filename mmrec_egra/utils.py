"""Small shared helpers: the user-facing error type, seeding, atomic file writes, logging."""
from __future__ import annotations

import errno
import io
import itertools
import json
import logging
import os
import pickle
import random
import re
import sys
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


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_TMP_RE = re.compile(r"\.tmp-(\d+)(?:-\d+)?$")
_tmp_counter = itertools.count()


def temp_name(path: Path) -> Path:
    """`<name>.tmp-<pid>-<n>` beside `path`: the pid lets a later run tell an orphan from a live write."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{next(_tmp_counter)}")


def no_space_error(path: str | os.PathLike, exc: OSError) -> MMRecError:
    """The one-line error for a full disk (or quota) while writing `path`."""
    return MMRecError(f"no space left while writing {path} ({exc.strerror or exc}): free disk space "
                      f"(e.g. delete old runs under checkpoint_dir) or point checkpoint_dir elsewhere, then rerun "
                      f"(with --resume to continue)")


def atomic_write(path: str | os.PathLike, writer: Callable[[Any], None], mode: str = "w",
                 durable: bool = True) -> None:
    """Write through `writer(fh)` into `<name>.tmp-<pid>-<n>`, fsync, then rename over `path`.

    A crash mid-write never leaves a half-written file at `path` (only a temp file that the
    next run removes, see clean_stale_temps); a full disk raises one MMRecError naming `path`.
    `durable=False` skips the fsync (still atomic against a killed process, which cannot lose
    the page cache): for files rewritten every epoch, where an fsync each time cost ~15 ms
    per file on a busy disk, and whose loss in a power cut is detected and recovered from.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise no_space_error(path.parent, exc) from None
        raise MMRecError(f"cannot create folder {path.parent}: {exc.strerror or exc}") from None
    tmp = temp_name(path)
    try:
        with open(tmp, mode) as fh:
            writer(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        if exc.errno in _NO_SPACE:
            raise no_space_error(path, exc) from None
        raise MMRecError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists (ours or another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(root: str | os.PathLike) -> int:
    """Remove `*.tmp-<pid>-*` files under `root` whose writer process is gone (killed mid-write).

    Temp files of live processes (a concurrent run) are kept. Returns how many were removed.
    """
    root = Path(root)
    if not root.is_dir():
        return 0
    n = 0
    for f in root.rglob("*.tmp-*"):
        m = _TMP_RE.search(f.name)
        if m and f.is_file() and not pid_alive(int(m.group(1))):
            _unlink_quietly(f)
            n += 1
    if n:
        get_logger().info("removed %d temporary file(s) left under %s by an interrupted run", n, root)
    return n


def write_json(path: str | os.PathLike, obj: Any, durable: bool = True) -> None:
    """Atomically write `obj` as pretty JSON."""
    atomic_write(path, lambda fh: json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default),
                 durable=durable)


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


def torch_save_atomic(obj: Any, path: str | os.PathLike, durable: bool = True) -> None:
    """torch.save through a temp file and rename.

    Serialised in memory first: torch's own writer turns an OSError (a full disk) into an
    opaque RuntimeError, whereas a plain write keeps the errno for a clear message.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, lambda fh: fh.write(buf.getbuffer()), mode="wb", durable=durable)


def torch_load_safe(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """torch.load with weights_only=True (tensors, numbers, strings, containers only).

    A file holding other Python objects could run code when unpickled, so it is refused;
    a truncated or foreign file raises one MMRecError naming it.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "Unsupported operand" in str(exc):
            raise MMRecError(f"refusing to load {what} {path}: it holds Python objects other than tensors and "
                             f"numbers (a crafted or foreign file could run code). Delete it and rerun without "
                             f"--resume.") from None
        raise MMRecError(f"{what} {path} is damaged ({str(exc).splitlines()[0]}). Delete it and rerun.") from None
    except (EOFError, RuntimeError, ValueError, OSError, KeyError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MMRecError(f"{what} {path} is truncated or not a torch checkpoint ({msg}). Delete it and rerun "
                         f"(an interrupted run restarts that combination).") from None


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


def report_interrupt(exc: KeyboardInterrupt, note: str = "") -> int:
    """One line on stderr for a stopped command (Ctrl-C, SIGTERM); the exit code 128 + signal.

    trainer.RunInterrupted carries what was saved and the signal; a bare KeyboardInterrupt
    (a second Ctrl-C) means the previous last.pt is what --resume continues from.
    """
    print(f"interrupted: {exc if str(exc) else 'rerun the same command with --resume to continue'}{note}",
          file=sys.stderr)
    return 128 + int(getattr(exc, "signum", 2))
