"""canvas-mini: a miniature UnlearnCanvas that ships with erasekit.

Public API: STYLES, OBJECTS, render(style, obj, seed), load_classifier(kind),
load_clip(), PIPELINE_DIR. Rebuild the artefacts with
``python -m worlds.canvas_mini.train``; re-measure them with
``python -m worlds.canvas_mini.check``.
"""

from .assets import ASSETS_DIR, CLASSIFIER_DIR, CLIP_DIR, PIPELINE_DIR, AssetError, load_classifier, load_clip
from .render import render, render_array
from .world import OBJECTS, PROMPT_TEMPLATE, RESOLUTION, STYLES, caption

__all__ = [
    "STYLES",
    "OBJECTS",
    "RESOLUTION",
    "PROMPT_TEMPLATE",
    "caption",
    "render",
    "render_array",
    "load_classifier",
    "load_clip",
    "PIPELINE_DIR",
    "ASSETS_DIR",
    "CLASSIFIER_DIR",
    "CLIP_DIR",
    "AssetError",
]
