"""Dataset reading/validation, loaders and the demo generator."""
from .dataset import RecDataset, load_dataset  # noqa: F401
from .loaders import EvalDataLoader, NegativeSampler, TrainDataLoader, build_loaders  # noqa: F401
