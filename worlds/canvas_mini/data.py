"""Render sets and augmentation for the canvas-mini trainers.

Seed ranges are disjoint per use, so no classifier or check ever sees a
render the generator was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .render import render_array
from .world import OBJECTS, STYLES, caption

# First seed of each use; each set takes `per_pair` consecutive seeds per (style, object).
SEED_BASE = {
    "generator": 0,
    "classifier": 100_000,
    "classifier_b": 200_000,
    "clip": 300_000,
    "fid": 400_000,
    "concept_images": 500_000,
    "check": 900_000,
}


@dataclass
class RenderSet:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    style: torch.Tensor  # int64 (N,)
    obj: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.style)

    def float_images(self, idx=slice(None)) -> torch.Tensor:
        return self.images[idx].float() / 255.0

    def captions(self) -> list[str]:
        return [caption(STYLES[s], OBJECTS[o]) for s, o in zip(self.style.tolist(), self.obj.tolist())]


def render_set(use: str, per_pair: int, progress: bool = False) -> RenderSet:
    """Every (style, object) pair `per_pair` times, seeds from SEED_BASE[use]."""
    from tqdm.auto import tqdm

    base = SEED_BASE[use]
    jobs = [(si, oi, base + k) for si in range(len(STYLES)) for oi in range(len(OBJECTS)) for k in range(per_pair)]
    arrays = [
        render_array(STYLES[si], OBJECTS[oi], seed)
        for si, oi, seed in tqdm(jobs, desc=f"render {use}", disable=not progress, mininterval=2)
    ]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    style = torch.tensor([j[0] for j in jobs])
    obj = torch.tensor([j[1] for j in jobs])
    return RenderSet(images, style, obj)


@dataclass
class AugmentConfig:
    """What a generator's output can look like that a clean render does not."""

    p_vae: float = 0.5  # replace by the VAE round-trip of the same render
    shift: int = 2  # random translation in pixels
    gain: float = 0.10  # per-channel multiplicative jitter
    offset: float = 0.05  # per-channel additive jitter
    p_blur: float = 0.3
    noise: float = 0.03  # max std of Gaussian noise

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def augment(x: torch.Tensor, x_vae: torch.Tensor | None, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Batch augmentation of float images in [0, 1]."""
    n = x.shape[0]

    def u(*shape):
        return torch.rand(*shape, generator=g)

    if x_vae is not None and cfg.p_vae > 0:
        pick = (u(n) < cfg.p_vae).view(n, 1, 1, 1)
        x = torch.where(pick, x_vae, x)
    flip = (u(n) < 0.5).view(n, 1, 1, 1)
    x = torch.where(flip, x.flip(3), x)
    if cfg.shift:
        s = cfg.shift
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        dx, dy = torch.randint(0, 2 * s + 1, (2,), generator=g).tolist()
        x = padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
    x = x * (1 + cfg.gain * (2 * u(n, 3, 1, 1) - 1)) + cfg.offset * (2 * u(n, 3, 1, 1) - 1)
    if cfg.p_blur > 0:
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
        pick = (u(n) < cfg.p_blur).view(n, 1, 1, 1)
        x = torch.where(pick, blurred, x)
    if cfg.noise > 0:
        x = x + torch.randn(x.shape, generator=g) * (cfg.noise * u(n, 1, 1, 1))
    return x.clamp(0, 1)
