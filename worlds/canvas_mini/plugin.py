"""canvas-mini as evaluation sees it (``eval.worlds``): its protocol, judges, shipped
pipeline, tiny CLIP and renders."""

from __future__ import annotations

import importlib

import numpy as np

from eval.classifiers import ClassifierError, require_axes
from eval.protocols import Protocol, style_object_axes
from eval.worlds import World

from .assets import CLIP_DIR, PIPELINE_DIR, load_classifier, load_clip
from .data import SEED_BASE
from .world import OBJECTS, PROMPT_TEMPLATE, RESOLUTION, STYLES

renderer = importlib.import_module(".render", __package__)  # the module (the package exports a function named render)
REFERENCE_SEEDS = "fid"  # the renderer's seed range reserved for FID references


def protocol() -> Protocol:
    return Protocol(
        name="canvas-mini",
        axes=style_object_axes(STYLES, OBJECTS, "Photo"),
        template=PROMPT_TEMPLATE,
        seeds=[0, 1, 2, 3, 4],
        steps=50,
        guidance=7.5,
        resolution=RESOLUTION,
        classifiers="canvas-mini",
    )


def judges(protocol: Protocol, device="cpu") -> dict:
    """The shipped style and object classifiers, for a protocol whose styles and objects they know."""
    require_axes(protocol, ("style", "object"))
    out = {k: load_classifier(k, device=device).for_inference() for k in ("style", "object")}
    for kind in ("style", "object"):
        if out[kind].config.classes != protocol.concepts(kind):
            raise ClassifierError(
                f"protocol {protocol.name!r} lists {kind}s that the canvas-mini classifiers do not know"
            )
    return out


def clip(device="cpu"):
    model, tokenizer = load_clip(device=device)
    return model, tokenizer, f"canvas-mini tiny open_clip ({CLIP_DIR.name})"


def real_image(concepts: dict[str, str], k: int) -> np.ndarray:
    """The k-th fresh render of a (style, object) pair, from the seed range no trainer used."""
    return renderer.render_array(concepts["style"], concepts["object"], SEED_BASE[REFERENCE_SEEDS] + k)


WORLD = World(
    name="canvas-mini",
    protocol=protocol,
    judges=judges,
    model=lambda: PIPELINE_DIR,
    clip=clip,
    real_image=real_image,
    real_images={"world": "canvas-mini renders", "seed_range": REFERENCE_SEEDS},
    judge_distance=True,
)
