"""Palette drift: the share of pixels whose colour is far from every colour the faces-mini renderer draws.

A generator fine-tuned through a CLIP can satisfy its loss by recolouring (magenta lenses, green mouths): colours
the world never has, which an attribute judge may or may not notice. This figure makes the recolouring a number.

The palette is measured, not declared: every colour that ``PALETTE_RENDERS`` renders contain (anti-aliased edges
included), quantised to ``LEVELS`` levels per channel and grown by ``TOLERANCE`` levels in every channel (an L-inf
ball), so that a pixel counts as drift only when no rendered colour lies within about ``TOLERANCE * 256 / LEVELS``
of it in any channel. Renders of other seeds drift by 0 (tests/test_faces_palette.py); the shipped generator's own
samples drift by a little (GAN noise), which is why the bar compares an erased generator with the original.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .render import render_set
from .world import SEED_BASE

LEVELS = 32  # quantisation of each channel (cells of 8 / 255)
TOLERANCE = 2  # cells a colour may stray, in every channel, from the nearest rendered colour (about 0.06 of the range)
PALETTE_RENDERS = 4000


@lru_cache(maxsize=2)
def world_palette(n: int = PALETTE_RENDERS, tolerance: int = TOLERANCE) -> torch.Tensor:
    """(LEVELS, LEVELS, LEVELS) booleans: the colour cells within ``tolerance`` cells of a colour that ``n`` renders
    (the palette seed range) contain."""
    images, _ = render_set(n, SEED_BASE["palette"])
    occupied = torch.zeros(LEVELS**3)
    occupied[_cells(images.float() / 255).unique()] = 1.0
    grown = torch.nn.functional.max_pool3d(
        occupied.view(1, 1, LEVELS, LEVELS, LEVELS), 2 * tolerance + 1, stride=1, padding=tolerance
    )
    return grown.view(LEVELS, LEVELS, LEVELS).bool()


def _cells(x: torch.Tensor) -> torch.Tensor:
    """Flat palette-cell index of every pixel of float images (N, 3, H, W) in [0, 1]."""
    q = (x.clamp(0, 1) * (LEVELS - 1e-6)).long()
    return (q[:, 0] * LEVELS + q[:, 1]) * LEVELS + q[:, 2]


@torch.no_grad()
def off_palette(x: torch.Tensor, palette: torch.Tensor | None = None) -> torch.Tensor:
    """Booleans (N, H, W): which pixels of float images in [0, 1] are far from every rendered colour."""
    palette = world_palette() if palette is None else palette
    return ~palette.flatten()[_cells(x.float().cpu())]


def palette_drift(x: torch.Tensor, palette: torch.Tensor | None = None) -> float:
    """The share of pixels of images ``x`` (N, 3, H, W, in [0, 1]) whose colour the world never renders."""
    return float(off_palette(x, palette).float().mean())
