"""The method registry: one config dataclass + one Eraser class per method, registered by name.

Adding a method is one file under ``erase/methods/`` that ends with ``register_method(...)``: the
registry imports every module of that package on first use, so nothing else needs to change.
Config fields carry their help in dataclass metadata (``option(default, "help")``), which
``erase methods NAME`` prints and which survives configs built at run time.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import re
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import ClassVar

from .errors import EraseError

METHODS_PACKAGE = "erase.methods"


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    eraser_cls: type
    summary: str


_REGISTRY: dict[str, MethodSpec] = {}
_loaded = False


def option(default, help: str, **kw) -> Field:
    """A config field with its help text (shown by ``erase methods NAME``)."""
    return field(default=default, metadata={"help": help, **kw})


def check_registration(what: str, name: str, config_cls: type, cls: type, registered: type | None) -> None:
    """The rules of every registry (methods, attacks): lower-case unique names, every config field with its help."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"{what} names are lower-case identifiers, got {name!r}")
    if registered is not None and registered is not cls:
        raise ValueError(f"{what} {name!r} is already registered (by {registered.__module__})")
    missing = [f.name for f in fields(config_cls) if not f.metadata.get("help")]
    if missing:
        raise ValueError(
            f"{config_cls.__name__} fields without help: {missing}; declare them with option(default, help)"
        )


def register_method(name: str, config_cls: type, eraser_cls: type, summary: str = "") -> None:
    """Register a method under a lower-case name; names are unique."""
    check_registration(
        "method", name, config_cls, eraser_cls, _REGISTRY[name].eraser_cls if name in _REGISTRY else None
    )
    _REGISTRY[name] = MethodSpec(
        name, config_cls, eraser_cls, summary or (eraser_cls.__doc__ or "").strip().splitlines()[0]
    )


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    package = importlib.import_module(METHODS_PACKAGE)
    for mod in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
        if not mod.startswith("_"):
            importlib.import_module(f"{METHODS_PACKAGE}.{mod}")
    _loaded = True


def list_methods(family: str | None = None) -> list[str]:
    """Registered method names, optionally only those for one model family ("stable_diffusion", "stylegan")."""
    _load_builtins()
    return sorted(n for n, spec in _REGISTRY.items() if family is None or spec.eraser_cls.model_family == family)


def canonical_method(name: str) -> str:
    """The registered name for ``name``, accepting hyphens for underscores (``text-to-unlearn``)."""
    _load_builtins()
    alias = name.replace("-", "_")
    return alias if name not in _REGISTRY and alias in _REGISTRY else name


def get_method(name: str) -> MethodSpec:
    _load_builtins()
    if name not in _REGISTRY:
        raise EraseError(f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def config_options(config_cls: type) -> list[tuple[str, object, str]]:
    """(name, default, help) per config field."""
    return [
        (f.name, None if f.default is MISSING else f.default, f.metadata.get("help", "")) for f in fields(config_cls)
    ]


def check_options(
    cfg,
    method: str,
    *,
    choices: dict[str, tuple] | None = None,
    at_least_one: tuple[str, ...] = (),
    non_negative: tuple[str, ...] = (),
    positive: tuple[str, ...] = (),
) -> None:
    """Declarative range checks for a method config; the first violation raises a one-line EraseError."""
    for name, allowed in (choices or {}).items():
        if getattr(cfg, name) not in allowed:
            raise EraseError(
                f"unknown {name} {getattr(cfg, name)!r} for {method}; choose one of {', '.join(map(str, allowed))}"
            )
    for names, ok, what in (
        (at_least_one, lambda v: v >= 1, "at least 1"),
        (non_negative, lambda v: v >= 0, ">= 0"),
        (positive, lambda v: v > 0, "> 0"),
    ):
        for name in names:
            if not ok(getattr(cfg, name)):
                raise EraseError(f"{method} option {name} must be {what}, got {getattr(cfg, name)}")


# -- the options every method shares -------------------------------------------------------------------
PATCH_DTYPES = ("float16", "bfloat16", "float32")  # storage dtypes a method may choose for its patch values


@dataclass
class MethodConfig:
    """The options every method has, declared once and validated once (``erase.api.resolve_config``).

    A method's config subclasses this (or ``TrainedConfig``), redeclares a field only to change its default or
    help, sets ``method`` (the name its errors give) and adds its own rules in ``check``.
    """

    steps: int = option(100, "training steps")
    patch_dtype: str = option("float16", "storage dtype of the patch values (float16, bfloat16 or float32)")
    checkpoint_every: int = option(100, "steps between resumable checkpoints")

    method: ClassVar[str] = "method"
    at_least_one: ClassVar[tuple[str, ...]] = ("checkpoint_every",)
    positive: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> None:
        check_options(
            self,
            self.method,
            choices={"patch_dtype": PATCH_DTYPES},
            at_least_one=self.at_least_one,
            positive=self.positive,
        )
        self.check()

    def check(self) -> None:
        """The method's own rules (ranges, choices, combinations); one-line EraseErrors."""


@dataclass
class TrainedConfig(MethodConfig):
    """A method that trains: a learning rate and at least one step."""

    lr: float = option(1e-5, "learning rate")

    at_least_one: ClassVar[tuple[str, ...]] = ("steps", "checkpoint_every")
    positive: ClassVar[tuple[str, ...]] = ("lr",)


# -- typed values for config fields (--set key=value, presets) ------------------------------------


def _allowed_types(f: Field, owner: type) -> tuple[list[type], bool]:
    hint = typing.get_type_hints(owner)[f.name]
    args = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    optional = type(None) in args
    return [a for a in args if a is not type(None)], optional


def coerce_value(owner: type, f: Field, value, method: str):
    """``value`` as the field's type, or an EraseError naming the option, the value and the expected type."""
    kinds, optional = _allowed_types(f, owner)
    where = f"{method} option {f.name}"
    if value is None:
        if optional:
            return None
        raise EraseError(f"{where} cannot be empty; give a {kinds[0].__name__}")
    for kind in kinds:
        if kind is bool:
            if isinstance(value, bool):
                return value
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
        elif kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise EraseError(f"{where} must be a finite number, got {value!r}")
                return float(value)
        elif kind is str:
            if isinstance(value, str):
                return value
        elif isinstance(value, kind):
            return value
    names = " or ".join(k.__name__ for k in kinds) + (" (or null)" if optional else "")
    raise EraseError(f"{where} expects {names}, got {value!r}; e.g. --set {f.name}={json_example(kinds[0], f)}")


def json_example(kind: type, f: Field) -> str:
    if f.default is not MISSING and f.default is not None:
        return str(f.default).lower() if isinstance(f.default, bool) else str(f.default)
    return {int: "1", float: "0.5", bool: "true", str: "name"}.get(kind, "...")
