"""Rebuild every faces-mini artefact from scratch, deterministically.

    python -m worlds.faces_mini.train [--out assets/faces-mini] [--work runs/faces-mini-build] [--stages ...]

Stages (each skipped when done, so an interrupted build resumes; the generator also resumes from its last
checkpoint): ``classifier`` and ``classifier_b`` (attribute judges with other seeds and widths: the second one
only validates the first), ``identity`` (the identity embedder), ``clip_guide`` and ``clip_judge`` (two tiny
open_clip models on templated, paraphrased captions; the guide drives Text-to-Unlearn, the judge only evaluates
it), ``generator`` (StyleGAN2: non-saturating loss, lazy R1, EMA), ``sharpen`` (its synthesis fine-tuned
through the guide classifier so that faces sit on the world's modes: ``worlds.faces_mini.sharpen``) and ``check``
(generator quality judged by the classifier; writes quality.json). ``recipe.json`` records seeds, steps, wall times
and the measured quality.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from worlds.canvas_mini.data import AugmentConfig, augment
from worlds.staged_build import (
    StagedBuild,
    build_parser,
    chosen_stages,
    cosine_lr,
    new_open_clip,
    save_open_clip,
    seed_all,
    set_recipe_fields_or_exit,
)

from .assets import ASSETS_DIR, load_judge, save_module
from .check import run_check
from .gan_training import train_generator
from .models import (
    CLIP_MODELS,
    AttributeClassifier,
    AttributeClassifierConfig,
    IdentityEmbedder,
    IdentityEmbedderConfig,
)
from .render import render_set, world_digest
from .world import HEADS, IDENTITY_NAMES, SEED_BASE, geometry_vector, hard_negative_captions, sample_spec


@dataclass
class Recipe:
    seed: int = 0
    judge_renders: int = 40_000
    judge_steps: int = 1500
    judge_batch: int = 64
    judge_lr: float = 2e-3
    classifier: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(p_vae=0.0, shift=2, gain=0.1, offset=0.05, p_blur=0.4, noise=0.04)
    )
    classifier_b: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(p_vae=0.0, shift=1, gain=0.15, offset=0.08, p_blur=0.5, noise=0.05)
    )
    classifier_channels: tuple = (32, 64, 128)
    classifier_b_channels: tuple = (24, 48, 96)
    identity_channels: tuple = (32, 64, 96)
    # the guides: networks only Text-to-Unlearn consults (its gate, perceptual and identity terms), other seeds, widths
    # and renders than the evaluation's judges, so that the method is never trained against what judges it
    guide_classifier: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(p_vae=0.0, shift=2, gain=0.12, offset=0.06, p_blur=0.3, noise=0.03)
    )
    guide_classifier_channels: tuple = (24, 48, 80)
    # a second guide classifier (same renders and augmentation, its own seed and widths) through which the method
    # keeps the other attributes: the generator is sharpened through the first one, and a KL through that network
    # recoloured the erased faces' lips (README, "Text-to-Unlearn that erases")
    guide_classifier_b_channels: tuple = (32, 48, 96)
    guide_identity_channels: tuple = (24, 48, 80)
    clip_renders: int = 40_000
    clip_steps: int = (
        2500  # at 2,000 on the five-tint world the judge CLIP read smile at 84.9% zero-shot (bar 85%); 2,500: 99.6%
    )
    clip_batch: int = 128
    # 2e-3 left both CLIPs blind to smile (zero-shot 54 / 53%): at 1e-3 the guide reaches 99.8% on smile; a GPU probe
    # of 1,450 steps: 5e-4 89%, 2e-4 71%, 5e-3 48%. The judge needed a third layer as well (see CLIP_MODELS)
    clip_lr: float = 1e-3
    gan_renders: int = 50_000
    # n_mlp 8 (StyleGAN2's mapping depth) against 4: confident on 17.0 vs 13.8-14.8% of 500 probe samples at 26k
    # iterations, 19.0% of 1,000 at 30k (FD 3.72) against 16.1% for the 4-layer generator at 36k (FD 4.71)
    gan: dict = field(
        default_factory=lambda: {
            "resolution": 32,
            "z_dim": 128,
            "style_dim": 128,
            "n_mlp": 8,
            "channels": {"4": 128, "8": 128, "16": 64, "32": 32},
        }
    )
    # the discriminator's widths per resolution (None: the generator's). A generator twice as wide at 16 and 32 px
    # against the narrow discriminator: 133 ms per iteration on 2 threads (both wide: 220; both narrow: 93)
    gan_d_channels: dict | None = field(default_factory=lambda: {"4": 128, "8": 64, "16": 32, "32": 16})
    gan_save_dtype: str = "float16"  # the shipped generator's weights (loading casts them back to float32)
    gan_iterations: int = 40_000
    gan_batch: int = 16
    gan_lr: float = 0.0025
    r1_gamma: float = 0.1
    r1_every: int = 16
    ema_kimg: float = 10.0
    ema_rampup: float = 0.05
    checkpoint_every: int = 2000
    # the generator's last step (worlds.faces_mini.sharpen): its synthesis fine-tuned through the guide classifier
    # so that every face is read as one class per head (entropy) with the data's rates (marginal KL), held to the
    # GAN's own faces (pixels). Measured in README ("The generator's sharpening step").
    sharpen_steps: int = 300
    sharpen_lr: float = 5e-4
    sharpen_batch: int = 32
    sharpen_entropy: float = 1.0
    sharpen_marginal: float = 1.0
    sharpen_keep: float = 10.0
    check_samples: int = 1000
    # the held-out mapper that `erase eval` trains through clip-judge to ask for a target (worlds.faces_mini.answers):
    # read from these assets' recipe.json, so that a smoke build's evaluation stays a check of the plumbing
    eval_mapper_steps: int = 1500


class Builder(StagedBuild):
    command = "python -m worlds.faces_mini.train"

    def renders(self, use: str, n: int):
        """(uint8 images, labels, seeds) of ``n`` renders from ``use``'s seed range, cached in the work folder."""
        from safetensors.torch import load_file, save_file

        path = self.work / f"renders_{use}_{n}_{world_digest()}.safetensors"  # a changed world renders afresh
        if path.exists():
            d = load_file(str(path))
        else:
            images, labels = render_set(n, SEED_BASE[use], progress=True)
            d = {"images": images, **{f"label_{k}": v for k, v in labels.items()}}
            save_file(d, str(path))
        return (
            d["images"],
            {k[len("label_") :]: v for k, v in d.items() if k.startswith("label_")},
            list(range(SEED_BASE[use], SEED_BASE[use] + n)),
        )

    # -- judges ------------------------------------------------------------------------------------------
    def _train_classifier(self, name: str, aug: AugmentConfig, channels, seed: int, use: str) -> None:
        g = seed_all(seed)
        images, labels, _ = self.renders(use, self.r.judge_renders)
        model = AttributeClassifier(AttributeClassifierConfig(channels=list(channels))).to(self.device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=self.r.judge_lr, weight_decay=1e-4)
        bar = tqdm(range(self.r.judge_steps), desc=name, mininterval=2)
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, self.r.judge_steps, 100, self.r.judge_lr, floor=0.02)
            idx = torch.randint(0, len(images), (self.r.judge_batch,), generator=g)
            x = augment(images[idx].float() / 255, None, aug, g).to(self.device)
            logits = model(x)
            loss = sum(F.cross_entropy(logits[h], labels[h][idx].to(self.device), label_smoothing=0.05) for h in HEADS)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        save_module(
            model.eval().cpu(),
            self.out / name,
            {"augment": aug.to_dict(), "seed": seed, "steps": self.r.judge_steps, "renders": use},
        )

    def stage_classifier(self) -> None:
        self._train_classifier(
            "classifier", self.r.classifier, self.r.classifier_channels, self.r.seed + 10, "classifier"
        )

    def stage_classifier_b(self) -> None:
        self._train_classifier(
            "classifier_b", self.r.classifier_b, self.r.classifier_b_channels, self.r.seed + 20, "classifier_b"
        )

    def stage_identity(self) -> None:
        self._train_identity("identity", self.r.identity_channels, self.r.seed + 30, "identity")

    def stage_guide_classifier(self) -> None:
        self._train_classifier(
            "guide-classifier", self.r.guide_classifier, self.r.guide_classifier_channels, self.r.seed + 60, "guide"
        )

    def stage_guide_classifier_b(self) -> None:
        r = self.r
        self._train_classifier(
            "guide-classifier-b", r.guide_classifier, r.guide_classifier_b_channels, r.seed + 95, "guide"
        )

    def stage_guide_identity(self) -> None:
        self._train_identity("guide-identity", self.r.guide_identity_channels, self.r.seed + 70, "guide")

    def _train_identity(self, name: str, channels, seed: int, use: str) -> None:
        g = seed_all(seed)
        images, labels, seeds = self.renders(use, self.r.judge_renders)
        geometry = torch.tensor([geometry_vector(sample_spec(s)) for s in seeds], dtype=torch.float32)
        geometry = (geometry - geometry.mean(0)) / geometry.std(0).clamp_min(1e-6)
        cfg = IdentityEmbedderConfig(
            n_identities=HEADS["identity"], geometry_dim=geometry.shape[1], channels=list(channels)
        )
        model = IdentityEmbedder(cfg).to(self.device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=self.r.judge_lr, weight_decay=1e-4)
        bar = tqdm(range(self.r.judge_steps), desc=name, mininterval=2)
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, self.r.judge_steps, 100, self.r.judge_lr, floor=0.02)
            idx = torch.randint(0, len(images), (self.r.judge_batch,), generator=g)
            x = augment(images[idx].float() / 255, None, self.r.classifier, g).to(self.device)
            e = model.raw(x)
            loss = F.cross_entropy(model.identity_head(e), labels["identity"][idx].to(self.device)) + F.mse_loss(
                model.geometry_head(e), geometry[idx].to(self.device)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        save_module(model.eval().cpu(), self.out / name, {"seed": seed, "steps": self.r.judge_steps, "renders": use})

    def _train_clip(self, name: str, seed: int, use: str) -> None:
        g = seed_all(seed)
        rng = random.Random(seed)
        images, _, seeds = self.renders(use, self.r.clip_renders)
        specs = [sample_spec(s) for s in seeds]
        model, tokenizer, mean, std = new_open_clip(name, CLIP_MODELS[name], self.work, self.device)
        opt = torch.optim.AdamW(model.parameters(), lr=self.r.clip_lr, weight_decay=0.01)
        bar = tqdm(range(self.r.clip_steps), desc=name, mininterval=2)
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, self.r.clip_steps, 100, self.r.clip_lr, floor=0.02)
            idx = torch.randint(0, len(images), (self.r.clip_batch,), generator=g)
            x = augment(images[idx].float() / 255, None, self.r.classifier, g)
            pairs = [hard_negative_captions(specs[i], rng) for i in idx.tolist()]
            texts = tokenizer([p for p, _ in pairs] + [n for _, n in pairs]).to(self.device)
            img = F.normalize(model.encode_image(((x - mean) / std).to(self.device)), dim=-1)
            txt = F.normalize(model.encode_text(texts), dim=-1)
            logits = (
                model.logit_scale.exp() * img @ txt.T
            )  # (B, 2B): each image against every caption and hard negative
            target = torch.arange(len(idx), device=self.device)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, : len(idx)].T, target)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        save_open_clip(model, CLIP_MODELS[name], self.out / name.replace("faces-mini-", ""))

    def stage_clip_guide(self) -> None:
        self._train_clip("faces-mini-clip-guide", self.r.seed + 40, "clip")

    def stage_clip_judge(self) -> None:
        self._train_clip("faces-mini-clip-judge", self.r.seed + 50, "clip_eval")

    # -- generator ---------------------------------------------------------------------------------------
    def stage_generator(self) -> None:
        images, labels, _ = self.renders("generator", self.r.gan_renders)
        train_generator(self.r, images, labels, self.work, self.out / "generator", self.device)

    def stage_sharpen(self) -> None:
        from .sharpen import sharpen_generator

        _, labels, _ = self.renders("generator", self.r.gan_renders)
        guide = load_judge("guide-classifier", self.out / "guide-classifier")
        sharpen_generator(self.r, self.out / "generator", guide, labels, self.work, self.device)

    def stage_check(self) -> None:
        run_check(self.out, self.work, self.r, progress=True)

    def recipe_extra(self) -> dict:
        return {"identities": IDENTITY_NAMES}


STAGES = [
    "classifier",
    "classifier_b",
    "identity",
    "guide_classifier",
    "guide_classifier_b",
    "guide_identity",
    "clip_guide",
    "clip_judge",
    "generator",
    "sharpen",
    "check",
]


def main(argv=None) -> None:
    p = build_parser(
        "Rebuild the faces-mini artefacts (StyleGAN2 generator, judges, two tiny CLIPs).",
        ASSETS_DIR,
        "runs/faces-mini-build",
        STAGES,
    )
    p.add_argument("--gan-iterations", type=int, default=None, help="override the recipe's generator iterations")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = Recipe()
    if args.smoke:
        recipe = Recipe(
            judge_renders=256,
            judge_steps=3,
            clip_renders=256,
            clip_steps=3,
            gan_renders=256,
            gan_iterations=4,
            checkpoint_every=2,
            check_samples=64,
            r1_every=2,
            eval_mapper_steps=20,
            sharpen_steps=2,
            sharpen_batch=4,
        )
    if args.gan_iterations is not None:
        recipe.gan_iterations = args.gan_iterations
    set_recipe_fields_or_exit(p, recipe, args.overrides)
    stages = chosen_stages(p, args.stages, STAGES)
    Builder(recipe, Path(args.out), Path(args.work), args.device).run(stages)


if __name__ == "__main__":
    main()
