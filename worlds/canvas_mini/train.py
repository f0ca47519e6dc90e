"""Rebuild every canvas-mini artefact from scratch, deterministically.

    python -m worlds.canvas_mini.train [--out assets/canvas-mini] [--work runs/canvas-mini-build]

Stages run in order and each is skipped when its output already exists in the
work folder, so an interrupted build resumes (the UNet also resumes from its
last checkpoint). Finished artefacts are moved into ``--out`` only at the end
of each stage. ``recipe.json`` records seeds, steps, wall times and the
measured quality (from ``worlds.canvas_mini.check``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from worlds.staged_build import (
    StagedBuild,
    build_parser,
    chosen_stages,
    cosine_lr,
    new_open_clip,
    replace_dir,
    save_open_clip,
    seed_all,
    set_recipe_fields_or_exit,
)

from .assets import ASSETS_DIR, save_classifier
from .check import run_check
from .data import AugmentConfig, RenderSet, augment, render_set
from .models import (
    CLIP_CONFIG,
    CLIP_MODEL_NAME,
    ClassifierConfig,
    ConceptClassifier,
    make_schedulers,
    make_text_encoder,
    make_unet,
    make_vae,
)
from .tokenizer import DEFAULT_MERGES, build_tokenizer
from .world import OBJECTS, STYLES, caption


@dataclass
class Recipe:
    seed: int = 0
    tokenizer_merges: int = DEFAULT_MERGES
    max_length: int = 24
    generator_renders_per_pair: int = 100
    classifier_renders_per_pair: int = 60
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 1e-3
    classifier_steps: int = 2000
    classifier_batch: int = 64
    classifier_lr: float = 2e-3
    classifier: AugmentConfig = field(default_factory=AugmentConfig)
    classifier_b: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(p_vae=0.7, shift=1, gain=0.15, offset=0.08, p_blur=0.5, noise=0.05)
    )
    classifier_b_channels: tuple = (24, 48, 96)
    clip_steps: int = 1500
    clip_batch: int = 128
    clip_lr: float = 2e-3
    unet_channels: tuple = (32, 64, 64)
    unet_steps: int = 9000
    unet_batch: int = 64
    unet_lr: float = 8e-4
    unet_warmup: int = 200
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    checkpoint_every: int = 1000
    # Styles whose images the generator never sees (tokenizer, VAE, UNet and text encoder): the gold
    # exact-unlearning reference that erasure methods are benchmarked against.
    exclude_styles: tuple = ()


class Builder(StagedBuild):
    command = "python -m worlds.canvas_mini.train"

    def __init__(self, recipe: Recipe, out: Path, work: Path, device: str):
        super().__init__(recipe, out, work, device)
        self._cache: dict[str, object] = {}

    def renders(self, use: str, per_pair: int) -> RenderSet:
        from safetensors.torch import load_file, save_file

        key = f"{use}_{per_pair}"
        if key in self._cache:
            return self._cache[key]
        path = self.work / f"renders_{key}.safetensors"
        if path.exists():
            d = load_file(str(path))
            rs = RenderSet(d["images"], d["style"], d["obj"])
        else:
            rs = render_set(use, per_pair, progress=True)
            save_file({"images": rs.images, "style": rs.style, "obj": rs.obj}, str(path))
        if use == "generator" and self.r.exclude_styles:
            keep = ~torch.isin(rs.style, torch.tensor([STYLES.index(s) for s in self.r.exclude_styles]))
            rs = RenderSet(rs.images[keep], rs.style[keep], rs.obj[keep])
        self._cache[key] = rs
        return rs

    def tokenizer(self):
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(self.work / "tokenizer"))

    def vae(self):
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(str(self.work / "vae")).to(self.device).eval()

    @torch.no_grad()
    def vae_roundtrip(self, rs: RenderSet, name: str) -> torch.Tensor:
        """VAE reconstructions of a render set (uint8), cached: what generations look like."""
        from safetensors.torch import load_file, save_file

        path = self.work / f"recon_{name}.safetensors"
        if path.exists():
            return load_file(str(path))["images"]
        vae, out = self.vae(), []
        for i in tqdm(range(0, len(rs), 256), desc=f"vae round-trip {name}", mininterval=2):
            x = rs.float_images(slice(i, i + 256)).to(self.device) * 2 - 1
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample
            out.append(((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
        images = torch.cat(out)
        save_file({"images": images}, str(path))
        return images

    # -- stages ------------------------------------------------------------
    def stage_tokenizer(self) -> None:
        tok = build_tokenizer(self.r.tokenizer_merges, self.r.max_length)
        tok.save_pretrained(str(self.work / "tokenizer"))

    def stage_vae(self) -> None:
        g = seed_all(self.r.seed + 1)
        rs = self.renders("generator", self.r.generator_renders_per_pair)
        vae = make_vae().to(self.device).train()
        opt = torch.optim.AdamW(vae.parameters(), lr=self.r.vae_lr, weight_decay=0.0)
        bar = tqdm(range(self.r.vae_steps), desc="vae", mininterval=2)
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, self.r.vae_steps, 100, self.r.vae_lr)
            idx = torch.randint(0, len(rs), (self.r.vae_batch,), generator=g)
            x = rs.float_images(idx).to(self.device) * 2 - 1
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample(generator=None)).sample
            loss = (rec - x).abs().mean() + 0.5 * F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        vae.eval()
        with torch.no_grad():  # scale latents to unit variance, as SD's scaling_factor does
            idx = torch.randperm(len(rs), generator=g)[:1024]
            z = vae.encode(rs.float_images(idx).to(self.device) * 2 - 1).latent_dist.mode()
            vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        vae.save_pretrained(str(self.work / "vae"))

    def _train_classifier(self, kind: str, aug: AugmentConfig, channels, seed: int, use: str, folder: Path) -> None:
        g = seed_all(seed)
        rs = self.renders(use, self.r.classifier_renders_per_pair)
        recon = self.vae_roundtrip(rs, use)
        classes = STYLES if kind == "style" else OBJECTS
        labels = rs.style if kind == "style" else rs.obj
        model = ConceptClassifier(ClassifierConfig(kind, list(classes), list(channels))).to(self.device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=self.r.classifier_lr, weight_decay=1e-4)
        steps = self.r.classifier_steps
        bar = tqdm(range(steps), desc=f"classifier {kind} ({folder.name})", mininterval=2)
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, steps, 100, self.r.classifier_lr, floor=0.02)
            idx = torch.randint(0, len(rs), (self.r.classifier_batch,), generator=g)
            x = augment(rs.float_images(idx), recon[idx].float() / 255.0, aug, g).to(self.device)
            loss = F.cross_entropy(model(x), labels[idx].to(self.device), label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        model.eval().cpu()
        save_classifier(model, folder, {"augment": aug.to_dict(), "seed": seed, "steps": steps, "train_seeds": use})

    def stage_classifiers(self) -> None:
        for i, kind in enumerate(("style", "object")):
            self._train_classifier(
                kind, self.r.classifier, (16, 32, 64), self.r.seed + 10 + i, "classifier", self.out / "classifiers"
            )

    def stage_classifiers_b(self) -> None:
        for i, kind in enumerate(("style", "object")):
            self._train_classifier(
                kind,
                self.r.classifier_b,
                self.r.classifier_b_channels,
                self.r.seed + 20 + i,
                "classifier_b",
                self.out / "classifiers_b",
            )

    def stage_clip(self) -> None:
        g = seed_all(self.r.seed + 30)
        rs = self.renders("clip", self.r.classifier_renders_per_pair)
        recon = self.vae_roundtrip(rs, "clip")
        model, tokenizer, mean, std = new_open_clip(CLIP_MODEL_NAME, CLIP_CONFIG, self.work, self.device)
        # Three caption families: full captions, style-only and object-only texts.
        full = tokenizer([caption(s, o) for s in STYLES for o in OBJECTS]).to(self.device)
        style_txt = tokenizer([f"An image in {s.replace('_', ' ')} style." for s in STYLES]).to(self.device)
        obj_txt = tokenizer([f"A {o} image." for o in OBJECTS]).to(self.device)
        opt = torch.optim.AdamW(model.parameters(), lr=self.r.clip_lr, weight_decay=0.01)
        aug = self.r.classifier
        bar = tqdm(range(self.r.clip_steps), desc="clip", mininterval=2)
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, self.r.clip_steps, 100, self.r.clip_lr, floor=0.02)
            idx = torch.randint(0, len(rs), (self.r.clip_batch,), generator=g)
            x = augment(rs.float_images(idx), recon[idx].float() / 255.0, aug, g)
            img = F.normalize(model.encode_image(((x - mean) / std).to(self.device)), dim=-1)
            scale = model.logit_scale.exp()
            loss = 0.0
            for texts, target, w in (
                (full, rs.style[idx] * len(OBJECTS) + rs.obj[idx], 1.0),
                (style_txt, rs.style[idx], 0.5),
                (obj_txt, rs.obj[idx], 0.5),
            ):
                txt = F.normalize(model.encode_text(texts), dim=-1)
                loss = loss + w * F.cross_entropy(scale * img @ txt.T, target.to(self.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        save_open_clip(model, CLIP_CONFIG, self.out / "clip")

    def stage_unet(self) -> None:
        from diffusers import StableDiffusionPipeline

        g = seed_all(self.r.seed + 40)
        tok = self.tokenizer()
        vae = self.vae()
        rs = self.renders("generator", self.r.generator_renders_per_pair)
        with torch.no_grad():  # encode once; sample from the stored posterior every step
            mus, sds = [], []
            for i in tqdm(range(0, len(rs), 256), desc="encode latents", mininterval=2):
                d = vae.encode(rs.float_images(slice(i, i + 256)).to(self.device) * 2 - 1).latent_dist
                mus.append(d.mean.cpu())
                sds.append(d.std.cpu())
            mu, sd = torch.cat(mus), torch.cat(sds)
        scale = vae.config.scaling_factor
        ids = tok(
            rs.captions(), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        empty = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids

        unet = make_unet(self.r.unet_channels).to(self.device).train()
        te = make_text_encoder(tok).to(self.device).train()
        params = list(unet.parameters()) + list(te.parameters())
        ema = [p.detach().clone() for p in params]
        opt = torch.optim.AdamW(params, lr=self.r.unet_lr, weight_decay=0.0)
        train_sched, sample_sched = make_schedulers()
        alphas = train_sched.alphas_cumprod.to(self.device)
        ckpt_path, start = self.work / "unet_checkpoint.pt", 0
        if ckpt_path.exists():
            ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            unet.load_state_dict(ck["unet"])
            te.load_state_dict(ck["te"])
            opt.load_state_dict(ck["opt"])
            for e, v in zip(ema, ck["ema"]):
                e.copy_(v)
            g.set_state(ck["rng"])
            torch.set_rng_state(ck["torch_rng"])
            start = int(ck["step"])
            print(f"resuming UNet training at step {start}")
        log = open(self.work / "unet_log.jsonl", "a")
        bar = tqdm(
            range(start, self.r.unet_steps),
            initial=start,
            total=self.r.unet_steps,
            desc="unet+text encoder",
            mininterval=2,
        )
        for step in bar:
            lr = cosine_lr(step, self.r.unet_steps, self.r.unet_warmup, self.r.unet_lr)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, len(rs), (self.r.unet_batch,), generator=g)
            z0 = (mu[idx] + sd[idx] * torch.randn(mu[idx].shape, generator=g)) * scale
            noise = torch.randn(z0.shape, generator=g)
            t = torch.randint(0, train_sched.config.num_train_timesteps, (len(idx),), generator=g)
            drop = torch.rand(len(idx), generator=g) < self.r.caption_dropout
            batch_ids = torch.where(drop[:, None], empty, ids[idx])
            z0, noise, t = z0.to(self.device), noise.to(self.device), t.to(self.device)
            a = alphas[t].view(-1, 1, 1, 1)
            zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
            pred = unet(zt, t, te(batch_ids.to(self.device))[0]).sample
            loss = F.mse_loss(pred, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            with torch.no_grad():
                for e, p in zip(ema, params):
                    e.lerp_(p.detach(), 1 - self.r.ema_decay)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
                log.write(json.dumps({"step": step, "loss": loss.item(), "lr": lr}) + "\n")
                log.flush()
            if (step + 1) % self.r.checkpoint_every == 0 and step + 1 < self.r.unet_steps:
                tmp = ckpt_path.with_suffix(".tmp")
                torch.save(
                    {
                        "unet": unet.state_dict(),
                        "te": te.state_dict(),
                        "opt": opt.state_dict(),
                        "ema": ema,
                        "rng": g.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "step": step + 1,
                    },
                    tmp,
                )
                os.replace(tmp, ckpt_path)
        log.close()
        with torch.no_grad():  # ship the EMA weights
            for e, p in zip(ema, params):
                p.copy_(e)
        pipe = StableDiffusionPipeline(
            vae=vae.cpu(),
            text_encoder=te.eval().cpu(),
            tokenizer=tok,
            unet=unet.eval().cpu(),
            scheduler=sample_sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        tmp = self.out / ".pipeline.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        replace_dir(tmp, self.out / "pipeline")

    def stage_check(self) -> None:
        run_check(self.out, progress=True)  # writes quality.json, which write_recipe folds in


STAGES = ["tokenizer", "vae", "classifiers", "clip", "unet", "classifiers_b", "check"]


def main(argv=None) -> None:
    p = build_parser(
        "Rebuild the canvas-mini artefacts (tiny SD pipeline, classifiers, tiny CLIP).",
        ASSETS_DIR,
        "runs/canvas-mini-build",
        STAGES,
    )
    p.add_argument("--unet-steps", type=int, default=None, help="override the recipe's UNet steps")
    p.add_argument(
        "--exclude-style",
        action="append",
        default=[],
        metavar="STYLE",
        help="train the generator without this style's images (repeatable): the gold retrained reference; "
        "use with --stages tokenizer,vae,unet and an --out of its own, e.g. assets/canvas-mini/gold-Watercolor",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = Recipe()
    if args.smoke:
        recipe = Recipe(
            generator_renders_per_pair=2,
            classifier_renders_per_pair=2,
            vae_steps=3,
            classifier_steps=3,
            clip_steps=3,
            unet_steps=4,
            unet_warmup=1,
            checkpoint_every=2,
        )
    if args.exclude_style:
        from .world import check_style

        for style in args.exclude_style:
            try:
                check_style(style)
            except ValueError as e:
                p.error(str(e))
        recipe.exclude_styles = tuple(args.exclude_style)
    if args.unet_steps is not None:
        recipe.unet_steps = args.unet_steps
    set_recipe_fields_or_exit(p, recipe, args.overrides)
    stages = chosen_stages(p, args.stages, STAGES)
    Builder(recipe, Path(args.out), Path(args.work), args.device).run(stages)


if __name__ == "__main__":
    main()
