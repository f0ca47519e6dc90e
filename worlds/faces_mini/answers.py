"""faces-mini's answers for evaluation: for every protocol seed, G(w) (``plain``) and G(w_hat), where w_hat is w
edited by a latent mapper that *asks for the target*.

The mapper is trained on the original generator through the held-out CLIP (``clip-judge``, never the method's),
so the erased model is questioned with an edit it never saw; it is trained once (patches taken off, bit-exact) and
read from the cache after that. The model maps each seed's z with its own, possibly patched, mapping network, so a
patch on the mapping shows; the edit is the same mapper's for the model and the original.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from erase.core.errors import EraseError
from erase.core.latent_mapper import MapperSettings, edit, to_images, to_wplus, train_mapper
from erase.core.patch import patches_disabled
from eval.protocols import Protocol

from .assets import ASSETS_DIR, evaluation_mapper_steps
from .guides import evaluation_guides

EDIT_SCALE = 0.1
# StyleCLIP's settings, with two shifted / flipped views per edit so that the mapper cannot fool the CLIP with pixel
# patterns; for an identity the identity term is off, as in the method, and the L2 is IDENTITY_L2.
MAPPER = MapperSettings(steps=1500, batch_size=16, l2=0.8, identity=0.1, scale=EDIT_SCALE, seed=7, views=2)
# Measured on the shipped (sharpened) generator, 300 seeds, Alice: without L2 the edit leaves the faces (pastel blobs
# that the judge calls Alice, 24% of their pixels off the palette); at 0.1 and 0.3 every face becomes a blond,
# narrow-faced Alice (100% and 99.7%), at 0.3 with the plain faces' local palette drift (1.75%). (On the GAN before
# the sharpening, 0.3 and 0.8 had been too small: Alice's rate rose by 2-9 points.)
IDENTITY_L2 = 0.3
RENDER_BATCH = 256


class FacesAnswers:
    """Renders of ``pipe`` (with whatever patches it carries when ``render`` is called) for one target:
    ``variants`` = ("plain", target); ``render(variant, seeds)`` -> float images (N, 3, H, W) in [0, 1]."""

    def __init__(
        self,
        pipe,
        protocol: Protocol,
        target: str,
        kind: str,
        *,
        progress: bool = False,
        assets: Path | None = None,
        settings: MapperSettings | None = None,
    ):
        if not hasattr(pipe, "seed_latents") or not hasattr(pipe, "generator"):
            raise EraseError(
                f"protocol {protocol.name!r} evaluates a StyleGAN folder (config.json + generator.safetensors); "
                "pass one with --model"
            )
        protocol.check_target(target, kind)
        root = assets or ASSETS_DIR
        settings = settings or replace(MAPPER, steps=evaluation_mapper_steps(root, MAPPER.steps))
        settings = settings.for_kind(kind)
        self.pipe, self.settings = pipe, replace(settings, l2=IDENTITY_L2) if kind == "identity" else settings
        self.variants = ("plain", target)
        with patches_disabled(pipe):  # the original's mapper: the same edit asks the model and the original
            self.mapper = train_mapper(
                pipe.generator,
                protocol.phrases[target],
                evaluation_guides(root),
                self.settings,
                progress=progress,
            )
        self.record = {
            "mapper": "levels mapper through clip-judge, trained on the original",
            "scale": EDIT_SCALE,
            "settings": dict(self.settings.__dict__),
        }

    @torch.no_grad()
    def render(self, variant: str, seeds: list[int]) -> torch.Tensor:
        if variant not in self.variants:
            raise EraseError(f"no answer variant {variant!r}; these are {', '.join(self.variants)}")
        G = self.pipe.generator
        w = to_wplus(G, self.pipe.seed_latents(seeds))
        if variant != "plain":
            w = edit(self.mapper, w, EDIT_SCALE)
        return torch.cat(
            [to_images(G.synthesis(w[i : i + RENDER_BATCH])).float().cpu() for i in range(0, len(w), RENDER_BATCH)]
        )
