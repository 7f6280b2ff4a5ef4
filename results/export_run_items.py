"""Export the item vectors of a finished run (its best-valid weights, best.pt) as an .npy that
EGRA reads with `--teacher_embeddings_file`: a finished standalone run of the teacher serves as
EGRA's teacher without retraining it (stage 1 would train the same model with the same
configuration and seed; EGRA's log then says "using teacher_embeddings_file").

    python results/export_run_items.py saved/qual/beauty/SIGE-beauty/seed=999_... out.npy [final]
"""
import json
import sys
from pathlib import Path

import numpy as np

from mmrec_egra.data.dataset import load_dataset
from mmrec_egra.data.loaders import build_loaders
from mmrec_egra.fit import make_config
from mmrec_egra.pipeline import export_items
from mmrec_egra.registry import get_model
from mmrec_egra.utils import init_seed, torch_load_safe


def main(run_dir: str, out: str, kind: str = "final") -> None:
    saved = json.loads((Path(run_dir) / "config.json").read_text())
    overrides = {k: v for k, v in saved.items() if not k.startswith("_") and k not in ("model", "dataset")}
    config = make_config(saved["model"], saved["dataset"], overrides)
    for k, v in overrides.items():       # grid keys come back as one-point lists: the run's values
        config[k] = v
    dataset = load_dataset(config)
    train_loader = build_loaders(config, dataset)[0]
    init_seed(int(config["seed"]), True)
    model = get_model(config["model"])(config, train_loader)
    state = torch_load_safe(Path(run_dir) / "best.pt", "best-valid checkpoint")
    model.load_state_dict(state["model"])
    emb = export_items(model, kind)
    np.save(out, emb)
    print(f"{out}: {emb.shape} from {run_dir} (best epoch {state['epoch']})")


if __name__ == "__main__":
    main(*sys.argv[1:])
