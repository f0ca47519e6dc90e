"""How a mini world plugs into evaluation: its protocol, its judges, its paths and its own real images.

Evaluation never imports a world (``tests/test_layering.py``); a world imports evaluation. A world is a ``World``
record built by one module of the world, found by name: the built-in worlds by their module path (``BUILTIN``),
others through the ``erasekit.worlds`` entry-point group, each loaded the first time evaluation asks for it.
A protocol names its world in ``Protocol.classifiers`` (the family of judges that scores it).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from erase.core.errors import EraseError

BUILTIN = {"canvas-mini": "worlds.canvas_mini.plugin", "faces-mini": "worlds.faces_mini.plugin"}
ENTRY_POINTS = "erasekit.worlds"


class WorldError(EraseError):
    """An unknown world, or one whose module does not build a World."""


@dataclass(frozen=True)
class World:
    """What evaluation may ask of a world.

    ``protocol()`` its protocol; ``judges(device)`` one judge per axis (images in [0, 1] -> logits in the axis's
    label order); ``model()`` the folder of its shipped generative model. Optional: ``clip(device)`` ->
    (model, tokenizer, label) for CLIP alignment; ``real_image(concepts, k)`` the k-th real image of a combination
    of concepts ({axis: concept}, uint8 HxWx3) for FID references, described by ``real_images``;
    ``judge_distance`` when the judges' features make the perceptual distance of retain fidelity; ``guides()`` the
    networks a guided method (Text-to-Unlearn) consults.

    A latent-seeded world (its protocol has no prompt template; ``eval.latent_report``) adds ``answers(pipe,
    protocol, target, kind, progress=)`` -> a renderer (``variants``, ``render(variant, seeds)``, ``record``),
    ``metrics(protocol, target, kind, judges, patched=)`` -> torchmetrics Metrics fed each batch of seeds,
    ``report_lines(report)`` its part of report.md and ``summary(report)`` the report in one line.
    """

    name: str
    protocol: Callable
    judges: Callable
    model: Callable
    clip: Callable | None = None
    real_image: Callable | None = None
    real_images: dict = field(default_factory=dict)
    judge_distance: bool = False
    answers: Callable | None = None
    metrics: Callable | None = None
    report_lines: Callable | None = None
    summary: Callable | None = None
    guides: Callable | None = None


@functools.cache
def _entry_points() -> dict[str, str]:  # scanned once per process: installed distributions do not change under it
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINTS)}


def world_names() -> list[str]:
    return sorted({*BUILTIN, *_entry_points()})


@functools.cache
def get_world(name: str) -> World:
    """The world ``name`` (``canvas-mini``, ``faces-mini`` or a registered one)."""
    target = BUILTIN.get(name) or _entry_points().get(name)
    if target is None:
        raise WorldError(f"unknown world {name!r}; known worlds: {', '.join(world_names())}")
    module, _, attr = target.partition(":")
    world = getattr(importlib.import_module(module), attr or "WORLD")
    if not isinstance(world, World) or world.name != name:
        raise WorldError(f"{target} does not define the World {name!r}")
    return world


def is_world(name: str | None) -> bool:
    return name is not None and name in world_names()


def world_of(protocol) -> World | None:
    """The world that judges ``protocol`` (its ``classifiers``), or None for a protocol of real models."""
    return get_world(protocol.classifiers) if protocol is not None and is_world(protocol.classifiers) else None


def world_of_model(model: str | Path) -> str | None:
    """The world whose shipped model is the folder ``model`` (None for any other model)."""
    try:
        path = Path(model).resolve()
    except (OSError, RuntimeError):
        return None
    return next((name for name in world_names() if Path(get_world(name).model()).resolve() == path), None)
