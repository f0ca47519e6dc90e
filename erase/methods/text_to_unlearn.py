"""Text-to-Unlearn: remove a visual concept from a StyleGAN2 generator given only a text prompt.

Reconstructed from the paper's descriptions (arXiv 2504.01218; no official code), in the StyleGAN-NADA lineage,
and redesigned where the paper's losses are fooled on faces-mini (README, "Text-to-Unlearn that erases"):

1. a latent mapper M_p is trained through the method's CLIP to *add* the prompt's concept to W+ codes
   (``erase.core.latent_mapper``), with identity and other-attribute preservation through the guides so that the edit
   adds the concept and nothing else; a gate refuses a mapper whose edit does not raise the guide classifier's
   rate of the concept by ``gate_points`` (then everything below would chase noise); with ``edit_mix`` a second,
   looser mapper (StyleCLIP's identity weight 0.1, ``mix_identity``) edits that share of the latents, so that the
   fine-tune meets the concept asked for through other W+ rows as well (on faces-mini the clean mapper draws a smile
   through the medium rows, the loose one through the coarse rows; off by default: at 0.5 it removes a held-out
   mapper's smiles by the judge's count and smears the faces it removes them from, README);
2. the reference direction i = unit(mean(unit(E(G_f(w_hat))) - unit(E(G_f(w))))) in CLIP image space, from
   pairs rendered by the frozen generator G_f (averaged over colour-mapped views of each pair), computed once;
3. a copy G_t is fine-tuned so that, on edited codes w_hat, the change from G_f(w_hat) to G_t(w_hat) points
   along i: L_dir = 1 - cos(unit(unit(E(G_f(w_hat))) - unit(E(G_t(w_hat)))), i) (``direction_loss
   frozen_pair``; ``self_pair`` instead minimises cos(unit(E(G_t(w_hat))) - unit(E(G_t(w))), i)). Both images
   of a pair go through the same random views and colour maps (``colour_augment``), so recolouring the concept
   no longer reads as removing it. A perceptual and an identity distance hold G_t(w_hat) to the ``anchor``:
   ``edited`` = G_f(w_hat) (the paper: it holds the concept in place), ``unedited`` = G_f(w) (the face without
   the edit: what the erased image should look like); optionally a pixel distance to it (``lambda_pixels``).
   ``preserve_unedited`` holds G_t(w) to G_f(w) on plain codes (keep plain faces), on every code or only where the
   guide classifier finds the concept absent (``preserve_where``); ``lambda_attributes`` keeps the guide classifier's
   other attributes (identity head included) on both; ``plain_direction`` also applies the direction loss to plain
   latents where the guide classifier finds the concept; ``remove_target`` holds those faces G_t(w) to a
   concept-free counterpart G_f(w + s R(w)), R a second latent mapper trained to lower the guide classifier's
   probability of the concept, or (``counterpart probe``) G_f(w'), w' moved along a linear probe of the concept in
   W until the probe reads it concept-free (``erase.core.latent_probe``; only where the concept is linear in W).
   For identity concepts the identity term is off.

``mode clip_distance`` is the paper's baseline (its Eq. 11): minimise cos(E(G_t(w)), E_T(prompt)), with the
same optional anchor on unedited codes. ``mode probe`` trains G_t(w) onto G_f(w') for every face, w' its
counterpart under the linear probe (w itself where the probe finds no concept; with ``layers mapping`` the
trained mapping's w onto w' directly): for a concept that is linear in W (on faces-mini an identity), refused for
one that is not. Trainable layers (``layers``): every synthesis conv and the constant
input (NADA's set, the default), the mapping network only, or ``adaptive``: the conv layers fed by the ``top_k``
W+ rows that a CLIP-guided edit of W+ towards the prompt moves most, chosen once at set-up or, with
``adaptive_every`` > 0, re-chosen on G_t every that many steps as NADA does; ``modulations all`` adds every
synthesis conv's style affine (the map from a W+ row to its layer's style) to the adaptive layers.

The networks the method consults (CLIP, perceptual, identity, the gate's classifier) come in as ``Guides``; on
faces-mini ``worlds.faces_mini.guides`` builds them from guide-only artefacts the evaluation never reads.

The options (``TextToUnlearnConfig``) live in ``erase.methods._text_to_unlearn_config``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace

import torch

from ..core.components import model_root
from ..core.errors import EraseError
from ..core.guides import Guides, unit
from ..core.image_views import clip_views, embed_pair
from ..core.latent_mapper import (
    MapperSettings,
    check_gate,
    concept_rates,
    edit,
    image_direction,
    sample_wplus,
    to_images,
    to_wplus,
    train_mapper,
)
from ..core.latent_probe import cached_probe
from ..core.loop import Eraser
from ..core.registry import register_method
from ..core.selection import ParamSelection
from ._text_to_unlearn_config import LAYERS, MODULATIONS, TextToUnlearnConfig

DIRECTION_FLOOR = 0.02  # the smallest CLIP-embedding change (unit embeddings) the frozen-pair cosine divides by


class _Chosen:
    """Which trained tensors the adaptive layers chosen last hold, in the order of the trained parameters (a
    checkpointed part of the training state)."""

    def __init__(self, n: int):
        self.mask = torch.ones(n, dtype=torch.bool)

    def state_dict(self) -> dict:
        return {"mask": self.mask.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.mask = state["mask"].clone()


class TextToUnlearn(Eraser):
    """Text-to-Unlearn: fine-tune StyleGAN2 so the prompt's edit direction no longer changes its images."""

    name = "text_to_unlearn"
    model_family = "stylegan"
    needs_guides = True
    guides: Guides | None = None  # set by the caller before the loop runs (erase_concept(..., guides=...))
    adaptive: _Chosen | None = None
    mixer = None  # the second mapper of edit_mix
    probe = None  # remove_target's linear probe in W (counterpart probe)

    def scope(self, pipe) -> str:
        if "generator" not in (getattr(pipe, "components", None) or {}):
            raise EraseError(
                "text_to_unlearn erases from a StyleGAN pipeline (a model with a 'generator' component); "
                "load one with pipelines.stylegan.StyleGANPipeline.from_pretrained"
            )
        return r"^generator\."

    def setup(self, pipe) -> ParamSelection:
        cfg, req = self.config, self.request
        if self.guides is None:
            raise EraseError(
                "text_to_unlearn needs guides (CLIP, perceptual, identity networks); on faces-mini the CLI builds "
                "them, in Python pass guides=worlds.faces_mini.guides.faces_mini_guides()"
            )
        self.prompt = cfg.prompt or (req.forget_prompts[0] if req.forget_prompts else None)
        if not self.prompt:
            raise EraseError("text_to_unlearn needs a prompt: --set prompt='a face with eyeglasses'")
        g = self.guides
        self.G = pipe.components["generator"]
        self.frozen = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.dev = next(self.G.parameters()).device
        self.rng = torch.Generator().manual_seed(req.seed)
        is_identity = req.kind == "identity"
        self.lambda_identity = 0.0 if is_identity else cfg.lambda_identity
        settings = MapperSettings(
            steps=cfg.mapper_steps,
            lr=cfg.mapper_lr,
            batch_size=cfg.mapper_batch,
            l2=cfg.mapper_l2,
            identity=cfg.mapper_identity,
            scale=cfg.edit_scale,
            truncation=cfg.truncation,
            seed=req.seed,
            views=cfg.mapper_views,
            attributes=cfg.mapper_attributes,
        )
        removing = replace(settings, remove=True).for_kind(req.kind)
        settings = settings.for_kind(req.kind)
        self.perceptual = (
            g.perceptual_named(cfg.perceptual_net, self.name, "lambda_perceptual / preserve_unedited > 0")
            if cfg.lambda_perceptual > 0 or cfg.preserve_unedited > 0
            else None
        )
        if self.lambda_identity > 0 or settings.identity > 0:
            g.require("identity", self.name, "lambda_identity / mapper_identity > 0")
        if cfg.lambda_attributes > 0 or settings.attributes > 0 or (cfg.edit_mix > 0 and cfg.mix_attributes > 0):
            g.require("other_attributes", self.name, "lambda_attributes / mapper_attributes / mix_attributes > 0")
        if (
            (cfg.preserve_where == "without_concept" and cfg.preserve_unedited > 0)
            or cfg.plain_direction > 0
            or cfg.remove_target > 0
            or cfg.mode == "probe"
        ):
            g.require(
                "concept_probability",
                self.name,
                "preserve_where without_concept / plain_direction / remove_target > 0 / mode probe",
            )
        self.remove_target = cfg.remove_target
        if (cfg.remove_target > 0 or cfg.mode == "probe") and self.perceptual is None:
            self.perceptual = g.perceptual_named(cfg.perceptual_net, self.name, "remove_target > 0 / mode probe")
        if cfg.mode == "probe" or (cfg.remove_target > 0 and cfg.counterpart == "probe"):
            self.probe = cached_probe(
                self.frozen,
                g,
                req.concept,
                n=cfg.probe_samples,
                seed=req.seed + 4,
                margin=cfg.probe_margin,
                truncation=cfg.truncation,
            )
            used = self.probe.accuracy >= cfg.probe_accuracy
            self.info["probe"] = {**self.probe.describe(), "used": used, "accuracy_floor": cfg.probe_accuracy}
            if not used and cfg.mode == "probe":
                raise EraseError(
                    f"text_to_unlearn: {req.concept!r} is not linear in this generator's W (the probe's held-out "
                    f"balanced accuracy is {self.probe.accuracy:.2f}, below probe_accuracy {cfg.probe_accuracy:g}), "
                    "so mode probe would move faces to some other face; use mode directional"
                )
            if not used:  # the concept is not linear in W: such a counterpart would be some other face
                self.remove_target = 0.0
        elif cfg.remove_target > 0:
            self.remover = train_mapper(self.frozen, self.prompt, g, removing, progress=False, concept=req.concept)
            before, after = concept_rates(
                self.frozen,
                self.remover,
                g,
                req.concept,
                cfg.gate_samples,
                req.seed + 3,
                cfg.edit_scale,
                cfg.truncation,
            )
            self.info["removal"] = {"rate_plain": before, "rate_removed": after}
        self.text = g.clip_text([self.prompt]).detach()
        if cfg.mode == "directional":

            def gated_mapper(spec: MapperSettings, key: str):
                """A mapper trained (or read from the cache) and its gate, recorded in info[key]."""
                mapper = train_mapper(self.frozen, self.prompt, g, spec, progress=False, concept=req.concept)
                self.info[key] = check_gate(
                    self.frozen,
                    mapper,
                    g,
                    req.concept,
                    self.prompt,
                    points=cfg.gate_points,
                    n=cfg.gate_samples,
                    seed=req.seed + 1,
                    scale=cfg.edit_scale,
                    truncation=cfg.truncation,
                )
                return mapper

            self.mapper = gated_mapper(settings, "gate")
            loose = replace(settings, identity=cfg.mix_identity, attributes=cfg.mix_attributes).for_kind(req.kind)
            if cfg.edit_mix > 0 and loose != settings:  # (for an identity both mappers' identity terms are off)
                self.mixer = gated_mapper(loose, "mix_gate")
            self.direction = image_direction(
                self.frozen,
                self.mapper,
                g,
                n=cfg.direction_samples,
                seed=req.seed + 2,
                scale=cfg.edit_scale,
                truncation=cfg.truncation,
                views=cfg.views if cfg.colour_augment else 0,
                colour=cfg.colour_augment,
            )
        root = model_root(pipe)
        if cfg.layers != "adaptive":
            pattern = LAYERS[cfg.layers]
        elif (
            cfg.adaptive_every > 0
        ):  # every synthesis conv may be chosen: all are in the patch, the unchosen get no step
            pattern = LAYERS["synthesis"]
        else:
            pattern = self._pattern(self._adaptive_layers(self.frozen))
        selection = ParamSelection.by_name(root, pattern)
        params = selection.parameters(root)
        selection.freeze_others_(root)
        if cfg.layers == "adaptive" and cfg.adaptive_every > 0:
            self.adaptive = _Chosen(len(params))
        # the mapping's equalised-lr multiplier (lr_mlp, 0.01) slows its Adam steps 100-fold: undone here, so that lr
        # means the same change of the effective weights whichever layers train
        lr = cfg.lr / self.G.config.lr_mlp if cfg.layers == "mapping" else cfg.lr
        self.params = params
        self.optimizer = torch.optim.Adam(params.values(), lr=lr, betas=(0.0, 0.99))
        self.info.update(
            {
                "prompt": self.prompt,
                "guides": g.describe(),
                "trainable": {
                    "layers": cfg.layers,
                    "pattern": pattern,
                    "tensors": len(params),
                    "weights": selection.count(root),
                    "adam_lr": lr,
                },
            }
        )
        return selection

    def training_state(self) -> dict[str, object]:
        return {**super().training_state(), **({"adaptive": self.adaptive} if self.adaptive is not None else {})}

    def _pattern(self, layers: list[str]) -> str:
        chosen = r"^generator\.(" + "|".join(n.replace(".", r"\.") for n in layers) + r")\."
        return f"{chosen}|{MODULATIONS}" if self.config.modulations == "all" else chosen

    def _adaptive_layers(self, G) -> list[str]:
        """The conv layers fed by the top_k W+ rows that a few CLIP-guided steps on W+
        (towards the prompt) move most."""
        cfg = self.config
        w0 = sample_wplus(G, 8, self.rng, cfg.truncation)
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.SGD([w], lr=0.01)
        for _ in range(3):
            loss = (1 - self._prompt_similarity(G, w)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        G.zero_grad(set_to_none=True)
        moved = (w.detach() - w0).abs().mean(dim=(0, 2))
        rows = moved.topk(min(cfg.top_k, len(moved))).indices.tolist()
        layers = sorted({name for r in rows for name in G.layers_of_row(r) if "to_rgb" not in name})
        self.info.setdefault("adaptive_rows", []).append(sorted(rows))
        if not layers:
            raise EraseError(f"the top {cfg.top_k} W+ rows feed only toRGB layers; raise --set top_k=...")
        return layers

    def _rechoose(self) -> None:
        """NADA's per-step choice: the layers of the rows G_t's own W+ edit moves most now."""
        layers = self._adaptive_layers(self.G)
        pattern = re.compile(self._pattern(layers))  # the same choice as a fixed set of adaptive layers
        self.adaptive.mask = torch.tensor([pattern.match(n) is not None for n in self.params])

    def _codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """This step's W+ codes of the same z under the frozen mapping and under G_t's (they differ only when the
        mapping is trained), and their edits: (w_f, w_t, w_hat_f, w_hat_t)."""
        cfg = self.config
        z = torch.randn(cfg.batch_size, self.G.config.z_dim, generator=self.rng)
        with torch.no_grad():
            w_f = to_wplus(self.frozen, z, cfg.truncation)
        w_t = to_wplus(self.G, z, cfg.truncation) if cfg.layers == "mapping" else w_f
        if cfg.mode != "directional":
            return w_f, w_t, None, None
        # with edit_mix, a random share of the latents is edited by the second mapper instead
        mixed = torch.rand(cfg.batch_size, generator=self.rng) < cfg.edit_mix if self.mixer is not None else None
        with torch.no_grad():
            w_hat_f = self._edit(w_f, mixed)
        if cfg.adversarial_share > 0:  # (refused with layers mapping, where w_hat_t is another code)
            attacked = torch.rand(cfg.batch_size, generator=self.rng) < cfg.adversarial_share
            if attacked.any():
                w_hat_f = w_hat_f.clone()
                w_hat_f[attacked] = self._attacked(w_hat_f[attacked])
        return w_f, w_t, w_hat_f, self._edit(w_t, mixed) if cfg.layers == "mapping" else w_hat_f

    def _attacked(self, w_hat: torch.Tensor) -> torch.Tensor:
        """``w_hat`` moved, by at most ``adversarial_radius`` in each W+ row, to where G_t draws the concept most
        (the guide CLIP's similarity to the prompt): normalised-gradient ascent, projected onto the radius after each
        step. The latents an attacker would ask with; no gradient reaches G_t's weights."""
        cfg = self.config
        delta = torch.zeros_like(w_hat, requires_grad=True)
        step = 2.5 * cfg.adversarial_radius / cfg.adversarial_steps
        for _ in range(cfg.adversarial_steps):
            score = self._prompt_similarity(self.G, w_hat + delta).sum()
            (grad,) = torch.autograd.grad(score, delta)
            with torch.no_grad():
                delta += step * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                delta *= (cfg.adversarial_radius / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1)
        return (w_hat + delta).detach()

    def _prompt_similarity(self, G, w: torch.Tensor) -> torch.Tensor:
        """Per W+ code: the guide CLIP's similarity of G's image to the prompt (differentiable)."""
        return (self.guides.clip_image(to_images(G.synthesis(w))) * self.text).sum(-1)

    def _edit(self, w: torch.Tensor, mixed: torch.Tensor | None) -> torch.Tensor:
        w_hat = edit(self.mapper, w, self.config.edit_scale)
        if mixed is None or not mixed.any():
            return w_hat
        return torch.where(mixed.view(-1, 1, 1), edit(self.mixer, w, self.config.edit_scale), w_hat)

    def step(self, i: int) -> dict[str, float]:
        cfg, g = self.config, self.guides
        if self.adaptive is not None and i % cfg.adaptive_every == 0:
            self._rechoose()
        w_f, w_t, w_hat_f, w_hat_t = self._codes()
        losses: dict[str, torch.Tensor] = {}
        plain: dict[
            str, torch.Tensor
        ] = {}  # G_f(w), G_t(w) and G_f(w)'s concept probability, each made at most once per step, only if needed

        def plain_f() -> torch.Tensor:
            if "f" not in plain:
                with torch.no_grad():
                    plain["f"] = to_images(self.frozen.synthesis(w_f))
            return plain["f"]

        def has_concept() -> torch.Tensor:  # 1 where the guides' classifier finds the concept in G_f(w), else 0
            if "has" not in plain:
                plain["has"] = (g.concept_probability(plain_f(), self.request.concept) >= 0.5).float()
            return plain["has"]

        def plain_t() -> torch.Tensor:
            if "t" not in plain:
                plain["t"] = to_images(self.G.synthesis(w_t))
            return plain["t"]

        if cfg.mode == "clip_distance":
            losses["clip"] = (
                (g.clip_image(clip_views(plain_t(), cfg.views, self.rng, colour=cfg.colour_augment)) * self.text)
                .sum(-1)
                .mean()
            )
        elif cfg.mode == "directional":
            with torch.no_grad():
                x_f = to_images(self.frozen.synthesis(w_hat_f))
            x_t = to_images(self.G.synthesis(w_hat_t))
            if cfg.direction_loss == "frozen_pair":
                losses["direction"] = self._frozen_pair(x_f, x_t).mean()
            else:
                e_plain, e_t = embed_pair(g.clip_image, plain_t(), x_t, cfg.views, self.rng, cfg.colour_augment)
                losses["direction"] = (unit(e_t - e_plain) * self.direction).sum(-1).mean()
            # what G_t(w_hat) is held to: G_f(w_hat) under ``anchor edited`` (the paper), G_f(w) under ``unedited``
            anchor = x_f if cfg.anchor == "edited" else plain_f()
            if cfg.lambda_perceptual > 0:
                losses["perceptual"] = cfg.lambda_perceptual * self.perceptual(x_t, anchor).mean()
            if self.lambda_identity > 0:
                losses["identity"] = self.lambda_identity * (1 - (g.identity(x_t) * g.identity(anchor)).sum(-1)).mean()
            if cfg.lambda_pixels > 0:
                losses["pixels"] = cfg.lambda_pixels * (x_t - anchor).pow(2).mean()
            if cfg.lambda_attributes > 0 and cfg.attributes_on != "plain":
                losses["attributes"] = cfg.lambda_attributes * g.other_attribute_kl(anchor, x_t, self.request.concept)
        if cfg.preserve_unedited > 0:
            keep = self.perceptual(plain_t(), plain_f())
            if cfg.lambda_pixels > 0:
                keep = keep + cfg.lambda_pixels / cfg.preserve_unedited * (plain_t() - plain_f()).pow(2).mean(
                    dim=(1, 2, 3)
                )
            if cfg.preserve_where == "without_concept":
                keep = keep * (1 - has_concept())
            losses["unedited"] = cfg.preserve_unedited * keep.mean()
        if cfg.mode == "probe":  # every face onto its counterpart (itself where the probe finds no concept)
            free = self.probe.counterpart(w_f)
            if cfg.layers == "mapping":
                losses["counterpart"] = (w_t - free).pow(2).mean()
            else:
                with torch.no_grad():
                    target = to_images(self.frozen.synthesis(free))
                losses["counterpart"] = self.perceptual(plain_t(), target).mean()
                if cfg.lambda_pixels > 0:
                    losses["counterpart_pixels"] = cfg.lambda_pixels * (plain_t() - target).pow(2).mean()
        if self.remove_target > 0:  # the faces with the concept: held to their concept-free counterpart
            has = has_concept()
            with torch.no_grad():
                free = (
                    self.probe.counterpart(w_f) if self.probe is not None else edit(self.remover, w_f, cfg.edit_scale)
                )
                target = to_images(self.frozen.synthesis(free))
            losses["removal"] = (
                self.remove_target * (self.perceptual(plain_t(), target) * has).sum() / has.sum().clamp_min(1)
            )
        if cfg.plain_direction > 0 and cfg.mode == "directional":
            has = has_concept()
            losses["plain_direction"] = (
                cfg.plain_direction * (self._frozen_pair(plain_f(), plain_t()) * has).sum() / has.sum().clamp_min(1)
            )
        if cfg.lambda_attributes > 0 and cfg.attributes_on != "edited":
            losses["attributes_plain"] = cfg.lambda_attributes * g.other_attribute_kl(
                plain_f(), plain_t(), self.request.concept
            )
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.adaptive is not None:  # the unchosen layers take no step (Adam skips a parameter without a gradient)
            for p, on in zip(self.params.values(), self.adaptive.mask.tolist()):
                if not on:
                    p.grad = None
        self.optimizer.step()
        return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    def _frozen_pair(self, x_f: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """Per image: 1 - cos(unit(E(x_f) - E(x_t)), i), averaged over the views (the change from the frozen image to
        the trained one should point along the concept's direction, i.e. remove it)."""
        e_f, e_t = embed_pair(
            self.guides.clip_image, x_f, x_t, self.config.views, self.rng, self.config.colour_augment
        )
        # G_t starts as G_f, so e_f - e_t starts at exactly 0, where a plain unit() has a gradient of about 1e12:
        # Adam's second moment would then hold every later step near zero; a floor on the norm keeps it finite
        d = e_f.detach() - e_t
        return (1 - ((d / d.norm(dim=-1, keepdim=True).clamp_min(DIRECTION_FLOOR)) * self.direction).sum(-1)).mean(0)


register_method(
    "text_to_unlearn",
    TextToUnlearnConfig,
    TextToUnlearn,
    "Text-to-Unlearn (StyleGAN2): a prompt's CLIP edit direction fine-tuned out of the synthesis network",
)
