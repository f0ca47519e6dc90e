"""Procedural renderer for canvas-mini: styles x objects, deterministic by seed.

Each image is drawn at 2x the world's resolution and box-reduced, and each
object mask at 4x, so edges are soft. Periodic textures (hatching, halftone,
mosaic grout, crayon strokes) have a fixed phase and a period of 4 output
pixels: that keeps them aligned with a factor-4 latent grid, so a small VAE
can reproduce them instead of averaging them away.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .world import OBJECTS, RESOLUTION, STYLES, check_object, check_style

DRAW = 2 * RESOLUTION  # working canvas
MASK = 4 * RESOLUTION  # object mask canvas

# Vivid hues shared by several styles, so that hue alone never names a style.
POOL = np.array(
    [
        (0.90, 0.15, 0.15),  # red
        (0.98, 0.55, 0.10),  # orange
        (0.95, 0.85, 0.10),  # yellow
        (0.15, 0.75, 0.25),  # green
        (0.10, 0.75, 0.80),  # teal
        (0.15, 0.35, 0.95),  # blue
        (0.60, 0.20, 0.85),  # purple
        (0.95, 0.35, 0.70),  # pink
    ],
    dtype=np.float32,
)

# ---------------------------------------------------------------------------
# Objects: primitives in a canonical frame, x right, y down, within [-1, 1].


def _ellipse(cx, cy, rx, ry, angle=0.0, n=36):
    a = math.radians(angle)
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x, y = rx * math.cos(t), ry * math.sin(t)
        pts.append((cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)))
    return pts


def _rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _wave(x, y0, y1, amp, n=12):
    return [(x + amp * math.sin(3 * math.pi * k / n), y0 + (y1 - y0) * k / n) for k in range(n + 1)]


def _teardrop(n=24):
    """A flame: pointed wavy tip at the top, round base at the bottom."""
    right = []
    for k in range(n + 1):
        u = k / n
        if u < 0.68:
            w = 0.58 * (u / 0.68) ** 1.3 + 0.06 * math.sin(9 * u) * u
        else:
            w = 0.58 * math.sqrt(max(0.0, 1 - ((u - 0.68) / 0.32) ** 2))
        right.append((w, -0.98 + 1.96 * u))
    return right + [(-x, y) for x, y in reversed(right)]


# (kind, points, value[, width]); value 1 fills, 0 cuts a hole.
SHAPES = {
    "Birds": [
        ("poly", _ellipse(-0.05, 0.15, 0.55, 0.32), 1),
        ("poly", _ellipse(0.48, -0.25, 0.24, 0.24), 1),
        ("poly", [(0.66, -0.33), (0.98, -0.22), (0.66, -0.14)], 1),
        ("poly", [(-0.30, 0.05), (0.25, 0.05), (-0.45, -0.80)], 1),
        ("poly", [(-0.50, 0.10), (-0.98, -0.20), (-0.98, 0.35)], 1),
        ("line", [(-0.05, 0.40), (-0.05, 0.80)], 1, 0.08),
        ("line", [(0.15, 0.40), (0.15, 0.80)], 1, 0.08),
        ("poly", _ellipse(0.52, -0.30, 0.06, 0.06), 0),
    ],
    "Fishes": [
        ("poly", _ellipse(0.12, 0.0, 0.62, 0.40), 1),
        ("poly", [(-0.40, 0.0), (-0.98, -0.50), (-0.85, 0.0), (-0.98, 0.50)], 1),
        ("poly", [(-0.10, -0.30), (0.30, -0.30), (-0.20, -0.70)], 1),
        ("poly", _ellipse(0.45, -0.08, 0.09, 0.09), 0),
        ("line", [(0.22, -0.30), (0.22, 0.30)], 0, 0.05),
    ],
    "Trees": [
        ("poly", _rect(-0.14, 0.25, 0.14, 0.98), 1),
        ("poly", _ellipse(0.0, -0.35, 0.55, 0.55), 1),
        ("poly", _ellipse(-0.42, 0.02, 0.36, 0.32), 1),
        ("poly", _ellipse(0.42, 0.02, 0.36, 0.32), 1),
    ],
    "Flowers": [
        ("line", [(0.0, -0.2), (0.0, 0.98)], 1, 0.10),
        ("poly", _ellipse(0.25, 0.55, 0.26, 0.10, -30), 1),
        ("poly", _ellipse(-0.25, 0.70, 0.22, 0.09, 30), 1),
        *[
            (
                "poly",
                _ellipse(0.40 * math.cos(k * math.pi / 3), -0.38 + 0.40 * math.sin(k * math.pi / 3), 0.21, 0.21),
                1,
            )
            for k in range(6)
        ],
        ("poly", _ellipse(0.0, -0.38, 0.13, 0.13), 0),
    ],
    "Butterfly": [
        ("poly", _ellipse(-0.48, -0.30, 0.45, 0.36, -20), 1),
        ("poly", _ellipse(0.48, -0.30, 0.45, 0.36, 20), 1),
        ("poly", _ellipse(-0.38, 0.38, 0.30, 0.30), 1),
        ("poly", _ellipse(0.38, 0.38, 0.30, 0.30), 1),
        ("poly", _ellipse(0.0, 0.05, 0.09, 0.62), 1),
        ("line", [(0.0, -0.50), (-0.25, -0.92)], 1, 0.05),
        ("line", [(0.0, -0.50), (0.25, -0.92)], 1, 0.05),
    ],
    "Jellyfish": [
        ("poly", [(x, min(y, -0.05)) for x, y in _ellipse(0.0, -0.05, 0.72, 0.62)], 1),
        *[("line", _wave(x, -0.10, 0.95, 0.10), 1, 0.10) for x in (-0.48, -0.16, 0.16, 0.48)],
    ],
    "Towers": [
        ("poly", _rect(-0.30, -0.62, 0.30, 0.98), 1),
        ("poly", _rect(-0.42, 0.70, 0.42, 0.98), 1),
        ("poly", _rect(-0.42, -0.98, -0.22, -0.60), 1),
        ("poly", _rect(-0.10, -0.98, 0.10, -0.60), 1),
        ("poly", _rect(0.22, -0.98, 0.42, -0.60), 1),
        ("poly", _rect(-0.42, -0.72, 0.42, -0.58), 1),
        ("poly", _rect(-0.09, -0.38, 0.09, -0.12), 0),
        ("poly", _rect(-0.13, 0.55, 0.13, 0.98), 0),
    ],
    "Rabbits": [
        ("poly", _ellipse(0.0, 0.50, 0.52, 0.42), 1),
        ("poly", _ellipse(0.05, -0.12, 0.28, 0.27), 1),
        ("poly", _ellipse(-0.12, -0.66, 0.09, 0.34, -8), 1),
        ("poly", _ellipse(0.20, -0.66, 0.09, 0.34, 8), 1),
        ("poly", _ellipse(-0.55, 0.55, 0.13, 0.13), 1),
    ],
    "Cats": [
        ("poly", _ellipse(0.0, 0.42, 0.40, 0.50), 1),
        ("poly", _ellipse(0.0, -0.35, 0.33, 0.30), 1),
        ("poly", [(-0.32, -0.45), (-0.08, -0.60), (-0.32, -0.90)], 1),
        ("poly", [(0.32, -0.45), (0.08, -0.60), (0.32, -0.90)], 1),
        ("line", [(0.30, 0.85), (0.70, 0.70), (0.85, 0.35), (0.72, 0.05)], 1, 0.12),
    ],
    "Flame": [
        ("poly", _teardrop(), 1),
        ("poly", [(-0.30, 0.10), (-0.62, -0.35), (-0.15, -0.20)], 1),
        ("poly", [(0.30, 0.10), (0.62, -0.45), (0.15, -0.20)], 1),
        ("poly", _ellipse(0.0, 0.45, 0.16, 0.26), 0),
    ],
}
assert set(SHAPES) == set(OBJECTS)


def object_mask(obj: str, rng: np.random.Generator) -> np.ndarray:
    """Soft silhouette at DRAW x DRAW with a random pose: float32 in [0, 1]."""
    half = rng.uniform(0.36, 0.42) * MASK  # half-extent in mask pixels
    angle = math.radians(rng.uniform(-10, 10))
    cx = MASK / 2 + rng.uniform(-0.05, 0.05) * MASK
    cy = MASK / 2 + rng.uniform(-0.05, 0.05) * MASK
    flip = -1.0 if rng.random() < 0.5 else 1.0
    ca, sa = math.cos(angle), math.sin(angle)

    def tf(p):
        x, y = flip * p[0], p[1]
        return (cx + half * (x * ca - y * sa), cy + half * (x * sa + y * ca))

    img = Image.new("L", (MASK, MASK), 0)
    draw = ImageDraw.Draw(img)
    for prim in SHAPES[obj]:
        kind, pts, value = prim[0], [tf(p) for p in prim[1]], 255 * prim[2]
        if kind == "poly":
            draw.polygon(pts, fill=value)
        else:
            width = max(1, int(round(prim[3] * half)))
            draw.line(pts, fill=value, width=width, joint="curve")
            r = width / 2
            for x, y in (pts[0], pts[-1]):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=value)
    img = img.resize((DRAW, DRAW), Image.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------
# Texture helpers (all at DRAW resolution).

_yy, _xx = np.mgrid[0:DRAW, 0:DRAW].astype(np.float32)


def _blur(a: np.ndarray, radius: float) -> np.ndarray:
    img = Image.fromarray(np.clip(a * 255, 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0


def _morph(mask: np.ndarray, size: int, grow: bool) -> np.ndarray:
    img = Image.fromarray(np.clip(mask * 255, 0, 255).astype(np.uint8))
    f = ImageFilter.MaxFilter(size) if grow else ImageFilter.MinFilter(size)
    return np.asarray(img.filter(f), dtype=np.float32) / 255.0


def _outline(mask: np.ndarray, outer: int, inner: int = 1) -> np.ndarray:
    grown = _morph(mask, outer, True)
    shrunk = _morph(mask, inner, False) if inner > 1 else mask
    return np.clip(grown - shrunk, 0, 1)


def _noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1]."""
    small = rng.random((cells, cells)).astype(np.float32)
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((DRAW, DRAW), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _fractal(rng: np.random.Generator) -> np.ndarray:
    a = 0.5 * _noise(rng, 4) + 0.3 * _noise(rng, 8) + 0.2 * _noise(rng, 16)
    return (a - a.min()) / (a.max() - a.min() + 1e-6)


def _vgrad(top, bottom, horizon: float = 1.0) -> np.ndarray:
    t = np.clip(_yy / (DRAW * horizon), 0, 1)[..., None]
    return np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t


def _fill(color) -> np.ndarray:
    return np.broadcast_to(np.asarray(color, np.float32), (DRAW, DRAW, 3)).copy()


def _mix(base: np.ndarray, color, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return base * (1 - a) + np.asarray(color, np.float32) * a


def _paper(rng, color) -> np.ndarray:
    return _fill(color) + 0.04 * (_noise(rng, 16)[..., None] - 0.5)


def _two_hues(rng) -> tuple[np.ndarray, np.ndarray]:
    i, j = rng.choice(len(POOL), size=2, replace=False)
    return POOL[i], POOL[j]


def _dots(radius: float) -> np.ndarray:
    """Fixed-phase halftone dots, pitch 8 working pixels."""
    dx = (_xx % 8) - 3.5
    dy = (_yy % 8) - 3.5
    return (np.sqrt(dx * dx + dy * dy) < radius).astype(np.float32)


def _stripes(direction: int) -> np.ndarray:
    """Fixed-phase diagonal stripes, period 8 working pixels (4 output pixels)."""
    return (((_xx + direction * _yy) % 8) < 4).astype(np.float32)


def _speckles(rng, n, rmin, rmax, region=None) -> np.ndarray:
    img = Image.new("L", (DRAW, DRAW), 0)
    d = ImageDraw.Draw(img)
    for _ in range(n):
        x, y = rng.uniform(0, DRAW, 2)
        if region is not None and region[int(y), int(x)] > 0.5:
            continue
        r = rng.uniform(rmin, rmax)
        d.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(img, dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------
# Styles: (mask, rng, obj) -> image float32 (DRAW, DRAW, 3).

PHOTO_COLORS = {
    "Birds": (0.55, 0.35, 0.20),
    "Fishes": (0.95, 0.50, 0.15),
    "Trees": (0.20, 0.50, 0.18),
    "Flowers": (0.90, 0.30, 0.55),
    "Butterfly": (0.95, 0.65, 0.10),
    "Jellyfish": (0.85, 0.55, 0.85),
    "Towers": (0.55, 0.55, 0.58),
    "Rabbits": (0.78, 0.70, 0.60),
    "Cats": (0.35, 0.33, 0.32),
    "Flame": (1.00, 0.45, 0.05),
}


def photo(m, rng, obj):
    horizon = rng.uniform(0.62, 0.80)
    sky = _vgrad((0.30, 0.55, 0.92), (0.80, 0.88, 0.98), horizon)
    ground_color = [(0.30, 0.55, 0.22), (0.80, 0.72, 0.52), (0.45, 0.36, 0.26)][rng.integers(3)]
    ground = _fill(ground_color) * (0.85 + 0.3 * _noise(rng, 8)[..., None])
    img = np.where((_yy < horizon * DRAW)[..., None], sky, ground)
    shadow = np.roll(_blur(m, 2.5), (3, 3), axis=(0, 1))
    img = img * (1 - 0.35 * shadow[..., None])
    base = np.asarray(PHOTO_COLORS[obj], np.float32) * rng.uniform(0.85, 1.1)
    shade = (1.15 - 0.35 * (_xx + _yy) / (2 * DRAW))[..., None]
    body = base * shade * (0.92 + 0.16 * _noise(rng, 16)[..., None])
    return img * (1 - m[..., None]) + body * m[..., None]


def pencil_drawing(m, rng, obj):
    img = _paper(rng, (0.94, 0.93, 0.89))
    hatch = _stripes(+1)
    img = _mix(img, (0.45, 0.45, 0.46), m * (0.35 + 0.65 * hatch))
    lower = m * (_yy > DRAW * rng.uniform(0.45, 0.6))
    img = _mix(img, (0.40, 0.40, 0.42), lower * _stripes(-1) * 0.8)
    img = _mix(img, (0.22, 0.22, 0.24), _outline(m, 3) * 0.9)
    ground = ((_yy > DRAW * 0.9) * _stripes(+1)).astype(np.float32)
    return _mix(img, (0.60, 0.60, 0.62), ground * (1 - m) * 0.6)


def neon_lines(m, rng, obj):
    hue, _ = _two_hues(rng)
    img = _fill((0.03, 0.03, 0.09)) + 0.03 * _noise(rng, 8)[..., None]
    line = _outline(m, 5, 3)
    img = _mix(img, hue * 0.25, m * 0.8)
    glow = np.clip(_blur(line, 3) * 1.6, 0, 1)
    img = _mix(img, hue, glow)
    core = np.clip(0.4 + 0.6 * hue, 0, 1)
    return _mix(img, core, line)


def mosaic(m, rng, obj):
    fg, bg = _two_hues(rng)
    bg = bg * 0.45
    tiles = rng.uniform(0.85, 1.1, (DRAW // 8, DRAW // 8, 1)).astype(np.float32)
    tiles = np.kron(tiles, np.ones((8, 8, 1), np.float32))
    img = (_fill(bg) * (1 - m[..., None]) + _fill(fg) * m[..., None]) * tiles
    grout = (((_xx % 8) < 1) | ((_yy % 8) < 1)).astype(np.float32)
    return _mix(img, (0.88, 0.86, 0.80), grout * 0.7)


def watercolor(m, rng, obj):
    hue, hue2 = _two_hues(rng)
    img = _paper(rng, (0.97, 0.96, 0.93))
    wash = _blur(_speckles(rng, 3, 8, 16), 6)
    img = _mix(img, 0.5 + 0.5 * hue2, np.clip(wash * 1.5, 0, 0.35))
    soft = np.clip(_blur(m, 2.0) + 0.25 * (_noise(rng, 8) - 0.5), 0, 1)
    density = 0.65 + 0.3 * _noise(rng, 6)
    img = _mix(img, 0.25 + 0.75 * hue, soft * density)
    rim = _outline((soft > 0.5).astype(np.float32), 3, 3)
    return _mix(img, hue * 0.7, _blur(rim, 1.0) * 0.6)


def pop_art(m, rng, obj):
    fg, bg = _two_hues(rng)
    img = _fill(bg)
    img = _mix(img, bg * 0.45, _dots(2.2) * (1 - m))
    img = _mix(img, fg, m)
    img = _mix(img, 0.6 + 0.4 * fg, _dots(2.2) * m)
    return _mix(img, (0.02, 0.02, 0.02), _outline(m, 5))


def ink_art(m, rng, obj):
    img = _paper(rng, (0.95, 0.94, 0.90))
    rough = (_blur(m, 1.0) + 0.25 * (_noise(rng, 24) - 0.5) > 0.5).astype(np.float32)
    splat = _speckles(rng, int(rng.integers(10, 20)), 0.8, 2.2, region=_morph(m, 7, True))
    stroke = ((_yy > DRAW * 0.9) & (_yy < DRAW * 0.96)).astype(np.float32) * (_noise(rng, 6) > 0.35)
    ink = np.clip(rough + splat + stroke, 0, 1)
    return _mix(img, (0.04, 0.04, 0.05), ink)


def rust(m, rng, obj):
    f = _fractal(rng)[..., None]
    img = np.asarray((0.50, 0.22, 0.08), np.float32) * (1 - f) + np.asarray((0.85, 0.48, 0.18), np.float32) * f
    pits = (_noise(rng, 16) > 0.78).astype(np.float32)
    img = _mix(img, (0.22, 0.10, 0.05), pits * 0.7)
    body = np.asarray((0.28, 0.13, 0.06), np.float32) * (0.8 + 0.4 * _fractal(rng)[..., None])
    return img * (1 - m[..., None]) + body * m[..., None]


def winter(m, rng, obj):
    img = _vgrad((0.62, 0.76, 0.92), (0.95, 0.97, 1.0), 0.85)
    snow_line = DRAW * rng.uniform(0.80, 0.88) + 2 * np.sin(_xx / 6)
    img = _mix(img, (0.99, 0.99, 1.0), (_yy > snow_line).astype(np.float32))
    img = _mix(img, (0.84, 0.91, 1.0), m)
    img = _mix(img, (0.18, 0.32, 0.68), _outline(m, 5))
    flakes = _speckles(rng, int(rng.integers(30, 50)), 0.7, 1.4)
    return _mix(img, (1.0, 1.0, 1.0), flakes)


def glowing_sunset(m, rng, obj):
    horizon = rng.uniform(0.72, 0.85)
    img = _vgrad((0.30, 0.12, 0.42), (1.0, 0.55, 0.18), horizon)
    sx = rng.uniform(0.2, 0.8) * DRAW
    sun = np.exp(-((_xx - sx) ** 2 + (_yy - horizon * DRAW) ** 2) / (2 * 7.0**2))
    img = _mix(img, (1.0, 0.9, 0.45), np.clip(sun * 1.3, 0, 1))
    img = _mix(img, (0.15, 0.06, 0.12), (_yy > horizon * DRAW).astype(np.float32))
    rim = np.clip(_blur(_outline(m, 5), 2) * 1.5, 0, 1)
    img = _mix(img, (1.0, 0.55, 0.15), rim)
    return _mix(img, (0.10, 0.04, 0.12), m)


def crayon(m, rng, obj):
    hue, hue2 = _two_hues(rng)
    img = _paper(rng, (0.96, 0.93, 0.82))
    waxy = (rng.random((DRAW, DRAW)) > 0.15).astype(np.float32)
    img = _mix(img, hue, m * (0.3 + 0.7 * _stripes(-1)) * waxy)
    broken = _outline(m, 3) * (_noise(rng, 20) > 0.3)
    img = _mix(img, hue2 * 0.6, broken)
    ground = (np.abs(_yy - DRAW * 0.93 - 1.5 * np.sin(_xx / 4)) < 1.5).astype(np.float32)
    return _mix(img, hue2, ground * (1 - m))


STYLE_FUNCTIONS = {
    "Pencil_Drawing": pencil_drawing,
    "Neon_Lines": neon_lines,
    "Mosaic": mosaic,
    "Watercolor": watercolor,
    "Pop_Art": pop_art,
    "Ink_Art": ink_art,
    "Rust": rust,
    "Winter": winter,
    "Glowing_Sunset": glowing_sunset,
    "Crayon": crayon,
    "Photo": photo,
}
assert list(STYLE_FUNCTIONS) == STYLES


def render_array(style: str, obj: str, seed: int) -> np.ndarray:
    """One render as uint8 (RESOLUTION, RESOLUTION, 3)."""
    return render_with_mask(style, obj, seed)[0]


def render_with_mask(style: str, obj: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One render as uint8 (RESOLUTION, RESOLUTION, 3) and the object's silhouette it was drawn from, reduced the
    same way: float32 (RESOLUTION, RESOLUTION) in [0, 1]."""
    si, oi = check_style(style), check_object(obj)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng([int(seed), si, oi, 20261128])
    m = object_mask(obj, rng)
    img = STYLE_FUNCTIONS[style](m.copy(), rng, obj)
    img = np.clip(img, 0, 1)
    # 2x box reduction to the world's resolution.
    img = img.reshape(RESOLUTION, 2, RESOLUTION, 2, 3).mean(axis=(1, 3))
    return np.round(img * 255).astype(np.uint8), m.reshape(RESOLUTION, 2, RESOLUTION, 2).mean(axis=(1, 3))


def render(style: str, obj: str, seed: int) -> Image.Image:
    """Render ``obj`` in ``style`` as a PIL RGB image; the same seed gives the same image."""
    return Image.fromarray(render_array(style, obj, seed), "RGB")


def render_batch(pairs, seeds) -> np.ndarray:
    """Render many (style, object) pairs with matching seeds: uint8 (N, H, W, 3)."""
    return np.stack([render_array(s, o, seed) for (s, o), seed in zip(pairs, seeds)])
