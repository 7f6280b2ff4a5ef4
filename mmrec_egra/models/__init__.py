"""Built-in models: every module in this package is imported, and its
`@register_model` classes register themselves. Adding a model = one file here plus
configs/model/<NAME>.yaml."""
import importlib
import pkgutil

from .base import GeneralRecommender  # noqa: F401

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
