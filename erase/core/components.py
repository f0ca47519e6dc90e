"""The trainable components of any model, under one naming scheme shared by patches, selections and the loop.

A *model* is anything whose weights an erasure changes:

* a diffusers pipeline (its ``components`` dict: ``unet``, ``text_encoder``, ``vae`` ...),
* our StyleGAN pipeline or any object with a ``components`` dict of modules (``generator`` ...),
* a plain ``nn.Module`` (one component named ``model``).

Parameter names carry their component prefix (``unet.down_blocks.0...``), as patch keys do. This is
the only place that enumerates components; everything else goes through it.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def model_components(model) -> dict[str, nn.Module]:
    """{component name: module} for the modules of ``model`` (see the module docstring)."""
    comps = getattr(model, "components", None)
    if isinstance(comps, dict):
        return {name: m for name, m in comps.items() if isinstance(m, nn.Module)}
    if isinstance(model, nn.Module):
        return {"model": model}
    raise TypeError(
        f"cannot find the modules of a {type(model).__name__}: pass a pipeline with .components or an nn.Module"
    )


def named_parameters(model) -> dict[str, nn.Parameter]:
    """Every parameter of ``model``, keyed with its component prefix."""
    return {f"{c}.{n}": p for c, m in model_components(model).items() for n, p in m.named_parameters()}


def component_of(name: str) -> str:
    return name.split(".", 1)[0]


def model_root(model) -> nn.ModuleDict:
    """The components under one root module, so ``root.named_parameters()`` names carry the component prefix."""
    return nn.ModuleDict(model_components(model))


def model_device(model) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    dev = getattr(model, "device", None)
    if isinstance(dev, torch.device):
        return dev
    for p in named_parameters(model).values():
        return p.device
    return torch.device("cpu")


def floating_dtypes(model) -> dict[str, torch.dtype]:
    """The floating dtype of each component (that of its first floating parameter)."""
    out = {}
    for c, m in model_components(model).items():
        for p in m.parameters():
            if p.is_floating_point():
                out[c] = p.dtype
                break
    return out


@contextmanager
def float32_master(model):
    """Run the body with every component in float32 (master weights), then cast back to the load dtype.

    Half-precision weights cannot be trained with Adam (updates underflow, masked entries go NaN), so
    training always happens on float32 weights, as diffusers' training scripts keep them. Casting fp16 /
    bf16 up to float32 is exact, so the base weights the loop snapshots equal the loaded ones; casting
    the restored base back down is exact too.
    """
    dtypes = floating_dtypes(model)
    half = {c: d for c, d in dtypes.items() if d in (torch.float16, torch.bfloat16)}
    comps = model_components(model)
    for c in half:
        comps[c].to(torch.float32)
    try:
        yield dtypes
    finally:
        for c, d in half.items():
            comps[c].to(d)
