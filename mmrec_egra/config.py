"""Configuration: overall.yaml -> dataset/D.yaml -> model/M.yaml -> command line.

MMRec rules: a missing key reads as None; `hyper_parameters` is concatenated across
files rather than overridden; `seed` is always the first grid key; every grid key holds
a list and the grid is their Cartesian product (last key fastest); numbers such as
`1e-4` load as floats.
"""
from __future__ import annotations

import copy
import itertools
import os
import re
from pathlib import Path
from collections import OrderedDict
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import yaml

from .utils import MMRecError

PACKAGE_DIR = Path(__file__).resolve().parent


def default_config_dir() -> Path:
    """configs/ of a source checkout (editable install), else the copy bundled in the package."""
    for cand in (PACKAGE_DIR.parent / "configs", PACKAGE_DIR / "configs"):
        if (cand / "overall.yaml").is_file():
            return cand
    raise MMRecError(f"cannot find configs/overall.yaml next to {PACKAGE_DIR}; reinstall the package "
                     f"(pip install -e .) or pass --config_dir")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-4 / 1E+5 (no dot) as floats, as MMRec does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(path: str | os.PathLike) -> Dict[str, Any]:
    """Read a YAML mapping; errors name the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MMRecError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MMRecError(f"invalid YAML in {path}{where}: {problem}. Fix the syntax (key: value, lists as [a, b]).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MMRecError(f"config file {path} must hold a mapping of key: value lines, found a {type(data).__name__}")
    return data


def parse_value(text: str) -> Any:
    """Type a command-line token with the same YAML rules as the files."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def parse_cli_overrides(tokens: Sequence[str]) -> Dict[str, Any]:
    """`--key value`, `--key v1 v2 v3` (a list), `--flag` (True). Values typed as YAML."""
    out: Dict[str, Any] = {}
    key: Optional[str] = None
    vals: List[Any] = []

    def flush() -> None:
        if key is not None:
            out[key] = True if not vals else (vals[0] if len(vals) == 1 else list(vals))

    for tok in tokens:
        if tok.startswith("--") and len(tok) > 2 and not _is_number(tok):
            flush()
            key, vals = tok[2:], []
            if "=" in key:
                key, v = key.split("=", 1)
                vals.append(parse_value(v))
        else:
            if key is None:
                raise MMRecError(f"unexpected command-line value '{tok}': options look like --key value")
            vals.append(parse_value(tok))
    flush()
    return out


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


class Config:
    """Dict-like run configuration. `config['missing']` is None; `key in config` works."""

    def __init__(self, model: str, dataset: str, overrides: Optional[Dict[str, Any]] = None,
                 config_dir: Optional[str | os.PathLike] = None, model_config_file: Optional[str] = None):
        overrides = dict(overrides or {})
        config_dir = Path(overrides.pop("config_dir", None) or config_dir or default_config_dir())
        self.config_dir = config_dir
        overall = config_dir / "overall.yaml"
        if not overall.is_file():
            raise MMRecError(f"missing {overall}: --config_dir must point at a folder holding overall.yaml")
        final: Dict[str, Any] = {}
        hyper: List[str] = []
        self.sources: List[str] = []

        def merge(d: Dict[str, Any], src: str) -> None:
            for k, v in d.items():
                if k == "hyper_parameters":
                    if v is None:
                        continue
                    if not isinstance(v, list):
                        raise MMRecError(f"{src}: hyper_parameters must be a list of key names, found {v!r}")
                    hyper.extend(str(x) for x in v)
                else:
                    final[k] = v
            self.sources.append(src)

        merge(load_yaml(overall), str(overall))
        ds_file = config_dir / "dataset" / f"{dataset}.yaml"
        if ds_file.is_file():
            merge(load_yaml(ds_file), str(ds_file))
        model_file = Path(model_config_file) if model_config_file else config_dir / "model" / f"{model}.yaml"
        if model_file.is_file():
            merge(load_yaml(model_file), str(model_file))
        cli_hyper = overrides.pop("hyper_parameters", None)
        if cli_hyper is not None:
            merge({"hyper_parameters": cli_hyper if isinstance(cli_hyper, list) else [cli_hyper]}, "command line")
        cli_lists = {k for k, v in overrides.items() if isinstance(v, list)}
        merge(overrides, "command line")
        final["model"] = model
        final["dataset"] = dataset
        self.dataset_config_found = ds_file.is_file()
        self.model_config_found = model_file.is_file()

        # data_path: MMRec concatenates data_path + dataset, so keep a trailing separator.
        dp = str(final.get("data_path") or "data/")
        if not os.path.isabs(dp):
            base = config_dir.parent if config_dir.parent.name != "mmrec_egra" else Path.cwd()
            dp = str(base / dp) if "data_path" not in overrides else os.path.abspath(dp)
        final["data_path"] = os.path.join(os.path.abspath(dp), "")

        # grid keys: seed first, then in order of first appearance, no duplicates
        keys = ["seed"] + [k for k in dict.fromkeys(hyper) if k != "seed"]
        for k in keys:
            v = final.get(k)
            if k in overrides and not isinstance(v, list):
                final[k] = [v]  # a single value on the command line is a one-point grid
            elif not isinstance(v, list):
                origin = self._origin_of(k, overall, ds_file, model_file)
                raise MMRecError(f"{origin}: grid key '{k}' must be a list (e.g. {k}: [{v!r}]), found the scalar {v!r}. "
                                 f"Write it as a list or remove '{k}' from hyper_parameters.")
        self.grid_keys = keys
        self.cli_lists = cli_lists
        self.final_config_dict = final
        self._check_types()

    @staticmethod
    def _origin_of(key: str, *files: Path) -> str:
        for f in reversed(files):
            if f.is_file() and key in load_yaml(f):
                return str(f)
        return "configuration"

    def _check_types(self) -> None:
        d = self.final_config_dict
        for key in ("topk", "metrics"):
            if d.get(key) is not None and not isinstance(d[key], list):
                d[key] = [d[key]]
        vm = d.get("valid_metric")
        if vm is not None:
            name, _, k = str(vm).partition("@")
            known = [m.lower() for m in d.get("metrics") or []]
            if name.lower() not in known or not k.isdigit() or int(k) not in (d.get("topk") or []):
                raise MMRecError(f"valid_metric '{vm}' is not computed: it must be one of the metrics {d.get('metrics')} "
                                 f"'@' one of topk {d.get('topk')}, e.g. Recall@20")

    # --- dict protocol -------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self.final_config_dict.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.final_config_dict[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self.final_config_dict

    def __iter__(self) -> Iterator[str]:
        return iter(self.final_config_dict)

    def get(self, key: str, default: Any = None) -> Any:
        v = self.final_config_dict.get(key)
        return default if v is None else v

    def items(self) -> Iterable:
        return self.final_config_dict.items()

    def copy(self) -> "Config":
        new = copy.copy(self)
        new.final_config_dict = copy.deepcopy(self.final_config_dict)
        return new

    # --- grid ----------------------------------------------------------
    def grid(self) -> List[Dict[str, Any]]:
        """All combinations of the grid keys, last key varying fastest."""
        values = [self.final_config_dict[k] for k in self.grid_keys]
        return [dict(zip(self.grid_keys, combo)) for combo in itertools.product(*values)]

    def for_combination(self, combo: Dict[str, Any]) -> "Config":
        """A copy with the grid keys set to the scalars of one combination."""
        new = self.copy()
        new.final_config_dict.update(combo)
        return new

    def __repr__(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.final_config_dict.items())


def available_names(config_dir: Path, kind: str) -> List[str]:
    """Names of the yaml files under configs/<kind>/ (dataset or model)."""
    return sorted(p.stem for p in (config_dir / kind).glob("*.yaml"))


def modality_files(config) -> "OrderedDict[str, str]":
    """name -> feature file name, from `modalities` or MMRec's vision/text feature keys."""
    mods = config["modalities"]
    if isinstance(mods, dict) and mods:
        return OrderedDict((str(k), str(v)) for k, v in mods.items())
    out: "OrderedDict[str, str]" = OrderedDict()
    if config["vision_feature_file"]:
        out["image"] = str(config["vision_feature_file"])
    if config["text_feature_file"]:
        out["text"] = str(config["text_feature_file"])
    return out
