"""Procedural renderer for faces-mini: a FaceSpec drawn as a flat cartoon face.

Faces are drawn with PIL at 4x the output size and box-reduced, so edges are
soft but every part keeps its full contrast. Each attribute is drawn to be
bold at 32 px, because a small GAN reproduces what it can see: a feasibility
pilot's thin glasses came back from the generator as unsure dark rings. So
glasses have thick black frames around a tinted lens area, hats are large
and saturated, a smile is an open mouth with white teeth, and a beard is a
large dark area that also widens the jaw's silhouette. Backgrounds are plain
and few, and the pose jitter is small.

Lenses come in five tints (blue, green, amber, grey, nearly clear), drawn
uniformly and independently of everything else. With one tint, every judge
trained on these renders learned "a blue patch at the eyes" instead of "black
frames": swapping the lens colour to red on 300 glasses renders made the
attribute classifier call 7% of them glasses and the CLIPs 23-24%, and a
fine-tune asked to remove glasses recoloured the lenses instead. The frame is
the only thing every tint shares, so judges trained on this world look at it.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from .world import (
    BACKGROUNDS,
    HAIR_COLOURS,
    HAT_COLOURS,
    HEADS,
    LENS_TINTS,
    RESOLUTION,
    SKIN_TONES,
    FaceSpec,
    labels,
    sample_spec,
)

SUPERSAMPLE = 4

# Skin tones are far apart in brightness; the darkest stays well above the
# near-black of beards and frames, so those show on every skin.
SKIN_RGB = [(255, 222, 196), (205, 148, 98), (135, 88, 60)]  # light, medium, dark
HAIR_RGB = [(28, 22, 20), (110, 58, 20), (240, 205, 95), (215, 80, 25)]  # black, brown, blond, red
BACKGROUND_RGB = [(196, 220, 245), (204, 236, 204), (246, 234, 196), (222, 210, 242)]
HAT_RGB = [(40, 80, 225), (25, 150, 60), (140, 40, 185)]
SHIRT_RGB = (92, 100, 122)
FRAME_RGB = (12, 12, 16)
# blue, green, amber, grey, nearly clear: one per FaceSpec.lens_tint
LENS_RGBA = [(70, 150, 255, 150), (60, 200, 90, 150), (240, 170, 40, 150), (100, 100, 110, 170), (225, 240, 255, 70)]
EYE_WHITE_RGB = (250, 250, 250)
PUPIL_RGB = (20, 20, 30)
MOUTH_RGB = (125, 15, 30)
LIPS_RGB = (140, 45, 45)
BEARD_RGB_BASE = (32, 22, 16)  # a beard is this near-black with a hint of its hair colour: dark on every skin
BEARD_HAIR_SHARE = 0.15
assert (len(SKIN_RGB), len(HAIR_RGB), len(BACKGROUND_RGB), len(HAT_RGB), len(LENS_RGBA)) == (
    len(SKIN_TONES),
    len(HAIR_COLOURS),
    BACKGROUNDS,
    HAT_COLOURS,
    LENS_TINTS,
)


def _shade(rgb, factor: float) -> tuple[int, int, int]:
    return tuple(int(round(c * factor)) for c in rgb)


def _beard_rgb(hair) -> tuple[int, int, int]:
    return tuple(int(round(BEARD_HAIR_SHARE * c + (1 - BEARD_HAIR_SHARE) * d)) for c, d in zip(hair, BEARD_RGB_BASE))


class _Canvas:
    """Draws in face units (pixels of a 32 px image, origin at the image centre) at SUPERSAMPLE x `size`."""

    def __init__(self, spec: FaceSpec, size: int):
        self.image = Image.new("RGB", (SUPERSAMPLE * size,) * 2, BACKGROUND_RGB[spec.background])
        self.draw = ImageDraw.Draw(self.image)
        self.blend = ImageDraw.Draw(self.image, "RGBA")
        pixel = SUPERSAMPLE * size / RESOLUTION  # canvas pixels per pixel of a 32 px image
        self.unit = pixel * spec.scale
        self.origin = (SUPERSAMPLE * size / 2 + pixel * spec.shift_x, SUPERSAMPLE * size / 2 + pixel * spec.shift_y)

    def point(self, x: float, y: float) -> tuple[float, float]:
        return self.origin[0] + self.unit * x, self.origin[1] + self.unit * y

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (*self.point(x0, y0), *self.point(x1, y1))

    def width(self, w: float) -> int:
        return max(1, int(round(self.unit * w)))

    def polygon(self, points, fill, outline=None, width: float = 0.0):
        pts = [self.point(x, y) for x, y in points]
        self.draw.polygon(pts, fill=fill, outline=outline, width=self.width(width) if outline else 1)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill):
        self.draw.ellipse(self.box(cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)

    def line(self, points, fill, width: float):
        self.draw.line([self.point(x, y) for x, y in points], fill=fill, width=self.width(width), joint="curve")


class _Face:
    """The landmarks of one face, in face units."""

    def __init__(self, spec: FaceSpec):
        g = spec.geometry
        self.g = g
        self.cy = -1.0  # head centre
        self.top = self.cy - g.face_height
        self.chin = self.cy + g.face_height
        self.eye_y = self.cy - 0.08 * g.face_height
        self.nose_bottom = self.eye_y + g.nose_length
        self.mouth_y = self.nose_bottom + 0.25 * (self.chin - self.nose_bottom)
        self.mouth_half = 0.5 * g.face_width + 0.4
        self.brim_y = self.cy - 0.45 * g.face_height

    def outline(self, grow_x: float = 0.0, grow_y: float = 0.0, start: float = 0.0, end: float = 360.0, n: int = 48):
        """Head outline from angle `start` to `end` (degrees, y down): an ellipse on top, a superellipse below."""
        a, b = self.g.face_width + grow_x, self.g.face_height + grow_y
        pts = []
        for k in range(n + 1):
            t = math.radians(start + (end - start) * k / n)
            c, s = math.cos(t), math.sin(t)
            if s > 0:  # lower half: the jaw exponent squares or sharpens the chin
                p = 2.0 / self.g.jaw
                c, s = math.copysign(abs(c) ** p, c), s**p
            pts.append((a * c, self.cy + b * s))
        return pts


def _draw_shoulders(cv: _Canvas):
    cv.ellipse(0.0, 18.5, 14.0, 7.0, SHIRT_RGB)


def _draw_neck(cv: _Canvas, face: _Face, skin):
    neck = 0.42 * face.g.face_width
    cv.polygon([(-neck, face.cy), (neck, face.cy), (neck, 13.0), (-neck, 13.0)], _shade(skin, 0.85))


def _draw_hair_back(cv: _Canvas, face: _Face, hair, long_hair: bool):
    """Hair behind the head: a thick rim down to the ears (its colour shows beside a hat), and a curtain if long."""
    a = face.g.face_width
    if long_hair:  # a wide curtain over the shoulders on both sides of the face
        cv.draw.rounded_rectangle(cv.box(-a - 1.8, face.top + 1.0, a + 1.8, 13.5), radius=cv.unit * 2.5, fill=hair)
    cv.polygon(face.outline(grow_x=1.4, grow_y=0.9, start=165, end=375), hair)


def _draw_head(cv: _Canvas, face: _Face, skin):
    a = face.g.face_width
    for side in (-1, 1):
        cv.ellipse(side * a, face.eye_y + 0.8, 1.1, 1.7, skin)
    cv.polygon(face.outline(), skin, outline=_shade(skin, 0.72), width=0.35)


def _draw_hair_front(cv: _Canvas, face: _Face, hair):
    """The hair cap over the forehead, with sideburns down to eye level so the colour shows under a hat."""
    a, b = face.g.face_width, face.g.face_height
    cap = face.outline(grow_x=0.6, grow_y=0.6, start=190, end=350)
    side_y = face.eye_y - 0.6
    fringe = [
        (a + 0.6, side_y),
        (a - 1.1, side_y),
        (0.55 * a, face.cy - 0.48 * b),
        (0.1 * a, face.cy - 0.62 * b),
        (-0.45 * a, face.cy - 0.5 * b),
        (-a + 1.1, side_y),
        (-a - 0.6, side_y),
    ]
    cv.polygon(cap + fringe, hair)


def _draw_eyes(cv: _Canvas, face: _Face):
    size = face.g.eye_size
    for side in (-1, 1):
        x = side * face.g.eye_spacing
        cv.ellipse(x, face.eye_y, size, 0.75 * size, EYE_WHITE_RGB)
        cv.ellipse(x, face.eye_y, 0.55 * size, 0.55 * size, PUPIL_RGB)


def _draw_nose(cv: _Canvas, face: _Face, skin):
    cv.polygon([(0.0, face.eye_y + 0.4), (0.85, face.nose_bottom), (-0.85, face.nose_bottom)], _shade(skin, 0.75))


def _draw_beard(cv: _Canvas, face: _Face, hair):
    """Cheeks, jaw and chin, reaching past the chin so it changes the silhouette too."""
    a = face.g.face_width
    jaw = face.outline(grow_x=0.5, grow_y=1.4, start=-8, end=188)
    moustache = [
        (-a + 0.6, face.eye_y + 1.2),
        (-0.45 * a, face.nose_bottom + 0.2),
        (0.0, face.nose_bottom - 0.1),
        (0.45 * a, face.nose_bottom + 0.2),
        (a - 0.6, face.eye_y + 1.2),
    ]
    cv.polygon(jaw + moustache, _beard_rgb(hair))


def _draw_mouth(cv: _Canvas, face: _Face, smile: bool):
    half, y = face.mouth_half, face.mouth_y
    if smile:  # an open dark half-disc with a row of teeth along its top: dark on light skin, bright on dark skin
        depth, teeth, rim = 3.1, 1.1, 0.45
        cv.draw.chord(cv.box(-half, y - depth, half, y + depth), 0, 180, fill=MOUTH_RGB)
        inner, inner_depth = half - rim, depth - rim
        bottom = math.asin(teeth / inner_depth)
        arc = [(inner * math.cos(bottom * k / 6), y + 0.2 + inner_depth * math.sin(bottom * k / 6)) for k in range(7)]
        cv.polygon(arc + [(-x, yy) for x, yy in reversed(arc)], EYE_WHITE_RGB)
    else:
        cv.line([(-0.75 * half, y + 0.6), (0.75 * half, y + 0.6)], LIPS_RGB, 0.7)


def _draw_glasses(cv: _Canvas, face: _Face, lens_rgba):
    """Thick black frames around lenses of colour `lens_rgba`, joined by a bridge and temples to the face's edge."""
    g = face.g
    half_w = min(g.eye_size + 1.25, g.eye_spacing - 0.45)  # lenses never touch, even on close-set eyes
    half_h = 0.8 * half_w
    frame = cv.width(0.9)
    for side in (-1, 1):
        x = side * g.eye_spacing
        box = cv.box(x - half_w, face.eye_y - half_h, x + half_w, face.eye_y + half_h)
        cv.blend.rounded_rectangle(box, radius=cv.unit * 0.7, fill=lens_rgba)
        cv.draw.rounded_rectangle(box, radius=cv.unit * 0.7, outline=FRAME_RGB, width=frame)
        cv.line(
            [(side * (g.eye_spacing + half_w), face.eye_y - 0.3), (side * (g.face_width + 0.4), face.eye_y - 0.6)],
            FRAME_RGB,
            0.8,
        )
    inner = g.eye_spacing - half_w
    cv.line([(-inner - 0.2, face.eye_y - 0.3), (inner + 0.2, face.eye_y - 0.3)], FRAME_RGB, 0.8)


def _draw_hat(cv: _Canvas, face: _Face, colour):
    """A tall crown with a dark band over a wide brim, covering the upper forehead."""
    a, y = face.g.face_width, face.brim_y
    crown = 0.95 * a
    cv.draw.rounded_rectangle(cv.box(-crown, y - 8.0, crown, y), radius=cv.unit * 1.5, fill=colour)
    cv.polygon([(-crown, y - 2.4), (crown, y - 2.4), (crown, y - 0.6), (-crown, y - 0.6)], _shade(colour, 0.45))
    cv.ellipse(0.0, y, a + 3.0, 1.4, colour)


def render_image(spec: FaceSpec, size: int = RESOLUTION) -> Image.Image:
    """`spec` as a PIL RGB image of `size` x `size`."""
    cv, face = _Canvas(spec, size), _Face(spec)
    skin, hair = SKIN_RGB[spec.skin], HAIR_RGB[spec.hair_colour]
    _draw_shoulders(cv)
    _draw_hair_back(cv, face, hair, spec.long_hair)
    _draw_neck(cv, face, skin)
    _draw_head(cv, face, skin)
    _draw_hair_front(cv, face, hair)
    _draw_eyes(cv, face)
    _draw_nose(cv, face, skin)
    if spec.beard:
        _draw_beard(cv, face, hair)
    _draw_mouth(cv, face, spec.smile)
    if spec.eyeglasses:
        _draw_glasses(cv, face, LENS_RGBA[spec.lens_tint])
    if spec.hat:
        _draw_hat(cv, face, HAT_RGB[spec.hat_colour])
    return cv.image.reduce(SUPERSAMPLE)


def render_array(spec: FaceSpec, size: int = RESOLUTION) -> np.ndarray:
    """`spec` as a writable uint8 array (size, size, 3)."""
    return np.array(render_image(spec, size))


def render_set(n: int, first_seed: int, progress: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Faces of seeds first_seed .. first_seed + n - 1: uint8 images (N, 3, H, W) and int64 labels per head."""
    from tqdm.auto import tqdm

    specs = [sample_spec(seed) for seed in range(first_seed, first_seed + n)]
    arrays = [render_array(spec) for spec in tqdm(specs, desc="render faces", disable=not progress, mininterval=2)]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    per_spec = [labels(spec) for spec in specs]
    return images, {head: torch.tensor([lab[head] for lab in per_spec], dtype=torch.int64) for head in HEADS}


def render_spec_grid(specs, size: int = RESOLUTION, columns: int = 8, zoom: int = 1) -> Image.Image:
    """Renders of `specs` in rows of `columns`, each enlarged `zoom` times (nearest), for READMEs and eyeballing."""
    rows = math.ceil(len(specs) / columns)
    tile = size * zoom
    grid = Image.new("RGB", (columns * tile, rows * tile), (255, 255, 255))
    for k, spec in enumerate(specs):
        img = render_image(spec, size).resize((tile, tile), Image.NEAREST)
        grid.paste(img, ((k % columns) * tile, (k // columns) * tile))
    return grid


def world_digest(n: int = 64) -> str:
    """A short digest of what the world draws (the renders of seeds 0 .. n - 1 and their labels): caches of renders
    carry it in their names, so a change to the world or the renderer never reuses stale renders."""
    images, labels_ = render_set(n, 0)
    h = hashlib.sha256(images.numpy().tobytes())
    for head in sorted(labels_):
        h.update(labels_[head].numpy().tobytes())
    return h.hexdigest()[:12]
