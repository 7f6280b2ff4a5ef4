"""Configuration: overall.yaml -> dataset/D.yaml -> model/M.yaml -> command line.

MMRec rules: a missing key reads as None; `hyper_parameters` is concatenated across
files rather than overridden; `seed` is always the first grid key; every grid key holds
a list and the grid is their Cartesian product (last key fastest); numbers such as
`1e-4` load as floats.
"""
from __future__ import annotations

import copy
import difflib
import itertools
import math
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


# Keys the host or models read that no yaml under configs/ lists (the yaml keys are collected
# automatically; a model may add its own through a `config_keys` class attribute).
HOST_KEYS = {
    "model", "dataset", "config_dir", "hyper_parameters", "resume", "remap_ids", "teacher_seed",
    "export_item_embeddings", "feature_norm", "eval_chunk_elems", "ablation_arms",
}

# Validation at the boundary: key -> (kind, low, high, low_inclusive, high_inclusive).
# kind "int" accepts integral floats such as 1e3; "float" accepts ints; None means unbounded.
# Applied to every value of grid keys, after the merge, so a bad value in a yaml or on the
# command line fails before any data is read.
_I, _F = "int", "float"
SCHEMA: Dict[str, tuple] = {
    "epochs": (_I, 1, None, True, True), "stopping_step": (_I, 0, None, True, True),
    "train_batch_size": (_I, 1, None, True, True), "eval_batch_size": (_I, 1, None, True, True),
    "eval_step": (_I, 1, None, True, True), "embedding_size": (_I, 1, None, True, True),
    "feat_embed_dim": (_I, 1, None, True, True), "knn_k": (_I, 1, None, True, True),
    "egra_knn_k": (_I, 0, None, True, True), "sige_co_k": (_I, 1, None, True, True),
    "user_knn_k": (_I, 1, None, True, True), "n_layers": (_I, 0, None, True, True),
    "n_ui_layers": (_I, 0, None, True, True), "n_mm_layers": (_I, 0, None, True, True),
    "seed": (_I, 0, 2 ** 63 - 1, True, True), "teacher_seed": (_I, 0, 2 ** 63 - 1, True, True),
    "threads": (_I, 1, None, True, True), "teacher_epochs": (_I, 1, None, True, True),
    "egra_ramp": (_I, 0, None, True, True), "sige_cl_batch": (_I, 0, None, True, True),
    "eval_chunk_elems": (_I, 1, None, True, True), "checkpoint_every": (_I, 1, None, True, True),
    "mg_beta": (_I, 1, None, True, True), "mg_alpha1": (_F, 0, None, False, True), "mg_alpha2": (_F, 0, None, True, True),
    "learning_rate": (_F, 0, None, False, True), "weight_decay": (_F, 0, None, True, True),
    "reg_weight": (_F, 0, None, True, True), "cl_weight": (_F, 0, None, True, True),
    "cl_loss": (_F, 0, None, True, True), "cl_temp": (_F, 0, None, False, True), "tau": (_F, 0, None, False, True),
    "dropout": (_F, 0, 1, True, False), "keep_rate": (_F, 0, 1, False, True),
    "longtail_head_ratio": (_F, 0, 1, False, False), "egra_beta": (_F, 0, None, True, True),
    "egra_lambda_min": (_F, 0, None, True, True), "egra_lambda_max": (_F, 0, None, True, True),
    "egra_weight_temp": (_F, 0, None, False, True), "sige_eps": (_F, 0, None, True, True),
    "sige_lambda_a": (_F, 0, None, True, True), "sige_lambda_c": (_F, 0, None, True, True),
    "sige_lambda_p": (_F, 0, None, True, True), "lambda_coeff": (_F, 0, 1, True, True),
}
BOOL_KEYS = {"deterministic", "save_model", "save_recommended_topk", "graph_cache", "use_neg_sampling",
             "filter_out_cod_start_users", "fused_optimizer", "freeze_features", "longtail_eval", "use_gpu",
             "egra_knn_weighted", "remap_ids", "is_multimodal_model", "use_full_sampling",
             "mirror_gradient"}
LEARNERS = ("adam", "sgd", "adagrad", "rmsprop")
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$", re.I)


_TOP_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:", re.M)


def _yaml_keys(path: Path) -> set:
    """Top-level keys of a yaml file, read with a pattern (not the YAML parser: ~30 files are
    scanned per process and pure-Python YAML cost ~0.5 s there); a broken file elsewhere in
    configs/ must not block this run."""
    try:
        return set(_TOP_KEY.findall(path.read_text()))
    except (OSError, UnicodeDecodeError):
        return set()


_KNOWN_CACHE: Dict[tuple, frozenset] = {}


def known_keys(config_dir: Path, extra_files: Sequence[Path] = (), extra_keys: Iterable[str] = ()) -> set:
    """Every key some yaml under `config_dir` (overall, dataset/*, model/*) or `extra_files` sets,
    plus HOST_KEYS and `extra_keys`. New model yamls are picked up automatically."""
    files = [config_dir / "overall.yaml"] + sorted((config_dir / "dataset").glob("*.yaml")) + \
        sorted((config_dir / "model").glob("*.yaml")) + [Path(f) for f in extra_files if f and Path(f).is_file()]
    try:
        from .registry import _REGISTRY
        files += [Path(c.config_file) for c in _REGISTRY.values()
                  if getattr(c, "config_file", None) and Path(c.config_file).is_file()]
    except Exception:     # the registry is optional here (e.g. a bare Config in a tool)
        pass
    sig = tuple((str(f), f.stat().st_mtime_ns) for f in files if f.is_file())
    if sig not in _KNOWN_CACHE:
        keys: set = set()
        for f in files:
            keys |= _yaml_keys(f)
        _KNOWN_CACHE[sig] = frozenset(keys)
    return set(_KNOWN_CACHE[sig]) | HOST_KEYS | set(extra_keys)


def check_unknown_keys(keys: Iterable[str], known: set, where: str = "command line") -> None:
    """MMRecError for a key no yaml, host or model knows, with the closest known key."""
    for key in keys:
        if key.startswith("_") or key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.7)
        dash = "--" if where == "command line" else ""
        hint = f"; did you mean {dash}{close[0]}?" if close else \
            ". Known keys are those of configs/overall.yaml, configs/dataset/*.yaml and configs/model/*.yaml"
        raise MMRecError(f"unknown config key '{key}' ({where}){hint}")


def _check_number(key: str, value: Any, spec: tuple, origin: str) -> Any:
    """The value converted to the key's type, or an MMRecError saying what is wrong."""
    kind, lo, hi, lo_inc, hi_inc = spec
    rng = (f"{'>=' if lo_inc else '>'} {lo}" if lo is not None else "") + \
        (" and " if lo is not None and hi is not None else "") + \
        (f"{'<=' if hi_inc else '<'} {hi}" if hi is not None else "")
    what = "an integer" if kind == _I else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MMRecError(f"{origin}: '{key}' is {value!r}; expected {what} {rng} (e.g. --{key} "
                         f"{lo if lo is not None and lo_inc else 1})")
    if isinstance(value, float) and not math.isfinite(value):
        raise MMRecError(f"{origin}: '{key}' is {value}; expected a finite number {rng}")
    if kind == _I:
        if isinstance(value, float):
            if value != int(value):
                raise MMRecError(f"{origin}: '{key}' is {value}; expected an integer {rng}")
            value = int(value)
    else:
        value = float(value) if isinstance(value, int) else value
    if lo is not None and (value < lo or (value == lo and not lo_inc)) or \
            hi is not None and (value > hi or (value == hi and not hi_inc)):
        raise MMRecError(f"{origin}: '{key}' is {value}; it must be {rng}")
    return value


def config_value(config, key: str, default: Any) -> Any:
    """config[key], or `default` when the key is missing or None (0, False and [] are kept).

    The one accessor models use: it works on our `Config`, on MMRec's Config (no `.get`)
    and on plain dicts.
    """
    value = config[key] if not isinstance(config, dict) else config.get(key)
    return default if value is None else value


class Config:
    """Dict-like run configuration. `config['missing']` is None; `key in config` works."""

    def __init__(self, model: str, dataset: str, overrides: Optional[Dict[str, Any]] = None,
                 config_dir: Optional[str | os.PathLike] = None, model_config_file: Optional[str] = None,
                 extra_keys: Iterable[str] = ()):
        overrides = dict(overrides or {})
        config_dir = Path(overrides.pop("config_dir", None) or config_dir or default_config_dir())
        self.config_dir = config_dir
        overall = config_dir / "overall.yaml"
        if not overall.is_file():
            raise MMRecError(f"missing {overall}: --config_dir must point at a folder holding overall.yaml")
        final: Dict[str, Any] = {}
        hyper: List[str] = []
        self.sources: List[str] = []
        self.origins: Dict[str, str] = {}   # key -> the file (or 'command line') that set it last

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
                    self.origins[k] = src
            self.sources.append(src)

        merge(load_yaml(overall), str(overall))
        ds_file = config_dir / "dataset" / f"{dataset}.yaml"
        if not ds_file.is_file():   # else a yaml beside the data: <data_path>/<dataset>/<dataset>.yaml
            ds_file = Path(_data_root(overrides.get("data_path") or final.get("data_path"), "data_path" in overrides,
                                      config_dir)) / dataset / f"{dataset}.yaml"
        if ds_file.is_file():
            merge(load_yaml(ds_file), str(ds_file))
        model_file = Path(model_config_file) if model_config_file else config_dir / "model" / f"{model}.yaml"
        if model_file.is_file():
            merge(load_yaml(model_file), str(model_file))
        check_unknown_keys(overrides, known_keys(config_dir, [model_file], extra_keys))
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
        final["data_path"] = _data_root(final.get("data_path"), "data_path" in overrides, config_dir)

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
        self._files = (overall, ds_file, model_file)
        self._overrides = set(overrides)
        self._check_types()

    @staticmethod
    def _origin_of(key: str, *files: Path) -> str:
        for f in reversed(files):
            if f.is_file() and key in load_yaml(f):
                return str(f)
        return "configuration"

    def _where(self, key: str) -> str:
        if key in self._overrides:
            return f"command line (--{key})"
        return self._origin_of(key, *self._files)

    def _check_types(self) -> None:
        """Type and range of every known key, after the merge (grid keys: each value)."""
        d = self.final_config_dict
        for key in ("topk", "metrics"):
            if d.get(key) is not None and not isinstance(d[key], list):
                d[key] = [d[key]]
            if d.get(key) == []:       # an empty list would silently fall back to the defaults
                raise MMRecError(f"{self._where(key)}: '{key}' is an empty list; give at least one value, "
                                 f"e.g. {'[10, 20]' if key == 'topk' else '[Recall, NDCG]'}")
        for key, spec in SCHEMA.items():
            v = d.get(key)
            if v is None:
                continue
            if isinstance(v, list):
                if key not in self.grid_keys:
                    raise MMRecError(f"{self._where(key)}: '{key}' holds the list {v!r} but is not a grid key; "
                                     f"give one value, or add it to the grid (--hyper_parameters {key})")
                if not v:
                    raise MMRecError(f"{self._where(key)}: grid key '{key}' holds an empty list; give at least one value")
                d[key] = [_check_number(key, x, spec, self._where(key)) for x in v]
            else:
                d[key] = _check_number(key, v, spec, self._where(key))
        for key in BOOL_KEYS:
            v = d.get(key)
            if v is None or isinstance(v, bool) or (isinstance(v, list) and key in self.grid_keys
                                                    and all(isinstance(x, bool) for x in v)):
                continue
            if isinstance(v, int) and v in (0, 1):
                d[key] = bool(v)
                continue
            raise MMRecError(f"{self._where(key)}: '{key}' is {v!r}; expected true or false")
        topk = d.get("topk")
        if topk is not None:
            if not topk:
                raise MMRecError(f"{self._where('topk')}: 'topk' is empty; expected a list of cut-offs, e.g. [10, 20]")
            d["topk"] = [_check_number("topk", k, (_I, 1, None, True, True), self._where("topk")) for k in topk]
        dev = d.get("device")
        if dev is not None and not hasattr(dev, "type") and not _DEVICE_RE.match(str(dev)):
            raise MMRecError(f"{self._where('device')}: 'device' is {dev!r}; expected auto, cpu, cuda, cuda:N or mps")
        sp_ = d.get("show_progress")
        if sp_ is not None and not isinstance(sp_, bool) and str(sp_).lower() != "auto":
            raise MMRecError(f"{self._where('show_progress')}: 'show_progress' is {sp_!r}; expected auto, true or false")
        learner = d.get("learner")
        if learner is not None and str(learner).lower() not in LEARNERS:
            raise MMRecError(f"{self._where('learner')}: unknown optimizer learner: '{learner}'; expected one of "
                             f"{', '.join(LEARNERS)}")
        grid = d.get("grid")
        if grid is not None and str(grid).lower() not in ("full", "first"):
            raise MMRecError(f"{self._where('grid')}: 'grid' is {grid!r}; expected full or first")
        sched = d.get("learning_rate_scheduler")
        if sched is not None and not (isinstance(sched, list) and len(sched) == 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in sched)):
            raise MMRecError(f"{self._where('learning_rate_scheduler')}: 'learning_rate_scheduler' is {sched!r}; "
                             f"expected [a, b] with a > 0 and b > 0 (lr * a^(epoch/b)), e.g. [1.0, 50]")
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
        return config_value(self.final_config_dict, key, default)

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


def _data_root(value: Any, from_cli: bool, config_dir: Path) -> str:
    """Absolute data_path with a trailing separator: relative to the current folder when given on
    the command line, else to the checkout holding configs/ (the current folder for an installed copy)."""
    dp = str(value or "data/")
    if not os.path.isabs(dp):
        base = config_dir.parent if config_dir.parent.name != "mmrec_egra" else Path.cwd()
        dp = str(base / dp) if not from_cli else os.path.abspath(dp)
    return os.path.join(os.path.abspath(dp), "")


def modality_origin(config, name: str) -> Optional[str]:
    """The yaml file (or 'command line') that named modality `name`'s feature file; None when
    only overall.yaml's MMRec defaults name it (those files are read when present)."""
    origins = getattr(config, "origins", None)
    if not origins:
        return None
    mods = config["modalities"]
    key = "modalities" if isinstance(mods, dict) and mods else \
        {"image": "vision_feature_file", "text": "text_feature_file"}.get(name)
    src = origins.get(key) if key else None
    if src is None or src == str(Path(getattr(config, "config_dir", "")) / "overall.yaml"):
        return None
    return src


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
