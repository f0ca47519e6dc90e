"""Model families erasekit loads: diffusers Stable Diffusion pipelines and our StyleGAN2 pipeline."""

from __future__ import annotations

import json
from pathlib import Path


def is_stylegan(model: str | Path) -> bool:
    """A folder written by ``StyleGANPipeline.save_pretrained`` (config.json with model_type stylegan2)."""
    cfg = Path(model) / "config.json"
    try:
        return cfg.is_file() and json.loads(cfg.read_text()).get("model_type") == "stylegan2"
    except (OSError, ValueError, AttributeError):
        return False


def load_model(model: str | Path, *, device: str = "cpu", dtype=None, xformers: bool = False):
    """A StyleGANPipeline for a StyleGAN folder, else a diffusers StableDiffusionPipeline (see ``load_pipeline``);
    shipped models load by name (``canvas-mini``, ``faces-mini``)."""
    from erase.core.locations import resolve_model

    model = resolve_model(model)
    if Path(model).suffix.lower() in (
        ".pkl",
        ".pt",
        ".pth",
    ):  # rosinality checkpoints; NVIDIA pickles are refused unread
        from .stylegan import load_rosinality

        return load_rosinality(model, device=device)
    if (
        is_stylegan(model) or (Path(model) / "generator.safetensors").exists()
    ):  # the latter: a clear error when config.json is missing
        from .stylegan import StyleGANPipeline

        return StyleGANPipeline.from_pretrained(model, device=device)
    from .stable_diffusion import load_pipeline

    return load_pipeline(model, device=device, dtype=dtype, xformers=xformers)
