"""Do the collateral-damage measures see what a human sees? Degrade held-out canvas-mini renders in ways a
person notices and check that retain fidelity and judge confidence move with the degradation.

    python -m worlds.canvas_mini.judge_validation            # prints the table the README shows

Degradations, each at strengths 0 (none) to 3:

* ``blur``: Gaussian blur of radius 0.5 x strength px;
* ``texture``: the style's texture removed, its palette kept (median filter of size 1 + 2 x strength);
* ``palette``: the palette shifted (hue rotated by 25 x strength degrees).

For each strength: mean same-seed PSNR and classifier-feature perceptual distance against the undegraded
render, and the style judge's accuracy and mean true-class probability.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image, ImageFilter

from eval.fidelity import ClassifierFeatureDistance, psnr
from worlds.canvas_mini import load_classifier
from worlds.canvas_mini.render import render
from worlds.canvas_mini.world import OBJECTS, STYLES

STRENGTHS = (0, 1, 2, 3)
VALIDATION_SEED = 950_000  # renderer seeds no trainer or evaluation uses (held-out renders)


def _blur(img: Image.Image, k: int) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(0.5 * k)) if k else img


def _texture(img: Image.Image, k: int) -> Image.Image:
    return img.filter(ImageFilter.MedianFilter(1 + 2 * k)) if k else img


def _palette(img: Image.Image, k: int) -> Image.Image:
    if not k:
        return img
    h, s, v = (np.asarray(c, np.int16) for c in img.convert("HSV").split())
    h = ((h + round(25 * k * 256 / 360)) % 256).astype(np.uint8)
    return Image.merge(
        "HSV", [Image.fromarray(h), Image.fromarray(s.astype(np.uint8)), Image.fromarray(v.astype(np.uint8))]
    ).convert("RGB")


DEGRADATIONS = {"blur": _blur, "texture": _texture, "palette": _palette}


def held_out_renders(per_pair: int = 1, objects: int = 4) -> tuple[list[Image.Image], torch.Tensor]:
    """Renders of every style with the first ``objects`` objects, and their style labels."""
    images, labels = [], []
    for si, style in enumerate(STYLES):
        for obj in OBJECTS[:objects]:
            for k in range(per_pair):
                images.append(render(style, obj, VALIDATION_SEED + 1000 * si + 10 * OBJECTS.index(obj) + k))
                labels.append(si)
    return images, torch.tensor(labels)


def _tensor(images: list[Image.Image]) -> torch.Tensor:
    return (
        torch.from_numpy(np.stack([np.asarray(i.convert("RGB")) for i in images]))
        .permute(0, 3, 1, 2)
        .float()
        .div(255.0)
    )


@torch.no_grad()
def measure(per_pair: int = 1, objects: int = 4) -> dict:
    """{degradation: [{strength, psnr, perceptual, accuracy, confidence}, ...]} on held-out renders."""
    style, obj = (load_classifier(k).for_inference() for k in ("style", "object"))
    distance = ClassifierFeatureDistance(style, obj)
    images, labels = held_out_renders(per_pair, objects)
    clean = _tensor(images)
    table = {}
    for name, degrade in DEGRADATIONS.items():
        rows = []
        for k in STRENGTHS:
            x = _tensor([degrade(i, k) for i in images])
            prob = style(x).softmax(-1)
            rows.append(
                {
                    "strength": k,
                    "psnr": float(psnr(clean, x).mean()),
                    "perceptual": float(distance(clean, x).mean()),
                    "accuracy": float((prob.argmax(-1) == labels).float().mean()),
                    "confidence": float(prob[torch.arange(len(labels)), labels].mean()),
                }
            )
        table[name] = rows
    return table


def format_table(table: dict) -> str:
    lines = [
        "| degradation | strength | PSNR (dB) | perceptual | style accuracy | true-class prob |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in table.items():
        for r in rows:
            lines.append(
                f"| {name} | {r['strength']} | {r['psnr']:.1f} | {r['perceptual']:.4f} | "
                f"{100 * r['accuracy']:.1f} | {r['confidence']:.3f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description="judge validation: fidelity and confidence against human-visible degradations"
    )
    p.add_argument("--per-pair", type=int, default=2)
    p.add_argument("--objects", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    print(format_table(measure(args.per_pair, args.objects)))


if __name__ == "__main__":
    main()
