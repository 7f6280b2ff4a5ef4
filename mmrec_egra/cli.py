"""Command line: `python main.py -m MODEL -d DATASET [--key value ...]` and `mmrec-egra ...`.

Subcommands of `mmrec-egra`: run (default), list, artifacts, export-items, install-into,
uninstall-from, prepare. Errors in user input print one line
(`error: ...`) and exit with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .config import parse_cli_overrides
from .utils import MMRecError, report_interrupt


def _run_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train and evaluate a model (MMRec-compatible).",
                                epilog="Any other option is a config override: --key value, lists as "
                                       "--seed 1 2 3; e.g. --data_path ../shared/data/ --learning_rate 0.01")
    p.add_argument("-m", "--model", default="EGRA", help="registered model name (any case)")
    p.add_argument("-d", "--dataset", default="demo", help="dataset name (configs/dataset/<name>.yaml)")
    p.add_argument("--resume", action="store_true", help="continue interrupted combinations from last.pt")
    p.add_argument("--no_save", action="store_true", help="do not write results/checkpoints")
    p.add_argument("--ablation", action="store_true",
                   help="run the model's ablation arms (ablation_arms in its yaml) over --seed and write one table")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training of each combination across the processes torchrun starts "
                        "(torchrun --standalone --nproc_per_node N main.py ... --distributed)")
    from .compare import add_ray_arguments
    add_ray_arguments(p)
    return p


def _cli_repr(v) -> str:
    import json
    return v if isinstance(v, str) else json.dumps(v)


def main_run(argv: Optional[List[str]] = None, prog: str = "main.py") -> int:
    args, rest = _run_parser(prog).parse_known_args(argv)
    if args.ablation:
        from . import compare
        overrides = parse_cli_overrides(rest)
        seeds = overrides.pop("seed", 999)
        seeds = seeds if isinstance(seeds, list) else [seeds]
        rest = [t for k, v in overrides.items() for t in (f"--{k}", _cli_repr(v))]
        rest += (["--ray"] if args.ray else []) + (["--ray_address", args.ray_address] if args.ray_address else []) \
            + (["--ray_gpus", str(args.ray_gpus)] if args.ray_gpus is not None else [])
        return compare.main(["-d", args.dataset, "--ablation", args.model, "--seeds", *map(str, seeds), *rest])
    try:
        overrides = parse_cli_overrides(rest)
        from .runner import run
        if args.distributed and (args.ray or args.ray_address):
            raise MMRecError("--distributed and --ray do not combine: use torchrun for one run over several "
                             "processes, or --ray for many runs at once")
        if args.distributed:
            from .runner import run_distributed
            run_distributed(args.model, args.dataset, overrides, resume=args.resume, save=not args.no_save)
        elif args.ray or args.ray_address:
            if args.no_save:
                raise MMRecError("--ray gathers the runs from their saved results; drop --no_save")
            from .fanout import run_grid
            run_grid(args.model, args.dataset, overrides, args.resume, args.ray_address, args.ray_gpus)
        else:
            run(args.model, args.dataset, overrides, resume=args.resume, save=not args.no_save)
    except MMRecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:   # trainer.RunInterrupted says what was saved and which signal
        return report_interrupt(exc)
    return 0


def main_artifacts(argv: List[str]) -> int:
    """`mmrec-egra artifacts list|clear -d DATASET [--data_path P] [--prefix teacher/]`."""
    p = argparse.ArgumentParser(prog="mmrec-egra artifacts", description="Inspect or clean a dataset's artifact store")
    p.add_argument("action", choices=["list", "clear"])
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("--data_path", default=None, help="folder holding <dataset>/ (default: the configs' data/)")
    p.add_argument("--artifact_dir", default=None, help="explicit store folder (overrides the default)")
    p.add_argument("--prefix", default="", help="only entries whose key starts with this (e.g. teacher/ or graph/)")
    args = p.parse_args(argv)
    from .artifacts import artifact_dir_for, open_store
    from .config import Config
    overrides = {k: v for k, v in (("data_path", args.data_path), ("artifact_dir", args.artifact_dir)) if v}
    cfg = Config("BPR", args.dataset, overrides)
    store = open_store(artifact_dir_for(cfg))
    if args.action == "list":
        entries = [e for e in store.list() if e["key"].startswith(args.prefix)]
        print(f"artifact store {store.dir}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
        for e in entries:
            desc = e.get("error") or ", ".join(f"{n} {s}" for n, s in e["arrays"].items())
            meta = e.get("meta") or {}
            extra = " ".join(f"{k}={meta[k]}" for k in ("teacher", "kind", "seed", "best_epoch", "protocol")
                             if k in meta)
            print(f"  {e['key']}  {e['bytes'] / 2 ** 20:.2f} MiB  {desc}  {extra}  {e.get('created') or ''}")
    else:
        n = store.clear(args.prefix)
        print(f"removed {n} entr{'y' if n == 1 else 'ies'} from {store.dir}")
    return 0


def main_export_items(argv: List[str]) -> int:
    """`mmrec-egra export-items RUN_DIR [--out F.npy] [--kind final] [--data_path P]`."""
    p = argparse.ArgumentParser(prog="mmrec-egra export-items",
                                description="Write a finished run's best-valid item vectors as an .npy (for "
                                            "EGRA's --teacher_embeddings_file)")
    p.add_argument("run_dir", help="a combination folder: saved/<Model>-<dataset>/<combination>/")
    p.add_argument("--out", default=None, help="output .npy (default: RUN_DIR/item_embeddings.npy)")
    p.add_argument("--kind", default="final", help="final (scoring vectors) | behaviour | modality")
    p.add_argument("--data_path", default=None, help="folder holding <dataset>/ if not the run's own")
    args = p.parse_args(argv)
    from .saved_run import export_run_items
    path, emb = export_run_items(args.run_dir, args.out, args.kind, args.data_path)
    print(f"{path}: {emb.shape[0]} x {emb.shape[1]} ({args.kind}); use it with "
          f"--teacher_embeddings_file {path}")
    return 0


def main_install(cmd: str, argv: List[str]) -> int:
    """`mmrec-egra install-into|uninstall-from MMRec/src [-m MODEL ...] [--force]`."""
    p = argparse.ArgumentParser(prog=f"mmrec-egra {cmd}",
                                description="Install our models into (or remove them from) an MMRec checkout")
    p.add_argument("src", help="the MMRec src/ folder (holding models/ and configs/)")
    p.add_argument("--force", action="store_true",
                   help="replace files already in the tree (backed up) / files edited since install")
    if cmd == "install-into":
        p.add_argument("-m", "--models", nargs="+", default=None, help="only these models (default: all)")
    args = p.parse_args(argv)
    from .install import install_into, uninstall_from
    if cmd == "install-into":
        written = install_into(args.src, args.models, force=args.force)
        print(f"{len(written)} file(s) written; run MMRec as usual, e.g. python main.py -m EGRA -d baby")
    else:
        uninstall_from(args.src, force=args.force)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `mmrec-egra` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[0] if argv and not argv[0].startswith("-") else "run"
    rest = argv[1:] if argv and not argv[0].startswith("-") else argv
    try:
        if cmd == "run":
            return main_run(rest, prog="mmrec-egra run")
        if cmd == "list":
            from .registry import list_models
            print("\n".join(list_models()))
            return 0
        if cmd == "artifacts":
            return main_artifacts(rest)
        if cmd == "export-items":
            return main_export_items(rest)
        if cmd in ("install-into", "uninstall-from"):
            return main_install(cmd, rest)
        if cmd == "prepare":
            from .data.prepare import main as main_prepare
            return main_prepare(rest)
        raise MMRecError(f"unknown command '{cmd}'; commands: run, list, artifacts, export-items, install-into, "
                           f"uninstall-from, prepare")
    except MMRecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
