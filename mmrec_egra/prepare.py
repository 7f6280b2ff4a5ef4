"""`python -m mmrec_egra.prepare ...`: the same as `mmrec-egra prepare ...` (see docs/data.md)."""
import sys

from .data.prepare import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m mmrec_egra.prepare"))
