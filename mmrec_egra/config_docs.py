"""docs/config.md, generated from the yaml files under configs/ so it cannot drift from them.

    python -m mmrec_egra.config_docs            # rewrite docs/config.md
    python -m mmrec_egra.config_docs --check    # exit 1 when docs/config.md differs from the yamls

Each yaml becomes a table of key | default | description: the default is the loaded value
(the same YAML rules as a run, so `1e-4` reads as a float), the description is the key's
own comment plus any indented comment lines under it, and a key named in
`hyper_parameters` is marked as a grid key. `# ---- name` lines start a subsection; other
full-line comments are kept as paragraphs between tables.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

import yaml

from .config import default_config_dir, load_yaml

KEY_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:(.*)$")
SUBKEY_RE = re.compile(r"^\s+([A-Za-z_][A-Za-z0-9_.-]*)\s*:(.*)$")
Block = Tuple[str, ...]   # ("section", title) | ("para", text) | ("row", key, value, description)

# Descriptions of MMRec's standard keys (and keys many model yamls repeat) for yaml lines that
# carry no comment of their own; a comment in the yaml always wins.
FALLBACK = {
    "use_gpu": "MMRec key, kept so MMRec configs load; `device` decides here",
    "inter_splitting_label": "column of the .inter file holding the split: 0 train, 1 valid, 2 test",
    "filter_out_cod_start_users": "drop valid/test rows of users without a training row (MMRec's key name)",
    "is_multimodal_model": "set by the host for models that read feature files",
    "USER_ID_FIELD": "column of the .inter file holding user ids (0-based integers)",
    "ITEM_ID_FIELD": "column of the .inter file holding item ids (0-based integers)",
    "field_separator": "column separator of the .inter file",
    "inter_file_name": "interaction file inside <data_path>/<dataset>/",
    "vision_feature_file": "image feature file (MMRec key; used when `modalities` is not set)",
    "text_feature_file": "text feature file (MMRec key; used when `modalities` is not set)",
    "modalities": "modality name -> feature file (.npy, one row per item id); a file named in a dataset yaml must exist",
    "use_neg_sampling": "training batches are (users, positive items, one sampled negative item each)",
    "use_full_sampling": "MMRec key, not used by the models here",
    "embedding_size": "dimension of the user and item ID embeddings",
    "epochs": "maximum training epochs per combination",
    "stopping_step": "early-stopping patience: evaluations in a row without a strict improvement of valid_metric",
    "train_batch_size": "training interactions per batch",
    "learning_rate": "step size of the optimizer (`learner`)",
    "weight_decay": "the optimizer's weight decay (the models' own regularisers are separate keys)",
    "eval_step": "evaluate valid and test every N epochs",
    "metrics": "ranking metrics, each computed at every cut-off in topk",
    "topk": "ranking cut-offs",
    "valid_metric": "metric@k used for early stopping and for choosing the best combination (on validation)",
    "eval_batch_size": "users per full-ranking evaluation batch",
    "learning_rate_scheduler": "[a, b]: learning rate times a^(epoch / b)",
    "reg_weight": "weight of the model's regulariser (its form per model: docs/mmrec.md)",
    "knn_k": "neighbours per item in the feature kNN item graphs",
    "freeze_features": "raw features as fixed inputs (true) or trainable tables as in MMRec (false)",
    "feat_embed_dim": "dimension the modality features are projected to",
    "cl_temp": "InfoNCE temperature",
    "sige_co_k": "neighbours per item in the collaborative (co-interaction) item graph",
    "ablation_arms": "arm name -> config overrides, run by `--ablation`",
}


def _split_comment(text: str) -> Tuple[str, str]:
    """'value  # comment' -> ('value', 'comment'); a '#' inside quotes is part of the value."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip(), text[i + 1:].strip()
    return text.rstrip(), ""


def _flow(value: Any) -> str:
    """A value the way one would write it in the yaml (flow style, one line)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return yaml.safe_dump(value, default_style=None, width=10 ** 6).strip().removesuffix("...").strip()
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def parse_yaml_doc(path: Path) -> Tuple[List[str], List[Block]]:
    """(header comment lines, blocks) of one yaml file, values taken from the real YAML load."""
    values = load_yaml(path)
    grid = {str(k) for k in (values.get("hyper_parameters") or [])}
    lines = path.read_text().splitlines()
    header: List[str] = []
    i = 0
    while i < len(lines) and (lines[i].startswith("#") or not lines[i].strip()) \
            and not re.match(r"^#\s*-{2,}", lines[i]):
        if lines[i].startswith("#"):
            header.append(lines[i].lstrip("#").strip())
        i += 1
    blocks: List[Block] = []
    current: Optional[List[str]] = None       # [key, description parts...] of the row being read
    subs: List[str] = []                      # nested mapping lines of the current key

    def flush() -> None:
        nonlocal current, subs
        if current is not None:
            key = current[0]
            desc = " ".join(p for p in current[1:] if p) or FALLBACK.get(key, "")
            if key in grid:
                desc = ("**grid key** (hyper_parameters); " + desc) if desc else "**grid key** (hyper_parameters)"
            value = values.get(key)
            if subs:
                shown = "<br>".join(subs)
            else:
                shown = f"`{_cell(_flow(value))}`"
            blocks.append(("row", key, shown, _cell(desc)))
        current, subs = None, []

    for line in lines[i:]:
        if not line.strip():
            continue
        m = KEY_RE.match(line)
        if m:
            flush()
            key, rest = m.group(1), m.group(2)
            _, comment = _split_comment(rest)
            if key == "hyper_parameters":
                blocks.append(("para", f"Grid (`hyper_parameters`): `{_cell(_flow(values.get(key)))}`; the run covers "
                                       f"the product of these keys' lists (with `seed` first)."))
                continue
            current = [key, comment]
            continue
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if line[0] in " \t" and current is not None:      # indented comment: continues the key above
                current.append(text)
                continue
            flush()
            sec = re.match(r"^-{2,}\s*(.*?)\s*-*$", text)
            if sec:
                blocks.append(("section", sec.group(1)))
            elif text:
                blocks.append(("para", _cell(text)))
            continue
        sm = SUBKEY_RE.match(line)
        if sm and current is not None:                        # an entry of a nested mapping
            name, rest = sm.group(1), sm.group(2)
            body, comment = _split_comment(rest)
            item = f"`{name}: {_cell(body.strip())}`" if body.strip() else f"`{name}`"
            subs.append(item + (f" ({_cell(comment)})" if comment else ""))
    flush()
    return header, blocks


def _slug(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def _render_file(title: str, path: Path, rel: str) -> List[str]:
    header, blocks = parse_yaml_doc(path)
    out = [f"### {title}", "", f"`{rel}`" + (": " + " ".join(header) if header else ""), ""]
    in_table = False
    for b in blocks:
        if b[0] == "row":
            if not in_table:
                out += ["| key | default | description |", "|---|---|---|"]
                in_table = True
            out.append(f"| `{b[1]}` | {b[2]} | {b[3]} |")
            continue
        if in_table:
            out.append("")
            in_table = False
        out += [f"**{b[1]}**" if b[0] == "section" else b[1], ""]
    if in_table:
        out.append("")
    return out


def generate(config_dir: Optional[Path] = None) -> str:
    """The full text of docs/config.md for the yamls under `config_dir`."""
    config_dir = Path(config_dir or default_config_dir())
    datasets = sorted((config_dir / "dataset").glob("*.yaml"), key=lambda p: p.stem.lower())
    models = sorted((config_dir / "model").glob("*.yaml"), key=lambda p: p.stem.lower())
    out = ["# Configuration keys", "",
           "<!-- Generated by `python -m mmrec_egra.config_docs` from configs/*.yaml: do not edit by hand; "
           "tests/test_docs.py fails when this file and the yamls differ. -->", "",
           "Every key below can be set in a yaml or on the command line (`--key value`, a list as "
           "`--key v1 v2`). Merge order, later wins: `configs/overall.yaml` -> the dataset yaml "
           "(`configs/dataset/<name>.yaml`, or `<data_path>/<name>/<name>.yaml` beside the data when "
           "configs/ has none) -> `configs/model/<Model>.yaml` -> the command line. A key missing "
           "everywhere reads as null. Grid keys (listed in `hyper_parameters`, concatenated across "
           "files) hold lists; a run covers their product, `--grid first` only the first value of "
           "each, and the best combination is chosen on validation.", "",
           "Defaults are shown as the yaml loads them (`1e-4` is a float, as in MMRec). Keys marked "
           "`(valid)` in a description were chosen on validation data.", "",
           "## Contents", "", "- [Global defaults](#global-defaults)"]
    out += ["- Datasets: " + ", ".join(f"[{p.stem}](#dataset-{_slug(p.stem)})" for p in datasets)]
    out += ["- Models: " + ", ".join(f"[{p.stem}](#model-{_slug(p.stem)})" for p in models), ""]
    out += ["## Global defaults", ""] + _render_file("overall.yaml", config_dir / "overall.yaml",
                                                     "configs/overall.yaml")[2:]
    out += ["## Datasets", ""]
    for p in datasets:
        out += _render_file(f"dataset {p.stem}", p, f"configs/dataset/{p.name}")
    out += ["## Models", ""]
    for p in models:
        out += _render_file(f"model {p.stem}", p, f"configs/model/{p.name}")
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def docs_path() -> Path:
    """docs/config.md of the source checkout."""
    return Path(__file__).resolve().parent.parent / "docs" / "config.md"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mmrec_egra.config_docs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when docs/config.md is stale")
    p.add_argument("--out", default=None, help="file to write (default: docs/config.md of the checkout)")
    args = p.parse_args(argv)
    text = generate()
    path = Path(args.out) if args.out else docs_path()
    if args.check:
        same = path.is_file() and path.read_text() == text
        print(f"{path}: {'up to date' if same else 'STALE: run python -m mmrec_egra.config_docs'}")
        return 0 if same else 1
    from .utils import atomic_write
    atomic_write(path, lambda fh: fh.write(text))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
