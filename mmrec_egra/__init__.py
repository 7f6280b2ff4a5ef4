"""mmrec_egra: EGRA and SIGE multimodal recommenders with an MMRec-compatible host."""
import os as _os

# OpenMP threads that spin while waiting make torch collapse (10x slower epochs) when the
# cores are shared with other processes; passive waiting costs almost nothing otherwise.
# Must be set before torch is imported; an explicit setting in the environment wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .registry import get_model, list_models, register_model  # noqa: F401
from .utils import MMRecError  # noqa: F401

__version__ = "0.1.0"
