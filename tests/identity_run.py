"""Exact metrics of short demo runs, the reference for refactors that must not change any number.

`python tests/identity_run.py OUT.json [MODEL ...]` writes, per model, the per-epoch training
losses and the valid/test metrics after two epochs (seed 999, default configuration) as
exact float reprs; tests/test_identity.py reruns them and compares bit for bit.
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from mmrec_egra.data import build_loaders, load_dataset
from mmrec_egra.data.demo import generate_demo
from mmrec_egra.evaluation import TopKEvaluator
from mmrec_egra.registry import get_model
from mmrec_egra.runner import make_config
from mmrec_egra.utils import init_seed
from model_checks import train_epochs   # tests/ is on sys.path (pytest, or run as a script)

EPOCHS = 2


def demo_teacher(data_root: str) -> np.ndarray:
    """EGRA's teacher vectors for these runs: the demo's image features (no stage 1)."""
    return np.load(Path(data_root) / "demo" / "image_feat.npy").astype(np.float32)


def run_model(name: str, data_root: str, work: str) -> dict:
    """Train `name` EPOCHS epochs on demo with seed 999 (one thread); exact losses and metrics."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(name, data_root, work)
    finally:
        torch.set_num_threads(threads)


def _run(name: str, data_root: str, work: str) -> dict:
    over = {"data_path": data_root, "checkpoint_dir": work + "/saved", "artifact_dir": work + "/art",
            "show_progress": False, "device": "cpu", "seed": 999}
    if name == "EGRA":
        over["_teacher_embeddings"] = demo_teacher(data_root)
    config = make_config(name, "demo", over)
    config = config.for_combination(config.grid()[0])
    config["_combo_key"] = "identity"
    ds = load_dataset(config)
    loaders = build_loaders(config, ds)
    init_seed(999)
    loaders[0].set_seed(999)
    model = get_model(name)(config, loaders[0])
    losses = [float(x) for x in train_epochs(config, model, loaders, EPOCHS)]
    ev = TopKEvaluator(config)
    valid = {k: float(v) for k, v in ev.evaluate(model, loaders[1]).items() if isinstance(v, float)}
    test = {k: float(v) for k, v in ev.evaluate(model, loaders[2]).items() if isinstance(v, float)}
    return {"losses": losses, "valid": valid, "test": test}


def machine() -> dict:
    """What decides the float kernels: torch, the CPU and its vector instruction sets. A VM may
    name every CPU "AMD EPYC"; Zen 3 and Zen 4 (AVX-512) then differ in the last bits."""
    return {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpuinfo": _cpu_model(), "isa": _cpu_isa()}


def _cpu_isa() -> str:
    """'family F model M: <vector flags>' from /proc/cpuinfo ('' where there is none)."""
    try:
        info = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return ""
    vector = sorted(f for f in info.get("flags", "").split()
                    if f.startswith(("sse", "ssse", "avx", "fma", "amx", "f16c")))
    return f"family {info.get('cpu family', '?')} model {info.get('model', '?')}: {' '.join(vector)}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def main() -> None:
    out = Path(sys.argv[1])
    from mmrec_egra.registry import list_models
    names = sys.argv[2:] or list_models()
    with tempfile.TemporaryDirectory() as tmp:
        generate_demo(Path(tmp) / "data" / "demo")
        res = {"machine": machine(), "epochs": EPOCHS, "models": {}}
        for name in names:
            import time
            t = time.time()
            res["models"][name] = run_model(name, tmp + "/data/", tmp + "/work")
            print(f"{name}: {time.time() - t:.1f} s {res['models'][name]['test'].get('recall@20')}", flush=True)
    out.write_text(json.dumps(res, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
