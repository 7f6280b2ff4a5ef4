"""The finished run folders of a comparison, as `MODEL=DIR[,DIR...]` arguments for seed_table.py.

    python results/finished_runs.py -d tiktok --data_path ../shared/data/ --checkpoint_dir saved/qual/zoo \
        --longtail --threads 1 --stopping_step 50 -m LightGCN GRCN --seeds 999 1 2

Uses `compare --plan`'s lookup (the runner's own folder of each run), so only the runs that the
same compare command would reuse are listed: the default configuration of each model (or, with
--grid-max N, every finished combination of the cut grid), never another combination's folder
that happens to sit in the same model folder. Runs still missing are reported on stderr.
"""
from __future__ import annotations

import argparse
import logging
import sys

from mmrec_egra.compare import compare_overrides
from mmrec_egra.plan import plan_entries
from mmrec_egra.utils import get_logger


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-d", "--dataset", required=True)
    ap.add_argument("-m", "--models", nargs="+", required=True)
    ap.add_argument("--seeds", nargs="+", type=int, default=[999])
    ap.add_argument("--grid-max", type=int, default=None)
    ap.add_argument("--longtail", action="store_true")
    args, rest = ap.parse_known_args()
    get_logger().setLevel(logging.WARNING)     # stdout carries only the arguments
    overrides = compare_overrides(rest, args.longtail)
    rows = plan_entries([(m, m, {}) for m in args.models], args.dataset, args.seeds, overrides,
                        grid_max=args.grid_max)
    out = []
    for m in args.models:
        dirs = [r["dir"] for r in rows if r["label"] == m and r["status"] == "finished"]
        missing = [f"seed {r['seed']} {r['combination']} ({r['status']})" for r in rows
                   if r["label"] == m and r["status"] != "finished"]
        if missing:
            print(f"{m}: not finished: {'; '.join(missing)}", file=sys.stderr)
        if dirs:
            out.append(f"{m}={','.join(dirs)}")
    print(" ".join(out))


if __name__ == "__main__":
    main()
