"""Labelled PNG grids: rows x columns of images, and original-vs-erased side by side."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font():
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def image_grid(
    cells: list[list[np.ndarray]],
    row_labels: list[str] | None = None,
    col_labels: list[str] | None = None,
    *,
    scale: int = 2,
    pad: int = 2,
    title: str | None = None,
) -> Image.Image:
    """Lay out uint8 HxWx3 images in rows; labels on the left and on top."""
    if not cells or not cells[0]:
        raise ValueError("image_grid needs at least one row with one image")
    h, w = cells[0][0].shape[:2]
    ch, cw = h * scale, w * scale
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_w(s):
        return int(probe.textlength(s, font=font))

    left = max((text_w(s) for s in row_labels), default=0) + 8 if row_labels else 0
    top = 16 if col_labels else 0
    title_h = 18 if title else 0
    n_cols = max(len(r) for r in cells)
    width = left + n_cols * (cw + pad) + pad
    height = title_h + top + len(cells) * (ch + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill=(0, 0, 0), font=font)
    if col_labels:
        for j, label in enumerate(col_labels):
            x = left + pad + j * (cw + pad)
            short = label if text_w(label) <= cw + pad else label[: max(1, len(label) * cw // max(1, text_w(label)))]
            draw.text((x, title_h + 2), short, fill=(0, 0, 0), font=font)
    for i, row in enumerate(cells):
        y = title_h + top + pad + i * (ch + pad)
        if row_labels:
            draw.text((4, y + ch // 2 - 6), row_labels[i], fill=(0, 0, 0), font=font)
        for j, img in enumerate(row):
            tile = Image.fromarray(np.asarray(img, dtype=np.uint8)).resize((cw, ch), Image.NEAREST)
            canvas.paste(tile, (left + pad + j * (cw + pad), y))
    return canvas


def compare_grid(
    original: list[list[np.ndarray]], erased: list[list[np.ndarray]], row_labels, col_labels, **kw
) -> Image.Image:
    """Original (left block) and erased (right block) for the same prompts and seeds."""
    if len(original) != len(erased):
        raise ValueError("original and erased grids need the same rows")
    gap = [np.full_like(original[0][0], 255)]
    cells = [list(o) + gap + list(e) for o, e in zip(original, erased)]
    cols = [f"orig {c}" for c in col_labels] + [""] + [f"erased {c}" for c in col_labels]
    return image_grid(cells, row_labels, cols, **kw)


def save_png(img: Image.Image, path: str | Path) -> Path:
    """Write atomically: a temp file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
