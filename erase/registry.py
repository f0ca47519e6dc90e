"""The method registry: one config dataclass + one Eraser class per method, registered by name."""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import MISSING, dataclass, fields

from .errors import EraseError


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    eraser_cls: type
    summary: str


_REGISTRY: dict[str, MethodSpec] = {}
_BUILTIN_MODULES = ("erase.methods.salun",)


def register_method(name: str, config_cls: type, eraser_cls: type, summary: str = "") -> None:
    """Register a method under a lower-case name; names are unique."""
    if not re.fullmatch(r"[a-z][a-z0-9_\-]*", name):
        raise ValueError(f"method names are lower-case identifiers, got {name!r}")
    if name in _REGISTRY and _REGISTRY[name].eraser_cls is not eraser_cls:
        raise ValueError(f"method {name!r} is already registered")
    _REGISTRY[name] = MethodSpec(name, config_cls, eraser_cls, summary or (eraser_cls.__doc__ or "").strip().splitlines()[0])


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def list_methods() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_method(name: str) -> MethodSpec:
    _load_builtins()
    if name not in _REGISTRY:
        raise EraseError(f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def config_options(config_cls: type) -> list[tuple[str, object, str]]:
    """(name, default, help) per config field; the help is the field's trailing ``# comment`` in the source."""
    try:
        source = inspect.getsource(config_cls)
    except (OSError, TypeError):
        source = ""
    comments = dict(re.findall(r"^\s+(\w+)\s*:[^\n#]*#\s*(.+)$", source, flags=re.M))
    return [(f.name, None if f.default is MISSING else f.default, comments.get(f.name, "")) for f in fields(config_cls)]
