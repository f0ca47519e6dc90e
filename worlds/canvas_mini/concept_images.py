"""Training images of canvas-mini concepts with the renderer's own masks, for methods that take an image folder
(MACE's ``concept_images``: the segmentation masks MACE gets from Grounded-SAM, known exactly here).

    python -m worlds.canvas_mini.concept_images --concepts Birds,Fishes --kind object --n 8 --out DIR

For each concept, ``n`` renders of it across the protocol's other axis in turn (the request's forget prompts, in
its order), seeds from the world's ``concept_images`` range (no trainer or judge uses it): ``DIR/<concept>/<j>.png``,
its prompt in ``<j>.txt`` and, for objects, the object's silhouette in ``<j>.mask.png``; styles cover the whole
image and get no mask (MACE's setting for art styles). The folder appears whole or not at all.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from erase.core.errors import EraseError

from .data import SEED_BASE
from .render import render_with_mask
from .world import OBJECTS, STYLES, caption


def write_concept_images(concepts: list[str], kind: str, n: int, out: str | Path) -> Path:
    """Write the folder (see the module docstring); refuses an existing ``out``."""
    axis, other = {"style": (STYLES, OBJECTS), "object": (OBJECTS, STYLES)}.get(kind, (None, None))
    if axis is None:
        raise EraseError(f"canvas-mini concepts are styles or objects, got kind {kind!r}; pass --kind style|object")
    unknown = [c for c in concepts if c not in axis]
    if unknown:
        raise EraseError(f"{', '.join(unknown)} not a canvas-mini {kind}; choose from {', '.join(axis)}")
    if n < 1:
        raise EraseError(f"--n must be at least 1, got {n}")
    out = Path(out)
    if out.exists():
        raise EraseError(f"{out} already exists; pass a new --out folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for concept in concepts:
            folder = tmp / concept
            folder.mkdir()
            for j in range(n):
                pair = (concept, other[j % len(other)]) if kind == "style" else (other[j % len(other)], concept)
                image, mask = render_with_mask(*pair, SEED_BASE["concept_images"] + j)
                Image.fromarray(image, "RGB").save(folder / f"{j}.png")
                (folder / f"{j}.txt").write_text(caption(*pair) + "\n")
                if kind == "object":
                    Image.fromarray(np.round(mask * 255).astype(np.uint8), "L").save(folder / f"{j}.mask.png")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m worlds.canvas_mini.concept_images", description=__doc__.split("\n")[0])
    p.add_argument("--concepts", required=True, help="comma-separated canvas-mini styles or objects")
    p.add_argument("--kind", required=True, choices=("style", "object"))
    p.add_argument("--n", type=int, default=8, help="images per concept (MACE uses 8)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        write_concept_images([c.strip() for c in args.concepts.split(",")], args.kind, args.n, args.out)
    except EraseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
