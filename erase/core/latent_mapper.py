"""A per-prompt latent mapper for StyleGAN W+ (StyleCLIP's levels mapper), trained through a CLIP to *add* a
concept; the gate that checks it does; the image-space direction it defines.

The mapper has three MLPs (PixelNorm, then four Linear + leaky-ReLU layers), for the coarse, medium and fine W+
rows (3 / 3 / 2 rows at 32 px, 4 / 3 / 3 at 64 px); the edit is ``w_hat = w + scale * M(w)`` with StyleCLIP's
scale 0.1. Training loss: ``1 - cos(E_I(G(w_hat)), E_T(prompt)) + l2 * |w_hat - w|^2 + id * (1 - cos(ID(G(w_hat)),
ID(G(w))))``. A trained mapper is cached by the generator's identity, the prompt, the guides and the settings,
so the method and its evaluation never train the same one twice.

Used by Text-to-Unlearn (``erase.methods.text_to_unlearn``) with the method's CLIP, and by the faces-mini
evaluation with its held-out CLIP (to ask for the concept with an edit the method never saw).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from .cache import cached_tensors
from .data import cache_entry, model_identity
from .errors import EraseError
from .guides import Guides, unit
from .image_views import clip_views, embed_pair


def level_splits(n_latent: int) -> tuple[int, int, int]:
    """Rows per level (coarse, medium, fine): 3/3/2 for 8 rows, 4/3/3 for 10, 6/6/6 for 18."""
    coarse = math.ceil(n_latent / 3)
    medium = math.ceil((n_latent - coarse) / 2)
    return coarse, medium, n_latent - coarse - medium


class _LevelMLP(nn.Module):
    def __init__(self, dim: int, layers: int = 4):
        super().__init__()
        mods: list[nn.Module] = []
        for _ in range(layers):
            mods += [nn.Linear(dim, dim), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*mods)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        w = w * torch.rsqrt(w.pow(2).mean(-1, keepdim=True) + 1e-8)  # PixelNorm
        return self.net(w)


class LevelsMapper(nn.Module):
    """W+ (N, rows, dim) -> an offset of the same shape, one MLP per level of rows."""

    def __init__(self, n_latent: int, dim: int):
        super().__init__()
        self.splits = level_splits(n_latent)
        self.levels = nn.ModuleList(_LevelMLP(dim) for _ in self.splits)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        parts, start = [], 0
        for n, mlp in zip(self.splits, self.levels):
            parts.append(mlp(w[:, start : start + n]))
            start += n
        return torch.cat(parts, dim=1)


@dataclass
class MapperSettings:
    steps: int = 1500
    lr: float = 1e-3
    batch_size: int = 16
    l2: float = 0.8
    identity: float = 0.1
    scale: float = 0.1
    truncation: float = 1.0
    seed: int = 0
    views: int = 0  # CLIP sees this many randomly shifted / flipped views of each edit (0: the image itself)
    attributes: float = (
        0.0  # weight of keeping the guides' other attributes (KL of G(w_hat)'s from G(w)'s): a cleaner edit
    )
    # False: the edit adds the prompt (CLIP similarity raised); True: it removes the concept (the guides' judged
    # probability of the concept lowered, -log(1 - p)), a concept-free counterpart of every face
    remove: bool = False

    def for_kind(self, kind: str) -> "MapperSettings":
        """For an identity the identity term is off (it keeps the edit from changing who the face is), and so is the
        L2 of an edit that adds the identity (a jump into its small region of W); an edit that removes it keeps its
        L2: it should move a face no further than out of the identity."""
        if kind != "identity":
            return self
        return replace(self, l2=self.l2 if self.remove else 0.0, identity=0.0)


def to_images(x: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> images in [0, 1] (what the guides take)."""
    return (x.clamp(-1, 1) + 1) / 2


def to_wplus(generator, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
    """W+ codes of z: the mapping's w, truncated towards w_avg, on every row
    (differentiable; callers choose no_grad)."""
    w = generator.truncate(generator.mapping(z.to(next(generator.parameters()).device)), truncation)
    return w.unsqueeze(1).expand(-1, generator.n_latent, -1).contiguous()


def sample_wplus(generator, n: int, rng: torch.Generator, truncation: float) -> torch.Tensor:
    """W+ codes of random z (every row the same w, truncated towards w_avg)."""
    with torch.no_grad():
        return to_wplus(generator, torch.randn(n, generator.config.z_dim, generator=rng), truncation)


def edit(mapper: LevelsMapper, wplus: torch.Tensor, scale: float) -> torch.Tensor:
    return wplus + scale * mapper(wplus)


def _cache_path(generator, prompt: str, guides: Guides, settings: MapperSettings, concept: str | None):
    ident = {
        "generator": model_identity(generator),
        "prompt": prompt,
        "guides": guides.describe(),
        "settings": asdict(settings),
    }
    if settings.attributes > 0 or settings.remove:  # what is kept, or removed, depends on the concept
        ident["concept"] = concept
    return cache_entry("mappers", ident)


def train_mapper(
    generator,
    prompt: str,
    guides: Guides,
    settings: MapperSettings,
    *,
    progress: bool = False,
    concept: str | None = None,
) -> LevelsMapper:
    """The mapper that adds ``prompt`` to ``generator``'s images, or with ``settings.remove`` the one that takes
    ``concept`` out of them (trained once, then read from the cache)."""

    dev = next(generator.parameters()).device
    mapper = LevelsMapper(generator.n_latent, generator.config.style_dim).to(dev)
    if (settings.attributes > 0 or settings.remove) and concept is None:
        raise EraseError(
            "a latent mapper that keeps the other attributes, or removes a concept, needs the concept "
            "(train_mapper(..., concept=...))"
        )
    if settings.remove:
        guides.require("concept_probability", "a removing latent mapper", "it lowers the concept's probability")
    path = _cache_path(generator, prompt, guides, settings, concept)

    mapper.load_state_dict(
        cached_tensors(path, lambda: _train(generator, prompt, guides, settings, progress, concept))
    )
    return mapper.eval().requires_grad_(False)


def _train(
    generator, prompt: str, guides: Guides, settings: MapperSettings, progress: bool, concept: str | None
) -> dict[str, torch.Tensor]:
    """Train a mapper from scratch (seeded by the settings); its state dict."""
    from tqdm.auto import tqdm

    dev = next(generator.parameters()).device
    torch.manual_seed(settings.seed)
    mapper = LevelsMapper(generator.n_latent, generator.config.style_dim).to(dev)
    rng = torch.Generator().manual_seed(settings.seed)
    text = guides.clip_text([prompt]).detach()
    identity = guides.identity if settings.identity > 0 else None
    if settings.attributes > 0:
        guides.require("other_attributes", "the latent mapper", "attributes > 0")
    opt = torch.optim.Adam(mapper.parameters(), lr=settings.lr)
    was = generator.training
    generator.eval().requires_grad_(False)
    try:
        for _ in tqdm(
            range(settings.steps), desc=f"latent mapper for {prompt!r}", disable=not progress, mininterval=2
        ):
            w = sample_wplus(generator, settings.batch_size, rng, settings.truncation)
            w_hat = edit(mapper, w, settings.scale)
            x_hat = to_images(generator.synthesis(w_hat))
            if settings.remove:
                p = guides.concept_probability(x_hat, concept)
                aim = -torch.log1p(-p.clamp(max=1 - 1e-6)).mean()
            else:
                aim = (1 - (guides.clip_image(clip_views(x_hat, settings.views, rng)) * text).sum(-1)).mean()
            loss = aim + settings.l2 * (w_hat - w).pow(2).mean()
            if identity is not None or settings.attributes > 0:
                with torch.no_grad():
                    x = to_images(generator.synthesis(w))
            if identity is not None:
                loss = loss + settings.identity * (1 - (identity(x_hat) * identity(x).detach()).sum(-1)).mean()
            if settings.attributes > 0:  # the edit changes the concept only
                loss = loss + settings.attributes * guides.other_attribute_kl(x, x_hat, concept)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        generator.train(was)
    return mapper.state_dict()


@torch.no_grad()
def concept_rates(
    generator,
    mapper: LevelsMapper,
    guides: Guides,
    concept: str,
    n: int,
    seed: int,
    scale: float,
    truncation: float = 1.0,
    batch: int = 128,
) -> tuple[float, float]:
    """The judged rate of ``concept`` on G(w) and on the mapper's edits G(w + scale M(w)), over n samples."""
    judge = guides.concept_probability
    rng = torch.Generator().manual_seed(seed)
    plain = edited = 0.0
    for i in range(0, n, batch):
        w = sample_wplus(generator, min(batch, n - i), rng, truncation)
        plain += float((judge(to_images(generator.synthesis(w)), concept) > 0.5).sum())
        edited += float((judge(to_images(generator.synthesis(edit(mapper, w, scale))), concept) > 0.5).sum())
    return plain / n, edited / n


def check_gate(
    generator,
    mapper,
    guides: Guides,
    concept: str,
    prompt: str,
    *,
    points: float,
    n: int,
    seed: int,
    scale: float,
    truncation: float = 1.0,
) -> dict:
    """Refuse a mapper whose edit does not add the concept (then the direction it defines is noise)."""
    if guides.concept_probability is None:
        return {"checked": False, "note": "no judge among the guides: the gate was not checked"}
    before, after = concept_rates(generator, mapper, guides, concept, n, seed, scale, truncation)
    gate = {
        "checked": True,
        "rate_plain": before,
        "rate_edited": after,
        "raise_points": round(100 * (after - before), 1),
        "needed_points": points,
    }
    if 100 * (after - before) < points:
        raise EraseError(
            f"the latent mapper for {prompt!r} raised the judged rate of {concept!r} only from {100 * before:.1f}% to "
            f"{100 * after:.1f}% ({100 * (after - before):+.1f} points; the gate needs +{points:g}): the prompt does "
            "not realise the concept; try another wording (--set prompt=...) or more mapper_steps"
        )
    return gate


@torch.no_grad()
def image_direction(
    generator,
    mapper,
    guides: Guides,
    *,
    n: int,
    seed: int,
    scale: float,
    truncation: float = 1.0,
    batch: int = 64,
    views: int = 0,
    colour: bool = False,
) -> torch.Tensor:
    """i = unit(mean(unit(E(G(w_hat))) - unit(E(G(w))))): the concept's direction in CLIP image space, averaged over
    ``views`` random views (and colour maps) of each pair when views > 0."""
    rng = torch.Generator().manual_seed(seed)
    total = None
    for k in range(0, n, batch):
        w = sample_wplus(generator, min(batch, n - k), rng, truncation)
        e_hat, e = embed_pair(
            guides.clip_image,
            to_images(generator.synthesis(edit(mapper, w, scale))),
            to_images(generator.synthesis(w)),
            views,
            rng,
            colour,
        )
        d = (e_hat - e).sum(dim=(0, 1))
        total = d if total is None else total + d
    return unit(total / n)
