"""Guides: the frozen networks a method consults but never changes (CLIP, a perceptual distance, an identity
embedding, a judge for the gate), handed in by the caller.

A method must not reach into ``eval`` for them (the core never imports evaluation code), and a real model's
guides are the user's own files (CLIP ViT-B/32, LPIPS, ArcFace), so whoever sets up the run builds a
``Guides``: the faces-mini world builds its own from its shipped artefacts (``worlds.faces_mini.guides``), a
user with FFHQ passes theirs. ``describe()`` names what was used; it is part of the run's identity (a resumed
run must use the same guides) and of the patch's config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import EraseError


@dataclass
class Guides:
    clip_image: Callable[
        [torch.Tensor], torch.Tensor
    ]  # float images (N, 3, H, W) in [0, 1] -> unit embeddings, differentiable
    clip_text: Callable[[list[str]], torch.Tensor]  # texts -> unit embeddings
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = (
        None  # per-image distance, differentiable
    )
    identity: Callable[[torch.Tensor], torch.Tensor] | None = (
        None  # images -> unit identity embeddings, differentiable
    )
    concept_probability: Callable[[torch.Tensor, str], torch.Tensor] | None = (
        None  # (images, concept) -> P(concept) per image, differentiable
    )
    # (images, concept) -> log-probabilities of every attribute but the concept's, concatenated (differentiable): what
    # an edit or an erasure of the concept should leave alone
    other_attributes: Callable[[torch.Tensor, str], torch.Tensor] | None = None
    names: dict[str, str] = field(default_factory=dict)  # what each guide is: part of the run's identity
    # other perceptual distances a method may pick by name instead of ``perceptual``
    # (names["perceptual:NAME"] says what each is)
    perceptual_choices: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = field(default_factory=dict)

    def describe(self) -> dict[str, str]:
        return dict(sorted(self.names.items()))

    def require(self, what: str, method: str, why: str):
        value = getattr(self, what)
        if value is None:
            raise EraseError(
                f"{method} needs a {what.replace('_', ' ')} guide ({why}); pass it in Guides or set its weight to 0"
            )
        return value

    def other_attribute_kl(self, reference: torch.Tensor, x: torch.Tensor, concept: str) -> torch.Tensor:
        """KL(p(reference) || p(x)) of the other attributes (``other_attributes``), summed over heads and averaged over
        images: how far ``x`` moved what an edit or an erasure of ``concept`` should leave alone (no gradient through
        ``reference``)."""
        keep = self.other_attributes(reference, concept).detach()
        return (keep.exp() * (keep - self.other_attributes(x, concept))).sum(-1).mean()

    def perceptual_named(self, choice: str, method: str, why: str):
        """The perceptual distance called ``choice`` ('' is the default ``perceptual``, required for ``why``)."""
        if not choice:
            return self.require("perceptual", method, why)
        if choice not in self.perceptual_choices:
            known = ", ".join(sorted(self.perceptual_choices)) or "none"
            raise EraseError(
                f"{method}: no perceptual network {choice!r} among the guides (these have: {known}); "
                "leave perceptual_net empty for the default"
            )
        return self.perceptual_choices[choice]


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)
