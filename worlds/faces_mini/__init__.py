"""faces-mini: procedural cartoon faces for attribute and identity erasure in a tiny GAN.

Public API: the world's factors and labels (BINARY, HAIR_COLOURS, SKIN_TONES,
IDENTITIES, HEADS, FaceSpec, sample_spec, labels, geometry_vector), its
erasable concepts (CONCEPTS, concept_rate_label), captions for tiny-CLIP
training (caption, hard_negative_captions), the per-trainer seed ranges (SEED_BASE) and the renderer
(render_image, render_array, render_set, render_spec_grid).
"""

from .render import render_array, render_image, render_set, render_spec_grid
from .world import (
    BINARY,
    CONCEPTS,
    HAIR_COLOURS,
    HEADS,
    IDENTITIES,
    IDENTITY_NAMES,
    RESOLUTION,
    SEED_BASE,
    SKIN_TONES,
    FaceSpec,
    Geometry,
    Identity,
    caption,
    concept_rate_label,
    geometry_vector,
    hard_negative_captions,
    labels,
    sample_spec,
)

__all__ = [
    "BINARY",
    "CONCEPTS",
    "HAIR_COLOURS",
    "HEADS",
    "IDENTITIES",
    "IDENTITY_NAMES",
    "RESOLUTION",
    "SEED_BASE",
    "SKIN_TONES",
    "FaceSpec",
    "Geometry",
    "Identity",
    "caption",
    "hard_negative_captions",
    "concept_rate_label",
    "geometry_vector",
    "labels",
    "sample_spec",
    "render_array",
    "render_image",
    "render_set",
    "render_spec_grid",
]
