"""Where the shipped artefacts live (presets, prompt templates, the mini worlds' models), installed or not.

A checkout keeps them in ``assets/`` beside the packages; a wheel (``pip install .``) carries the same tree as
package data in ``erase/_assets`` (``setup.py`` maps it), so the package finds them from any directory.
``ERASEKIT_ASSETS`` points at another copy; ``ERASEKIT_CANVAS_MINI`` / ``ERASEKIT_FACES_MINI`` at one world's.

Shipped models have names: ``--model canvas-mini`` is the canvas-mini pipeline, ``--model faces-mini`` the
faces-mini generator, wherever the package is installed (a folder of that name in the working directory wins).
"""

from __future__ import annotations

import os
from pathlib import Path

WORLD_ENV = {"canvas-mini": "ERASEKIT_CANVAS_MINI", "faces-mini": "ERASEKIT_FACES_MINI"}
# name -> (world, folder inside it)
NAMED_MODELS = {
    "canvas-mini": ("canvas-mini", "pipeline"),
    "canvas-mini-gold-Watercolor": ("canvas-mini", "gold-Watercolor/pipeline"),
    "faces-mini": ("faces-mini", "generator"),
}


def assets_root() -> Path:
    """The shipped assets tree: $ERASEKIT_ASSETS, else the installed package data, else the checkout's assets/."""
    if os.environ.get("ERASEKIT_ASSETS"):
        return Path(os.environ["ERASEKIT_ASSETS"])
    package = Path(__file__).resolve().parents[1]  # erase/
    installed = package / "_assets"
    return installed if installed.is_dir() else package.parent / "assets"


def world_dir(world: str) -> Path:
    """One mini world's shipped artefacts (``canvas-mini`` or ``faces-mini``)."""
    env = WORLD_ENV.get(world)
    return Path(os.environ[env]) if env and os.environ.get(env) else assets_root() / world


def preset_dir() -> Path:
    return assets_root() / "presets"


def templates_dir() -> Path:
    return assets_root() / "templates"


def resolve_model(model: str | os.PathLike) -> str | os.PathLike:
    """A shipped model's name -> its folder; anything else (a path, a hub id) is returned unchanged."""
    name = str(model)
    if name in NAMED_MODELS and not Path(name).exists():
        world, folder = NAMED_MODELS[name]
        return world_dir(world) / folder
    return model
