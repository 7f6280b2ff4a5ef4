"""Command line: `python main.py -m MODEL -d DATASET [--key value ...]` and `mmrec-egra ...`.

Subcommands of `mmrec-egra`: run (default), list. Errors in user input print one line
(`error: ...`) and exit with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .config import parse_cli_overrides
from .utils import MMRecError


def _run_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train and evaluate a model (MMRec-compatible).",
                                epilog="Any other option is a config override: --key value, lists as "
                                       "--seed 1 2 3; e.g. --data_path ../shared/data/ --learning_rate 0.01")
    p.add_argument("-m", "--model", default="EGRA", help="registered model name (any case)")
    p.add_argument("-d", "--dataset", default="demo", help="dataset name (configs/dataset/<name>.yaml)")
    p.add_argument("--resume", action="store_true", help="continue interrupted combinations from last.pt")
    p.add_argument("--no_save", action="store_true", help="do not write results/checkpoints")
    return p


def main_run(argv: Optional[List[str]] = None, prog: str = "main.py") -> int:
    args, rest = _run_parser(prog).parse_known_args(argv)
    try:
        overrides = parse_cli_overrides(rest)
        from .runner import run
        run(args.model, args.dataset, overrides, resume=args.resume, save=not args.no_save)
    except MMRecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command with --resume to continue", file=sys.stderr)
        return 130
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
        raise MMRecError(f"unknown command '{cmd}'; commands: run, list")
    except MMRecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
