"""mmrec_egra: EGRA and SIGE multimodal recommenders with an MMRec-compatible host."""
from .registry import get_model, list_models, register_model  # noqa: F401
from .utils import MMRecError  # noqa: F401

__version__ = "0.1.0"
