"""Palette drift: the share of pixels whose colour is far from every colour the faces-mini renderer draws.

A generator fine-tuned through a CLIP can satisfy its loss by recolouring (magenta lenses, green mouths): colours
the world never has, which an attribute judge may or may not notice. This figure makes the recolouring a number.

The palette is measured, not declared: every colour that ``PALETTE_RENDERS`` renders contain (anti-aliased edges
included), quantised to ``LEVELS`` levels per channel and grown by ``TOLERANCE`` levels in every channel (an L-inf
ball), so that a pixel counts as drift only when no rendered colour lies within about ``TOLERANCE * 256 / LEVELS``
of it in any channel. Renders of other seeds drift by 0 (tests/test_text_to_unlearn_design.py); the shipped
generator's own samples drift by a little (GAN noise), which is why the bar compares an erased generator with the
original.

The local palette asks the same of every ``TILE`` x ``TILE`` pixel tile: the colours rendered *there*. A colour the
world draws somewhere else (a lavender background) is drift when it fills a mouth: on the sharpened generator the
eyeglasses preset's lavender lips left the global figure at 1.3x the original's and the local one at 2.5x.
Renders of other seeds drift locally by about 0.001%.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .render import render_set
from .world import SEED_BASE

LEVELS = 32  # quantisation of each channel (cells of 8 / 255)
TOLERANCE = 2  # cells a colour may stray, in every channel, from the nearest rendered colour (about 0.06 of the range)
PALETTE_RENDERS = 4000
TILE = 4  # the local palette's tiles (pixels a side): 8 x 8 tiles of a 32-pixel face


@lru_cache(maxsize=1)
def _rendered_cells(n: int) -> torch.Tensor:
    """Palette cell of every pixel of ``n`` renders of the palette seed range: (n, H, W)."""
    images, _ = render_set(n, SEED_BASE["palette"])
    return _cells(images.float() / 255)


def _grown(occupied: torch.Tensor, tolerance: int) -> torch.Tensor:
    """(K, LEVELS**3) occupied cells -> (K, LEVELS**3) booleans: the cells within ``tolerance`` of one."""
    k = len(occupied)
    grown = torch.nn.functional.max_pool3d(
        occupied.view(k, 1, LEVELS, LEVELS, LEVELS), 2 * tolerance + 1, stride=1, padding=tolerance
    )
    return grown.view(k, LEVELS**3).bool()


@lru_cache(maxsize=2)
def world_palette(n: int = PALETTE_RENDERS, tolerance: int = TOLERANCE) -> torch.Tensor:
    """(LEVELS, LEVELS, LEVELS) booleans: the colour cells within ``tolerance`` cells of a colour that ``n`` renders
    (the palette seed range) contain."""
    occupied = torch.zeros(1, LEVELS**3)
    occupied[0, _rendered_cells(n).unique()] = 1.0
    return _grown(occupied, tolerance).view(LEVELS, LEVELS, LEVELS)


@lru_cache(maxsize=2)
def local_palette(n: int = PALETTE_RENDERS, tolerance: int = TOLERANCE, tile: int = TILE) -> torch.Tensor:
    """(tiles, LEVELS**3) booleans, tiles in row-major order: per ``tile`` x ``tile`` pixel tile, the colour cells
    within ``tolerance`` cells of a colour that ``n`` renders contain in that tile."""
    cells = _rendered_cells(n)
    occupied = torch.zeros((cells.shape[-1] // tile) ** 2, LEVELS**3)
    occupied[_tile_of(cells, tile), cells] = 1.0
    return _grown(occupied, tolerance)


def _tile_of(cells: torch.Tensor, tile: int) -> torch.Tensor:
    """The row-major index of the ``tile`` x ``tile`` tile of every pixel of square images' cells (N, H, W)."""
    row = torch.arange(cells.shape[-1]) // tile
    return (row[:, None] * (cells.shape[-1] // tile) + row[None, :]).expand_as(cells)


def _cells(x: torch.Tensor) -> torch.Tensor:
    """Flat palette-cell index of every pixel of float images (N, 3, H, W) in [0, 1]."""
    q = (x.clamp(0, 1) * (LEVELS - 1e-6)).long()
    return (q[:, 0] * LEVELS + q[:, 1]) * LEVELS + q[:, 2]


@torch.no_grad()
def off_palette(x: torch.Tensor, palette: torch.Tensor | None = None) -> torch.Tensor:
    """Booleans (N, H, W): which pixels of float images in [0, 1] are far from every rendered colour."""
    palette = world_palette() if palette is None else palette
    return ~palette.flatten()[_cells(x.float().cpu())]


@torch.no_grad()
def off_local_palette(x: torch.Tensor, palette: torch.Tensor | None = None, tile: int = TILE) -> torch.Tensor:
    """Booleans (N, H, W): which pixels of float images in [0, 1] are far from every colour rendered in their tile."""
    palette = local_palette(tile=tile) if palette is None else palette
    cells = _cells(x.float().cpu())
    per_side = math.isqrt(len(palette))
    if cells.shape[-2:] != (per_side * tile,) * 2:
        raise ValueError(
            f"the local palette is of {per_side * tile}-pixel faces, and the images are {tuple(cells.shape[-2:])}"
        )
    return ~palette[_tile_of(cells, tile), cells]


def palette_drift(x: torch.Tensor, palette: torch.Tensor | None = None) -> float:
    """The share of pixels of images ``x`` (N, 3, H, W, in [0, 1]) whose colour the world never renders."""
    return float(off_palette(x, palette).float().mean())


def local_palette_drift(x: torch.Tensor, palette: torch.Tensor | None = None) -> float:
    """The share of pixels of images ``x`` whose colour the world never renders in their tile."""
    return float(off_local_palette(x, palette).float().mean())
