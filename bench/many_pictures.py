"""Where each method breaks on a list, in pictures: one row per method of ``bench.many``'s runs for one list.

    python -m bench.many_pictures [--list styles] [--k 9] [--out bench/results/many-styles-k9.png]

Columns, all at seed 0 of the protocol: two erased concepts of the list and one retained concept, each as the
original drew it and as the erased model draws it (same seed), then the embedding attack on the list's first
concept: its first prompt on the erased model, plainly and with the attack's soft prompt ("not needed"
where the plain prompt already shows the concept to the judge). Reads the folders
``bench.many`` left under ``runs/bench/many``; a method whose folder is missing is skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.many import LISTS, METHODS, WORK

SCALE = 3
LABEL_W, HEAD_H = 230, 34  # the method names' column, the labels' rows


def columns(family: str, k: int) -> list[tuple[str, str]]:
    """(concept, label, image path relative to a method's list folder, or to ``WORK`` with 'original/')."""
    items = LISTS[family][k]
    erased = [name for name, _ in items[:2]]
    kind = items[0][1]
    kept = "Winter" if kind == "style" else "Flame"
    other = "Birds" if kind == "style" else "Photo"

    def image(concept):
        pair = (concept, other) if kind == "style" else (other, concept)
        return f"{pair[0]}_{pair[1]}_seed0.png"

    cols = []
    for concept, role in [(c, "erased") for c in erased] + [(kept, "kept")]:
        cols += [
            (f"{concept} ({role})", "original", "original/images/" + image(concept)),
            (f"{concept} ({role})", "erased model", "eval/images/" + image(concept)),
        ]
    first = items[0][0]
    cols += [
        (f"attack: {first}", "plain prompt", f"attack/{first}/images/000_plain.png"),
        (f"attack: {first}", "soft prompt", f"attack/{first}/images/000_adversarial.png"),
    ]
    return cols


def draw(family: str, k: int, out: Path) -> Path:
    from PIL import Image, ImageDraw

    from eval.grid import _font, save_png

    folder = f"k{k}" if family == "styles" else f"{family}-k{k}"
    cols = columns(family, k)
    rows = [m for m in METHODS if (WORK / m / folder / "eval").is_dir()]
    if not rows:
        raise SystemExit(f"no bench.many runs for {family} k={k} under {WORK}; run python -m bench.many first")
    cell, label_w, head_h = 32 * SCALE + 6, LABEL_W, HEAD_H
    img = Image.new("RGB", (label_w + cell * len(cols), head_h + cell * len(rows)), "white")
    d, font = ImageDraw.Draw(img), _font()
    for c, (concept, label, _) in enumerate(cols):
        if c % 2 == 0:
            d.text((label_w + c * cell + 2, 2), concept, fill="black", font=font)
        d.text((label_w + c * cell + 2, 16), label, fill="black", font=font)
    for r, method in enumerate(rows):
        y = head_h + r * cell
        d.text((4, y + cell // 2 - 6), method, fill="black", font=font)
        for c, (_, label, rel) in enumerate(cols):
            path = WORK / rel if rel.startswith("original/") else WORK / method / folder / rel
            if path.is_file():
                tile = Image.open(path).convert("RGB").resize((32 * SCALE, 32 * SCALE), Image.NEAREST)
                img.paste(tile, (label_w + c * cell + 3, y + 3))
            else:  # the attack stops at a prompt the erased model already draws the concept for
                text = "not needed" if label == "soft prompt" and path.with_name("000_plain.png").is_file() else "n/a"
                d.text((label_w + c * cell + 8, y + cell // 2 - 6), text, fill="gray", font=font)
    return save_png(img, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", default="styles", choices=list(LISTS))
    p.add_argument("--k", type=int, default=9)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.k not in LISTS[args.list]:
        print(f"error: no {args.list} list of {args.k}; choose k from {sorted(LISTS[args.list])}", file=sys.stderr)
        return 2
    out = Path(args.out or f"bench/results/many-{args.list}-k{args.k}.png")
    print(f"wrote {draw(args.list, args.k, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
