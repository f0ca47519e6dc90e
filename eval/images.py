"""Folders of user images -> float tensors, for user-supplied forget sets and FID reference sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_files(root: str | Path, *, recursive: bool = False, exclude: str | None = None) -> list[Path]:
    """Image files under ``root``, sorted; ``exclude`` drops files with a path component of that name."""
    root = Path(root)
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(f for f in found if f.suffix.lower() in IMAGE_SUFFIXES and (exclude is None or exclude not in f.relative_to(root).parts))


def load_images(files: list[Path], size: int) -> torch.Tensor:
    """RGB images resized (bicubic) to size x size: float (N, 3, size, size) in [0, 1]."""
    from PIL import Image

    from .generate import to_tensor

    return to_tensor(np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC)) for f in files]))
