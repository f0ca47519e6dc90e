"""The answer set of a protocol: one PNG per (style, object, seed), generated in batches, resumable.

Images already on disk are not regenerated, so an interrupted evaluation picks
up where it stopped. Each PNG is written to a temp name and renamed, so a
killed run never leaves a half-written image behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .generate import generate
from .protocols import Protocol


def image_name(style: str, obj: str, seed: int) -> str:
    return f"{style}_{obj}_seed{seed}.png"


def generate_answer_set(pipe, protocol: Protocol, folder: str | Path, *, batch_size: int = 64, progress: bool = True) -> dict:
    """Generate the missing images of ``protocol`` into ``folder``; returns counts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(s, o, seed) for s, o, seed in protocol.answer_set() if not (folder / image_name(s, o, seed)).exists()]
    total = len(protocol.answer_set())
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        images = generate(
            pipe,
            [protocol.prompt(s, o) for s, o, _ in chunk],
            [seed for _, _, seed in chunk],
            steps=protocol.steps,
            guidance=protocol.guidance,
            negative_prompt=protocol.negative_prompt,
            batch_size=batch_size,
            height=protocol.resolution,
            width=protocol.resolution,
            eta=protocol.eta,
            progress=progress and len(todo) > batch_size,
        )
        for (s, o, seed), img in zip(chunk, images):
            path = folder / image_name(s, o, seed)
            tmp = path.with_name("." + path.name + ".tmp")
            Image.fromarray(img).save(tmp, format="PNG")
            os.replace(tmp, path)
    manifest = [
        {"file": image_name(s, o, seed), "style": s, "object": o, "seed": seed, "prompt": protocol.prompt(s, o)}
        for s, o, seed in protocol.answer_set()
    ]
    tmp = folder / ".manifest.jsonl.tmp"
    tmp.write_text("".join(json.dumps(m) + "\n" for m in manifest))
    os.replace(tmp, folder / "manifest.jsonl")
    return {"total": total, "generated": len(todo), "reused": total - len(todo)}


def load_answer_set(protocol: Protocol, folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images float (N, 3, H, W) in [0, 1], style index (N,), object index (N,)) in protocol order."""
    folder = Path(folder)
    imgs, s_idx, o_idx = [], [], []
    for s, o, seed in protocol.answer_set():
        path = folder / image_name(s, o, seed)
        if not path.exists():
            raise FileNotFoundError(f"answer-set image {path} is missing; rerun the evaluation to generate it")
        imgs.append(np.asarray(Image.open(path).convert("RGB")))
        s_idx.append(protocol.styles.index(s))
        o_idx.append(protocol.objects.index(o))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.tensor(s_idx), torch.tensor(o_idx)
