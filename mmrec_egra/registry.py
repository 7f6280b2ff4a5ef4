"""Model registry: name -> class, case-insensitive, with entry-point discovery.

Built-in models register on import of `mmrec_egra.models`; third-party packages
register through the `mmrec.models` entry-point group (value: a model class, or a
module whose import registers models with `register_model`).
"""
from __future__ import annotations

import difflib
from importlib import metadata
from typing import Callable, Dict, List, Optional, Type

from .utils import MMRecError, get_logger

ENTRY_POINT_GROUP = "mmrec.models"

_REGISTRY: Dict[str, type] = {}        # lower-case name -> class
_CANONICAL: Dict[str, str] = {}        # lower-case name -> name as registered
_PRIMARY: Dict[str, str] = {}          # lower-case primary name -> name (aliases excluded)
_CLASS_NAME: Dict[type, str] = {}      # class -> its primary registered name
_LOADED = {"builtins": False, "entry_points": False}


def register_model(name_or_cls=None, *, aliases: Optional[List[str]] = None) -> Callable:
    """Class decorator registering a model under its class name (or an explicit name).

    Usage: ``@register_model`` or ``@register_model("NAME", aliases=["OTHER"])``.
    Registering a different class under an existing name is an error.
    """
    def wrap(cls: type, name: Optional[str] = None) -> type:
        names = [name or cls.__name__] + list(aliases or [])
        for n in names:
            key = n.lower()
            old = _REGISTRY.get(key)
            if old is not None and old is not cls and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
                raise MMRecError(f"model name '{n}' is already registered by {old.__module__}.{old.__qualname__}; "
                                 f"choose another name for {cls.__module__}.{cls.__qualname__}")
            _REGISTRY[key] = cls
            _CANONICAL[key] = n
        _PRIMARY[names[0].lower()] = names[0]
        _CLASS_NAME[cls] = names[0]
        return cls

    if isinstance(name_or_cls, type):
        return wrap(name_or_cls)
    return lambda cls: wrap(cls, name_or_cls)


def _load_builtins() -> None:
    if not _LOADED["builtins"]:
        _LOADED["builtins"] = True
        from . import models  # noqa: F401  (import registers the built-in models)


def _load_entry_points() -> None:
    if _LOADED["entry_points"]:
        return
    _LOADED["entry_points"] = True
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # pragma: no cover - broken metadata must not break the host
        return
    for ep in eps:
        try:
            obj = ep.load()
        except Exception as exc:
            get_logger().warning("could not load model plugin '%s' (%s): %s", ep.name, ep.value, exc)
            continue
        if isinstance(obj, type) and ep.name.lower() not in _REGISTRY:
            register_model(ep.name)(obj)


def reload_entry_points() -> None:
    """Scan the `mmrec.models` entry points again (after installing a plugin at run time)."""
    _LOADED["entry_points"] = False
    _load_entry_points()


def list_models() -> List[str]:
    """Registered model names (as registered, sorted case-insensitively)."""
    _load_builtins()
    _load_entry_points()
    return sorted(_PRIMARY.values(), key=str.lower)


def canonical_name(name: str) -> str:
    """The primary registered name behind `name` or an alias (the name its yaml uses)."""
    cls = get_model(name)
    return _CLASS_NAME.get(cls, cls.__name__)


def get_model(name: str) -> Type:
    """Return the model class registered as `name` (any case).

    Unknown names raise MMRecError listing the registered models and the closest match.
    """
    _load_builtins()
    key = str(name).lower()
    if key not in _REGISTRY:
        _load_entry_points()
    if key not in _REGISTRY:
        known = list_models()
        close = difflib.get_close_matches(key, [k.lower() for k in known], n=1, cutoff=0.4)
        hint = f" Did you mean '{_CANONICAL[close[0]]}'?" if close else ""
        raise MMRecError(f"unknown model '{name}'.{hint} Registered models: {', '.join(known)}")
    return _REGISTRY[key]
