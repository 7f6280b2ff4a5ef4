"""Experiment fan-out: the runs of a grid, of seeds, of models or of ablation arms as Ray tasks.

    python main.py -m LightGCN -d baby --ray                       # grid combinations in parallel
    python -m mmrec_egra.compare -d baby -m BPR LightGCN --seeds 1 2 3 --ray
    python main.py -m EGRA -d baby --ablation --seed 1 2 --ray --ray_address auto   # a running cluster

Each task calls the very function the sequential path calls for one unit of work
(`runner.run` on one combination; `compare.run_one` on one entry and seed), with
resume, so it writes the same folders and files. The driver then runs the ordinary
sequential command with resume: every unit is found finished and reused, so the summary,
tables and reports are gathered exactly as without Ray. A rerun after an interruption
reuses what finished and trains only the rest. Without an address Ray starts a local
cluster on this machine; each task asks for one CPU and, when the cluster has GPUs, one
GPU (or `--ray_gpus` of one, e.g. 0.5 to put two trials on a GPU).

Ray is optional (`pip install 'ray>=2.9'` or the `ray` extra) and imported only here.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from .utils import MMRecError, get_logger


def require_ray():
    """The ray module, or a clear error saying what to install."""
    try:
        import ray
    except ImportError:
        raise MMRecError("--ray needs Ray, which is not installed: pip install 'ray>=2.9' "
                         "(or pip install -e '.[ray]')") from None
    return ray


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None):
    """Connect to the cluster at `address`, or start a local one (num_cpus: its size)."""
    ray = require_ray()
    if not ray.is_initialized():
        kwargs: Dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if address:
            kwargs["address"] = address
        elif num_cpus:
            kwargs["num_cpus"] = int(num_cpus)
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise MMRecError(f"--ray_address {address!r}: cannot connect to a Ray cluster ({exc}); start one "
                             f"with `ray start --head` or leave --ray_address out for a local cluster") from None
    return ray


def _in_dir(cwd: str, fn: Callable, args: tuple):
    """Run fn(*args) with the driver's working folder, so relative paths mean the same."""
    os.chdir(cwd)
    return fn(*args)


def map_tasks(fn: Callable, jobs: Sequence[tuple], address: Optional[str] = None,
              gpus_per_task: Optional[float] = None) -> List[Any]:
    """fn(*job) for every job as Ray tasks; results in job order. An MMRecError in a task is
    raised here with its own message."""
    ray = init_ray(address)
    if gpus_per_task is None:
        gpus_per_task = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    remote = ray.remote(num_cpus=1, num_gpus=float(gpus_per_task), max_retries=0)(_in_dir)
    cwd = os.getcwd()
    refs = [remote.remote(cwd, fn, tuple(job)) for job in jobs]
    get_logger().info("ray: %d task(s) submitted (%s GPU each)", len(refs), gpus_per_task)
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, MMRecError):
            raise MMRecError(str(cause)) from None
        raise


# ---- main.py: the combinations of one model's grid ------------------------------
def _one_combination(model: str, dataset: str, opts: Dict[str, Any], resume: bool) -> str:
    from .runner import run
    summary = run(model, dataset, opts, resume=resume)
    return summary["rows"][0]["result"]["status"]


def grid_jobs(model: str, dataset: str, overrides: Dict[str, Any], resume: bool) -> List[tuple]:
    """One (model, dataset, overrides, resume) per combination: its grid values as one-value lists."""
    from .runner import make_config
    config = make_config(model, dataset, dict(overrides))
    grid = config.grid()
    if str(config["grid"] if config["grid"] is not None else "full").lower() == "first":
        grid = grid[:1]
    return [(model, dataset, dict(overrides, grid="first", **{k: [v] for k, v in combo.items()}), resume)
            for combo in grid]


def run_grid(model: str, dataset: str, overrides: Optional[Dict[str, Any]] = None, resume: bool = False,
             address: Optional[str] = None, gpus_per_task: Optional[float] = None) -> Dict[str, Any]:
    """`runner.run` with every combination trained as a Ray task; returns the same summary."""
    from .runner import run
    overrides = dict(overrides or {})
    overrides.setdefault("show_progress", False)
    jobs = grid_jobs(model, dataset, overrides, resume)
    map_tasks(_one_combination, jobs, address, gpus_per_task)
    return run(model, dataset, overrides, resume=True)    # all finished: gathered as today


# ---- compare: entries (models or ablation arms) x seeds --------------------------
def prerun_entries(entries: Sequence[tuple], dataset: str, seeds: Sequence[int], overrides: Dict[str, Any],
                   full_grid: bool = False, grid_max: Optional[int] = None, address: Optional[str] = None,
                   gpus_per_task: Optional[float] = None) -> None:
    """Train every (entry, seed) of `compare.run_entries` as a Ray task (`compare.run_one`);
    run_entries afterwards finds them finished and only gathers."""
    from .compare import entry_opts, summary_valid_metric
    vm = summary_valid_metric(overrides)
    jobs = [(model, dataset, entry_opts(label, model, over, overrides, seed, full_grid), grid_max, vm)
            for label, model, over in entries for seed in seeds]
    map_tasks(_compare_unit, jobs, address, gpus_per_task)


def _compare_unit(model: str, dataset: str, opts: Dict[str, Any], grid_max: Optional[int], vm: str) -> bool:
    from .compare import run_one
    return run_one(model, dataset, opts, grid_max, vm)["best"] is not None

