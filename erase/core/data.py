"""Training data every method shares: folders of user images, and the model's own generations.

Methods never import the evaluation package; what both need (reading image folders) lives here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .cache import cached_tensors
from .components import named_parameters
from .diffusion import sample_latents
from .errors import EraseError
from .fingerprint import tensor_record

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def image_files(root: str | Path, *, recursive: bool = False, exclude: str | None = None) -> list[Path]:
    """Image files under ``root``, sorted; ``exclude`` drops files with a path component of that name."""
    root = Path(root)
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(
        f
        for f in found
        if f.suffix.lower() in IMAGE_SUFFIXES and (exclude is None or exclude not in f.relative_to(root).parts)
    )


def load_images(files: list[Path], size: int) -> torch.Tensor:
    """RGB images resized (bicubic) to size x size: float (N, 3, size, size) in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    arrays = []
    for f in files:
        try:
            arrays.append(np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC)))
        except (UnidentifiedImageError, OSError) as e:
            raise EraseError(
                f"cannot read image {f} ({type(e).__name__}); remove it or replace it with a valid image"
            ) from e
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def load_image_folder(folder: str | Path, size: int, option: str = "forget_images") -> torch.Tensor:
    """Every image of a folder (not recursive), as float tensors; clear errors for a missing or empty folder."""
    if not Path(folder).is_dir():
        raise EraseError(f"{option} folder {folder} does not exist; pass a folder of .png/.jpg images")
    files = image_files(folder)
    if not files:
        raise EraseError(f"no .png/.jpg images in {option} folder {folder}")
    return load_images(files, size)


MASK_SUFFIX = ".mask"


def load_captioned_images(
    folder: str | Path, size: int, option: str
) -> list[tuple[torch.Tensor, str, torch.Tensor | None]]:
    """Every image under ``folder`` (recursive) with its caption and optional mask: ``X.png`` needs ``X.txt`` (its
    prompt); ``X.mask.png`` (white: the concept) is its mask. Returns [(image (3, size, size) in [0, 1], caption,
    mask (1, size, size) in [0, 1] or None)], sorted by path."""
    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise EraseError(f"{option} folder {folder} does not exist; pass a folder of images with .txt captions")
    files = [f for f in image_files(root, recursive=True) if not f.stem.endswith(MASK_SUFFIX)]
    if not files:
        raise EraseError(f"no .png/.jpg images in {option} folder {folder}")
    out = []
    for f in files:
        caption = f.with_suffix(".txt")
        if not caption.is_file():
            raise EraseError(f"{option}: image {f} has no caption {caption.name}; write its prompt there")
        mask_file = next(
            (m for m in (f.with_name(f.stem + MASK_SUFFIX + s) for s in IMAGE_SUFFIXES) if m.is_file()), None
        )
        mask = None
        if mask_file is not None:
            gray = np.asarray(Image.open(mask_file).convert("L").resize((size, size), Image.BOX), dtype=np.float32)
            mask = torch.from_numpy(gray / 255.0)[None]
        out.append((load_images([f], size)[0], caption.read_text().strip(), mask))
    return out


def cache_dir() -> Path:
    """Where erasekit caches generated data and reference statistics (``ERASEKIT_CACHE`` or ~/.cache/erasekit)."""
    return Path(os.environ.get("ERASEKIT_CACHE", Path.home() / ".cache" / "erasekit"))


def cache_entry(kind: str, key: dict) -> Path:
    """The cache file of one entry of ``kind`` (a folder of the cache): named by a digest of ``key``, what makes two
    entries the same (as JSON, sorted keys)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return cache_dir() / kind / f"{digest}.safetensors"


def model_identity(model) -> str:
    """A cheap content identity of every tensor of a model (shapes, probe values, means), as a hex digest."""
    records = {n: tensor_record(n, p, exact=False) for n, p in sorted(named_parameters(model).items())}
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


def generations(
    pipe,
    prompts: list[str],
    per_prompt: int,
    first_seed: int,
    *,
    steps: int,
    guidance: float,
    cache: bool = True,
    identity: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own generations: ``per_prompt`` latents per prompt (seeds first_seed, first_seed + 1, ...)
    and the prompt index of each, in prompt-major order.

    Cached on disk under a hash of the model's identity, the prompts, seeds and sampler (scheduler
    class and config, steps, guidance), so methods and reruns on the same model never sample twice.
    ``identity`` is ``model_identity(pipe)`` when the caller already has it (``GenerationSets``).
    """
    idx = torch.arange(len(prompts)).repeat_interleave(per_prompt)
    if not prompts or per_prompt < 1:
        return torch.zeros(0), idx
    seeds = [first_seed + k for _ in prompts for k in range(per_prompt)]
    key = {
        "model": identity or model_identity(pipe),
        "prompts": prompts,
        "seeds": seeds,
        "steps": steps,
        "guidance": guidance,
        "scheduler": type(pipe.scheduler).__name__,
        "scheduler_config": dict(pipe.scheduler.config),
        "sample_size": pipe.unet.config.sample_size,
    }  # the pipeline's default size is the generations' size
    path = cache_entry("generations", key)

    def sample() -> dict[str, torch.Tensor]:
        return {
            "latents": sample_latents(
                pipe, [p for p in prompts for _ in range(per_prompt)], seeds, steps=steps, guidance=guidance
            )
        }

    if not cache:
        return sample()["latents"], idx

    z = cached_tensors(path, sample)["latents"]
    return z, idx


class GenerationSets:
    """``generations`` with one sampler setting; the model's identity (a pass over every tensor) is computed once."""

    def __init__(self, pipe, *, steps: int, guidance: float):
        self.pipe, self.steps, self.guidance = pipe, steps, guidance
        self.identity = model_identity(pipe)

    def __call__(self, prompts: list[str], per_prompt: int, first_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return generations(
            self.pipe,
            prompts,
            per_prompt,
            first_seed,
            steps=self.steps,
            guidance=self.guidance,
            identity=self.identity,
        )
