"""Noise-prediction helpers shared by the diffusion erasure methods."""

from __future__ import annotations

import torch
from torch import nn


def pipeline_root(pipe) -> nn.ModuleDict:
    """The pipeline's trainable components under one root, so parameter names carry their prefix."""
    return nn.ModuleDict({name: m for name, m in pipe.components.items() if isinstance(m, nn.Module)})


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states (N, L, D) for prompts, as the pipeline conditions its UNet."""
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt")
    return pipe.text_encoder(tok.input_ids.to(pipe.device))[0]


@torch.no_grad()
def sample_latents(pipe, prompts: list[str], seeds: list[int], *, steps: int, guidance: float, batch_size: int = 64) -> torch.Tensor:
    """The model's own generations for prompts, as UNet-space latents (N, C, h, w); one seed per image."""
    out = []
    gen_device = "cpu" if pipe.device.type == "mps" else pipe.device
    for i in range(0, len(prompts), batch_size):
        gens = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds[i : i + batch_size]]
        r = pipe(prompt=prompts[i : i + batch_size], num_inference_steps=steps, guidance_scale=guidance,
                 generator=gens, output_type="latent")
        out.append(r.images.float())
    return torch.cat(out)


@torch.no_grad()
def encode_images(pipe, images: torch.Tensor) -> torch.Tensor:
    """Float images (N, 3, H, W) in [0, 1] -> UNet-space latents (posterior mode x scaling factor)."""
    vae = pipe.vae
    z = vae.encode((images * 2 - 1).to(pipe.device, vae.dtype)).latent_dist.mode()
    return z.float() * vae.config.scaling_factor


def alphas_cumprod(pipe) -> torch.Tensor:
    return pipe.scheduler.alphas_cumprod.to(pipe.device, torch.float32)


def noisy(z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, acp: torch.Tensor) -> torch.Tensor:
    a = acp[t].view(-1, *([1] * (z0.ndim - 1)))
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


def cfg_eps(unet, zt, t, cond, uncond, guidance: float) -> torch.Tensor:
    """Classifier-free-guidance-combined noise prediction: e_u + w (e_c - e_u)."""
    both = unet(torch.cat([zt, zt]), torch.cat([t, t]), torch.cat([uncond, cond])).sample
    e_u, e_c = both.chunk(2)
    return e_u + guidance * (e_c - e_u)
