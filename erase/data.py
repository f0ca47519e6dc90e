"""Training data every method shares: folders of user images, and the model's own generations.

Methods never import the evaluation package; what both need (reading image folders) lives here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import EraseError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_files(root: str | Path, *, recursive: bool = False, exclude: str | None = None) -> list[Path]:
    """Image files under ``root``, sorted; ``exclude`` drops files with a path component of that name."""
    root = Path(root)
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(f for f in found if f.suffix.lower() in IMAGE_SUFFIXES and (exclude is None or exclude not in f.relative_to(root).parts))


def load_images(files: list[Path], size: int) -> torch.Tensor:
    """RGB images resized (bicubic) to size x size: float (N, 3, size, size) in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    arrays = []
    for f in files:
        try:
            arrays.append(np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC)))
        except (UnidentifiedImageError, OSError) as e:
            raise EraseError(f"cannot read image {f} ({type(e).__name__}); remove it or replace it with a valid image") from e
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def load_image_folder(folder: str | Path, size: int, option: str = "forget_images") -> torch.Tensor:
    """Every image of a folder (not recursive), as float tensors; clear errors for a missing or empty folder."""
    if not Path(folder).is_dir():
        raise EraseError(f"{option} folder {folder} does not exist; pass a folder of .png/.jpg images")
    files = image_files(folder)
    if not files:
        raise EraseError(f"no .png/.jpg images in {option} folder {folder}")
    return load_images(files, size)
