"""Batched, per-sample-seeded image generation with a diffusers text-to-image pipeline.

Each image gets its own ``torch.Generator`` seeded with its seed, so an image
depends only on (prompt, seed, sampler settings), never on batch order or size.
"""

from __future__ import annotations

import numpy as np
import torch

from .samplers import protocol_scheduler


@torch.no_grad()
def generate(
    pipe,
    prompts: list[str],
    seeds: list[int],
    *,
    steps: int = 50,
    guidance: float = 7.5,
    negative_prompt: str = "",
    batch_size: int = 64,
    height: int | None = None,
    width: int | None = None,
    eta: float = 0.0,
    progress: bool = True,
    prompt_embeds: torch.Tensor | None = None,
) -> np.ndarray:
    """Generate one image per (prompt, seed): uint8 array (N, H, W, 3).

    With ``prompt_embeds`` (N, L, D) the text encoder is skipped: each image is conditioned on its row (an
    attack's prompt with learned token embeddings); ``prompts`` then only counts the images.
    """
    from tqdm.auto import tqdm

    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
    pipe.set_progress_bar_config(disable=True)
    device = pipe.device
    gen_device = "cpu" if device.type == "mps" else device
    out = []
    negative = None  # with prompt_embeds: the negative prompt's encoding, once for every batch
    if prompt_embeds is not None and guidance > 1:
        negative = pipe.encode_prompt([negative_prompt], device, 1, False)[0]
    bar = tqdm(total=len(prompts), desc="generate", unit="img", disable=not progress, mininterval=2)
    for i in range(0, len(prompts), batch_size):
        chunk_p, chunk_s = prompts[i : i + batch_size], seeds[i : i + batch_size]
        gens = [torch.Generator(gen_device).manual_seed(int(s)) for s in chunk_s]
        text = {"prompt": chunk_p, "negative_prompt": [negative_prompt] * len(chunk_p) if guidance > 1 else None}
        if prompt_embeds is not None:
            rows = prompt_embeds[i : i + batch_size].to(device, pipe.text_encoder.dtype)
            text = {
                "prompt_embeds": rows,
                "negative_prompt_embeds": None if negative is None else negative.expand(len(rows), -1, -1),
            }
        images = pipe(
            **text,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
            height=height,
            width=width,
            eta=eta,
            output_type="np",
        ).images
        out.append(np.round(np.clip(images, 0, 1) * 255).astype(np.uint8))
        bar.update(len(chunk_p))
    bar.close()
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


def protocol_settings(protocol) -> dict:
    """The sampler settings a protocol prescribes, as ``generate``'s keyword arguments (its scheduler
    is ``protocol_scheduler``'s)."""
    return {
        "steps": protocol.steps,
        "guidance": protocol.guidance,
        "negative_prompt": protocol.negative_prompt,
        "height": protocol.resolution,
        "width": protocol.resolution,
        "eta": protocol.eta,
    }


def protocol_images(
    pipe,
    protocol,
    prompts: list[str],
    seeds: list[int],
    *,
    batch_size: int = 64,
    prompt_embeds: torch.Tensor | None = None,
) -> np.ndarray:
    """One image per (prompt, seed) with the protocol's sampler and settings, no progress bar."""
    with protocol_scheduler(pipe, protocol.sampler):
        return generate(
            pipe,
            prompts,
            seeds,
            **protocol_settings(protocol),
            batch_size=batch_size,
            progress=False,
            prompt_embeds=prompt_embeds,
        )


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
