"""Random views of images for a CLIP guide: small shifts and flips, and colour maps applied alike to both images of
a pair.

A CLIP-guided edit or fine-tune must change what an image shows, not fool the CLIP with a pixel pattern or a
colour. Views make the guide's judgement hold under small translations; colour maps (hue rotation about the grey
axis, channel order, saturation or grey, contrast and brightness) make a change that only recolours something read
differently in every view, while a change of shape reads the same: so recolouring the concept (magenta lenses)
no longer passes for removing it. Both images of a pair always get the same view, so that their difference is
the images' difference alone.
"""

from __future__ import annotations

import math

import torch

SATURATION = (0.3, 1.5)
P_GREY = 0.2
CONTRAST = (0.7, 1.3)
BRIGHTNESS = 0.1


def colour_maps(n: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` random colour maps: (matrices (n, 3, 3) whose rows sum to 1, so grey stays grey, contrasts (n,),
    brightness shifts (n,)). Each matrix is a saturation change (or grey) after a hue rotation about the grey axis
    after a channel reordering."""
    theta = torch.rand(n, generator=rng) * 2 * math.pi
    k = torch.full((3,), 1 / math.sqrt(3))
    cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    c, s = theta.cos().view(n, 1, 1), theta.sin().view(n, 1, 1)
    rotation = c * torch.eye(3) + s * cross + (1 - c) * torch.outer(k, k)  # Rodrigues: fixes (1, 1, 1)
    order = torch.stack([torch.eye(3)[torch.randperm(3, generator=rng)] for _ in range(n)])
    sat = SATURATION[0] + (SATURATION[1] - SATURATION[0]) * torch.rand(n, generator=rng)
    sat = torch.where(torch.rand(n, generator=rng) < P_GREY, torch.zeros(n), sat).view(n, 1, 1)
    saturation = sat * torch.eye(3) + (1 - sat) * torch.full((3, 3), 1 / 3)
    contrast = CONTRAST[0] + (CONTRAST[1] - CONTRAST[0]) * torch.rand(n, generator=rng)
    brightness = BRIGHTNESS * (2 * torch.rand(n, generator=rng) - 1)
    return saturation @ rotation @ order, contrast, brightness


def apply_colour_maps(x: torch.Tensor, maps: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Images (n, 3, H, W) in [0, 1], each under its own map (differentiable in the images)."""
    matrix, contrast, brightness = (m.to(x.device, x.dtype) for m in maps)
    y = torch.einsum("nij,njhw->nihw", matrix, x)
    return ((y - 0.5) * contrast.view(-1, 1, 1, 1) + 0.5 + brightness.view(-1, 1, 1, 1)).clamp(0, 1)


def clip_views(
    x: torch.Tensor, views: int, rng: torch.Generator, shift: int = 2, colour: bool = False, pairs: int = 1
) -> torch.Tensor:
    """``views`` random views of every image (a shift of up to ``shift`` pixels through reflect padding, and a
    horizontal flip half the time, one per view for the whole batch), stacked view-major. With ``colour`` every
    image also gets a random colour map, the same for the ``pairs`` images i, i + n, ..., i + (pairs - 1) n of a
    batch that holds ``pairs`` batches of n images one after the other."""
    if views <= 0:
        return x
    size = x.shape[-1]
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift), mode="reflect")
    out = []
    for _ in range(views):
        dy, dx = (int(v) for v in torch.randint(0, 2 * shift + 1, (2,), generator=rng))
        view = padded[..., dy : dy + size, dx : dx + size]
        view = view.flip(-1) if torch.rand((), generator=rng) < 0.5 else view
        if colour:
            maps = colour_maps(len(x) // pairs, rng)
            view = apply_colour_maps(view, tuple(m.repeat(pairs, *([1] * (m.dim() - 1))) for m in maps))
        out.append(view)
    return torch.cat(out)


def embed_pair(
    clip_image, a: torch.Tensor, b: torch.Tensor, views: int, rng: torch.Generator, colour: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP embeddings of two image batches under the same random views (and colour maps), (views, images, dim)
    each, so that their difference is the images' difference alone and not that of two different views."""
    e = clip_image(clip_views(torch.cat([a, b]), views, rng, colour=colour, pairs=2))
    return e.view(-1, 2, len(a), e.shape[-1]).unbind(1)
