"""The attack registry: one config dataclass + one ``Attack`` class per attack, one file each under
``eval/attacks/``, each ending with ``register_attack(...)`` (as methods register in ``erase.core.registry``)."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, fields

from erase.core.errors import EraseError
from erase.core.registry import check_registration, coerce_value

PACKAGE = "eval.attacks"
NOT_ATTACKS = {"base", "registry", "run", "report"}


@dataclass(frozen=True)
class AttackSpec:
    name: str
    config_cls: type
    attack_cls: type
    summary: str


_REGISTRY: dict[str, AttackSpec] = {}


def register_attack(name: str, config_cls: type, attack_cls: type, summary: str) -> None:
    check_registration(
        "attack", name, config_cls, attack_cls, _REGISTRY[name].attack_cls if name in _REGISTRY else None
    )
    _REGISTRY[name] = AttackSpec(name, config_cls, attack_cls, summary)


def _load() -> None:
    package = importlib.import_module(PACKAGE)
    for mod in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
        if mod not in NOT_ATTACKS and not mod.startswith("_"):
            importlib.import_module(f"{PACKAGE}.{mod}")


def list_attacks() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get_attack(name: str) -> AttackSpec:
    _load()
    if name not in _REGISTRY:
        raise EraseError(f"unknown attack {name!r}; known attacks: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def make_attack(name: str, overrides: dict | None = None):
    """The attack ``name`` with its config's defaults changed by ``overrides`` (checked:
    unknown keys, types, ranges)."""
    spec = get_attack(name)
    known = {f.name: f for f in fields(spec.config_cls)}
    unknown = sorted(set(overrides or {}) - set(known))
    if unknown:
        raise EraseError(f"unknown option(s) {', '.join(unknown)} for attack {name}; its options: {', '.join(known)}")
    values = {k: coerce_value(spec.config_cls, known[k], v, f"attack {name}") for k, v in (overrides or {}).items()}
    config = spec.config_cls(**values)
    config.validate(name)
    return spec.attack_cls(config)
