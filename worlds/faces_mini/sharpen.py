"""The generator's last build step: a short fine-tune of its synthesis network that makes every face one the world
draws, read with the data's rates.

The GAN stage leaves mass between the world's discrete modes: a face between a named identity and an anonymous
one, a half smile, faint frames (issue 25's generator bars: confident samples on the smile and identity heads, the
smile rate within 8 points of the data's). This step samples the generator's own faces and, through the
*guide* classifier (never the evaluation's, which judges the result in ``check``), lowers

    entropy * mean over heads of H(p(G(w)))                       # each face one class per head
  + marginal * mean over heads of KL(data rates || batch mean p)  # with the data's rates, not one mode
  + keep * mean squared pixel distance to the GAN's own G(w)      # the same faces, only sharper

The mapping network stays as it was, so every seed keeps its w: the same faces, drawn more clearly.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import torch

from erase.core.files import swap_dir
from erase.core.latent_mapper import to_images, to_wplus
from pipelines.stylegan import StyleGANPipeline

from .world import HEADS

MARKER = "sharpen.json"  # in the generator folder: its settings, so a sharpened generator is never sharpened twice


def head_rates(labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each head's class frequencies in the labels of the data the generator was trained on."""
    return {h: torch.bincount(labels[h], minlength=n).float() / len(labels[h]) for h, n in HEADS.items()}


def sharpening_loss(logits: dict, data: dict, x: torch.Tensor, x_gan: torch.Tensor, recipe) -> dict:
    """The three terms (weighted) for one batch of the guide's logits on the fine-tuned faces ``x``."""
    entropy = sum(-(v.log_softmax(1) * v.softmax(1)).sum(1).mean() for v in logits.values()) / len(logits)
    marginal = 0.0
    for h, v in logits.items():
        mean = v.softmax(1).mean(0).clamp_min(1e-8)
        marginal = marginal + (data[h] * (data[h].clamp_min(1e-8).log() - mean.log())).sum()
    return {
        "entropy": recipe.sharpen_entropy * entropy,
        "marginal": recipe.sharpen_marginal * marginal / len(logits),
        "keep": recipe.sharpen_keep * (x - x_gan).pow(2).mean(),
    }


def sharpen_generator(recipe, folder: Path, guide, labels: dict, work: Path, device) -> dict:
    """Fine-tune the generator in ``folder`` in place (written to a temp folder, then swapped in); the GAN's own
    generator is kept in ``work``. Returns what was done (also written to ``folder / MARKER``)."""
    if (folder / MARKER).exists():
        raise RuntimeError(f"{folder} is already sharpened ({MARKER}); rebuild it with the generator stage first")
    gan_copy = work / "generator-gan"  # the GAN's own generator, refreshed from ``folder`` (not yet sharpened)
    staged = work / ".generator-gan.tmp"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(folder, staged)
    swap_dir(staged, gan_copy)
    pipe = StyleGANPipeline.from_pretrained(gan_copy)
    G = pipe.generator.float().to(device).train()
    gan = copy.deepcopy(G).eval().requires_grad_(False)
    guide = guide.to(device).eval().requires_grad_(False)
    data = {h: v.to(device) for h, v in head_rates(labels).items()}
    trained = [p for n, p in G.named_parameters() if n.startswith("synthesis.")]
    for n, p in G.named_parameters():
        p.requires_grad_(n.startswith("synthesis."))
    opt = torch.optim.Adam(trained, lr=recipe.sharpen_lr, betas=(0.0, 0.99))
    rng = torch.Generator().manual_seed(recipe.seed + 80)
    t0, log = time.time(), []
    for step in range(recipe.sharpen_steps):
        z = torch.randn(recipe.sharpen_batch, G.config.z_dim, generator=rng)
        with torch.no_grad():
            w = to_wplus(gan, z)
            x_gan = to_images(gan.synthesis(w))
        x = to_images(G.synthesis(w))
        terms = sharpening_loss(guide(x), data, x, x_gan, recipe)
        opt.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        opt.step()
        if step % 50 == 0 or step == recipe.sharpen_steps - 1:
            log.append({"step": step, **{k: round(float(v.detach()), 5) for k, v in terms.items()}})
    record = {
        "steps": recipe.sharpen_steps,
        "lr": recipe.sharpen_lr,
        "batch": recipe.sharpen_batch,
        "weights": {
            "entropy": recipe.sharpen_entropy,
            "marginal": recipe.sharpen_marginal,
            "keep": recipe.sharpen_keep,
        },
        "guide": "guide-classifier",
        "trained": "synthesis",
        "seconds": round(time.time() - t0, 1),
        "log": log,
    }
    tmp = folder.with_name(f".{folder.name}.sharpened")
    shutil.rmtree(tmp, ignore_errors=True)
    StyleGANPipeline(G.eval().cpu()).save_pretrained(tmp, dtype=getattr(torch, recipe.gan_save_dtype))
    (tmp / MARKER).write_text(json.dumps(record, indent=2))
    swap_dir(tmp, folder)
    return record
