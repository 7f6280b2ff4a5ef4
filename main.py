"""MMRec-style entry point: python main.py -m MODEL -d DATASET [--key value ...]"""
import sys

from mmrec_egra.cli import main_run

if __name__ == "__main__":
    sys.exit(main_run())
