"""StyleGAN2 training for faces-mini: non-saturating logistic loss, lazy R1 on the reals, an EMA generator.

Deterministic by the recipe's seed, resumable from the checkpoint in the work folder (every
``checkpoint_every`` iterations, loaded with ``weights_only=True``). When the attribute classifier is already
built, every checkpoint also logs how the EMA generator's attribute rates compare with the data's, so a run
can be watched converging (``gan_log.jsonl``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pipelines.stylegan import Discriminator, Generator, StyleGANConfig, StyleGANPipeline

from .assets import load_judge
from .check import confident_mask, judge_all, rates


def gan_config(recipe, part: str = "generator"):
    """The StyleGAN config of the generator, or of the discriminator (the generator's but for its own widths)."""
    cfg = dict(recipe.gan)
    channels = recipe.gan_d_channels if part == "discriminator" and recipe.gan_d_channels else cfg["channels"]
    cfg["channels"] = {int(k): int(v) for k, v in channels.items()}
    return StyleGANConfig(**cfg)


def _ema_beta(recipe, batch: int, nimg: int) -> float:
    ema_nimg = recipe.ema_kimg * 1000
    if recipe.ema_rampup:
        ema_nimg = min(ema_nimg, nimg * recipe.ema_rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


def _reals(images: torch.Tensor, idx: torch.Tensor, g: torch.Generator, device) -> torch.Tensor:
    """uint8 renders -> float in [-1, 1], mirrored at random (faces-mini is left-right symmetric in law)."""
    x = images[idx].float().div_(127.5).sub_(1)
    flip = (torch.rand(len(idx), generator=g) < 0.5).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x).to(device)


def attribute_probe(generator, judge, target_rates: dict, n: int = 500, seed: int = 123_456) -> dict:
    """Rates of the binary attributes and hair colours on ``n`` samples at truncation 1 vs the data's."""
    with torch.no_grad():
        z = torch.randn(n, generator.config.z_dim, generator=torch.Generator().manual_seed(seed))
        x = (
            generator(z.to(next(generator.parameters()).device), noise_mode="const").float().cpu().clamp(-1, 1) + 1
        ) / 2
    probs = judge_all(judge, x)
    got = rates({h: p.argmax(1) for h, p in probs.items()})
    maxdev = max(abs(got[k] - target_rates[k]) for k in got)
    return {
        "rates": got,
        "max_deviation_points": round(100 * maxdev, 1),
        "confident": float(confident_mask(probs).float().mean()),
        "confident_per_head": {h: float((p.max(1).values > 0.9).float().mean()) for h, p in probs.items()},
    }


def train_generator(recipe, images: torch.Tensor, labels: dict, work: Path, out: Path, device: torch.device) -> None:
    g = torch.Generator().manual_seed(recipe.seed + 60)
    torch.manual_seed(recipe.seed + 60)
    cfg = gan_config(recipe)
    G, D = Generator(cfg).to(device).train(), Discriminator(gan_config(recipe, "discriminator")).to(device).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    c = recipe.r1_every / (recipe.r1_every + 1)  # lazy regularisation: the D optimiser's lr and betas are corrected
    g_opt = torch.optim.Adam(G.parameters(), lr=recipe.gan_lr, betas=(0.0, 0.99))
    d_opt = torch.optim.Adam(D.parameters(), lr=recipe.gan_lr * c, betas=(0.0, 0.99**c))
    ckpt_path, start = work / "gan_checkpoint.pt", 0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        for module, key in ((G, "G"), (D, "D"), (G_ema, "G_ema"), (g_opt, "g_opt"), (d_opt, "d_opt")):
            module.load_state_dict(ck[key])
        g.set_state(ck["rng"])
        torch.set_rng_state(ck["torch_rng"])
        start = int(ck["iteration"])
        print(f"resuming generator training at iteration {start}")
    judge_dir = Path(os.environ.get("ERASEKIT_FACES_PROBE_JUDGE", out.parent / "classifier"))
    judge = load_judge("classifier", judge_dir) if (judge_dir / "model.safetensors").exists() else None
    target_rates = rates(labels)
    log = open(work / "gan_log.jsonl", "a")
    B = recipe.gan_batch
    bar = tqdm(
        range(start, recipe.gan_iterations),
        initial=start,
        total=recipe.gan_iterations,
        desc="stylegan2",
        mininterval=2,
    )
    for it in bar:
        # discriminator: logistic loss on reals and fakes, R1 on the reals every r1_every iterations
        real = _reals(images, torch.randint(0, len(images), (B,), generator=g), g, device)
        z = torch.randn(B, cfg.z_dim, generator=g).to(device)
        with torch.no_grad():
            fake = G(z, noise_mode="random")
        d_loss = F.softplus(D(fake)).mean() + F.softplus(-D(real)).mean()
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        if it % recipe.r1_every == 0:
            real = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(D(real).sum(), real, create_graph=True)
            r1 = grad.pow(2).sum(dim=(1, 2, 3)).mean()
            d_opt.zero_grad(set_to_none=True)
            (recipe.r1_gamma / 2 * r1 * recipe.r1_every).backward()
            d_opt.step()
        # generator: non-saturating loss; the mapping output's running mean is the truncation centre
        z = torch.randn(B, cfg.z_dim, generator=g).to(device)
        w = G.mapping(z)
        fake = G.synthesis(w.unsqueeze(1).expand(-1, G.n_latent, -1), noise_mode="random")
        g_loss = F.softplus(-D(fake)).mean()
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        G.update_w_avg(w.detach())
        with torch.no_grad():
            beta = _ema_beta(recipe, B, (it + 1) * B)
            for pe, p in zip(G_ema.parameters(), G.parameters()):
                pe.lerp_(p, 1 - beta)
            for be, b in zip(G_ema.buffers(), G.buffers()):
                be.copy_(b)
        if it % 100 == 0:
            bar.set_postfix(d=f"{d_loss.item():.3f}", g=f"{g_loss.item():.3f}")
        if (it + 1) % recipe.checkpoint_every == 0 and it + 1 < recipe.gan_iterations:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save(
                {
                    "G": G.state_dict(),
                    "D": D.state_dict(),
                    "G_ema": G_ema.state_dict(),
                    "g_opt": g_opt.state_dict(),
                    "d_opt": d_opt.state_dict(),
                    "rng": g.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "iteration": it + 1,
                },
                tmp,
            )
            os.replace(tmp, ckpt_path)
            entry = {
                "iteration": it + 1,
                "kimg": round((it + 1) * B / 1000, 1),
                "d_loss": d_loss.item(),
                "g_loss": g_loss.item(),
            }
            if judge is not None:
                entry["probe"] = attribute_probe(G_ema, judge, target_rates)
            log.write(json.dumps(entry) + "\n")
            log.flush()
    log.close()
    pipe = StyleGANPipeline(G_ema.cpu())
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, dtype=getattr(torch, recipe.gan_save_dtype))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
