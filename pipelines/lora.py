"""An erasure patch as a LoRA that plain diffusers loads (``pipe.load_lora_weights(folder)``, ``set_adapters``).

Each touched weight's delta is factored by SVD, ``delta ~= B @ A`` at a chosen rank (linear layers as they are,
conv kernels flattened to (out, in x kh x kw) with A the kernel and B a 1x1 conv, as peft does); a bias delta
becomes the LoRA's ``lora_B.bias`` (peft's ``lora_bias``, which then holds zeros for the other modules; diffusers
cannot fuse such a LoRA into layers without a bias, but loads and scales it). Saved in the peft / diffusers format
without alphas, which diffusers loads at scale 1 per module (``W + B @ A``). What a LoRA cannot hold (normalisation
weights, embeddings) is refused.

``rank_for_energy(patch, tolerance)`` picks each tensor's rank from its spectrum: the smallest rank whose left-out
energy is at most ``tolerance`` of the delta's (``tolerance=0`` gives the delta's exact numerical rank, which is
the whole delta up to float rounding). ``erase export`` searches the tolerance against images.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from erase.core.errors import EraseError
from erase.core.patch import ErasurePatch

LORA_FILE = "pytorch_lora_weights.safetensors"
INFO_FILE = "erasekit_lora.json"
COMPONENTS = ("unet", "text_encoder")


class LoRAExportError(EraseError):
    """A patch that a LoRA cannot express, or a folder that cannot be written."""


def _module_of(pipe, name: str) -> tuple[str, str, nn.Module, str]:
    """(component, module path, module, parameter kind) of a patch tensor name like ``unet.<path>.weight``."""
    component, _, rest = name.partition(".")
    path, _, kind = rest.rpartition(".")
    if component not in COMPONENTS:
        raise LoRAExportError(f"{name}: LoRA export covers {' and '.join(COMPONENTS)} tensors, not {component}")
    module = getattr(pipe, component).get_submodule(path)
    return component, path, module, kind


def _loraable(module: nn.Module, kind: str) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d)) and kind in ("weight", "bias")


def check_loraable(pipe, patch: ErasurePatch) -> None:
    bad = [n for n in patch.names() if not _loraable(*_module_of(pipe, n)[2:])]
    if bad:
        raise LoRAExportError(
            f"the patch changes {len(bad)} tensor(s) a LoRA cannot hold (e.g. {bad[0]}: only linear and conv "
            "weights and biases); ship it as a patch or save the erased pipeline with save_erased"
        )


def _matrix(delta: torch.Tensor) -> torch.Tensor:
    return delta.reshape(delta.shape[0], -1).double()


@torch.no_grad()
def spectra(patch: ErasurePatch) -> dict[str, torch.Tensor]:
    """Singular values of every weight delta (as a matrix), float64."""
    return {n: torch.linalg.svdvals(_matrix(patch.dense_delta(n))) for n in patch.names() if n.endswith(".weight")}


def rank_for_energy(spectrum: torch.Tensor, tolerance: float) -> int:
    """Smallest rank whose left-out energy (sum of the dropped squared singular values) is at most ``tolerance``
    of the total; 0 tolerance: the numerical rank (singular values above float32 rounding of the largest)."""
    if spectrum.numel() == 0 or float(spectrum[0]) == 0.0:
        return 1
    if tolerance <= 0:
        return max(1, int((spectrum > spectrum[0] * spectrum.numel() * torch.finfo(torch.float32).eps).sum()))
    energy = spectrum.pow(2)
    left_out = energy.flip(0).cumsum(0).flip(0)  # left_out[k]: energy of singular values k, k+1, ...
    keep = int((left_out / energy.sum() > tolerance).sum())  # ranks whose tail is still too large
    return max(1, keep)


@torch.no_grad()
def lora_layers(pipe, patch: ErasurePatch, ranks: dict[str, int]) -> dict[str, dict[str, torch.Tensor]]:
    """{component: peft-format state dict} for the patch at ``ranks`` (per weight tensor name)."""
    check_loraable(pipe, patch)
    out: dict[str, dict[str, torch.Tensor]] = {c: {} for c in COMPONENTS}
    modules = {}
    for name in patch.names():
        component, path, module, kind = _module_of(pipe, name)
        modules.setdefault((component, path), (module, {}))[1][kind] = patch.dense_delta(name).float()
    for (component, path), (module, deltas) in modules.items():
        weight = module.weight
        if "weight" in deltas:
            delta = deltas["weight"]
            u, s, vh = torch.linalg.svd(_matrix(delta), full_matrices=False)
            r = max(1, min(ranks[f"{component}.{path}.weight"], len(s)))
            b, a = (u[:, :r] * s[:r]).float(), vh[:r].float()
        else:  # only the bias moved: a rank-1 LoRA whose factors are zero
            r = 1
            b, a = torch.zeros(weight.shape[0], 1), torch.zeros(1, weight[0].numel())
        if isinstance(module, nn.Conv2d):
            a, b = a.reshape(r, *weight.shape[1:]), b.reshape(weight.shape[0], r, 1, 1)
        out[component][f"{path}.lora_A.weight"] = a.contiguous()
        out[component][f"{path}.lora_B.weight"] = b.contiguous()
        if "bias" in deltas:
            out[component][f"{path}.lora_B.bias"] = deltas["bias"].contiguous()
    if any(
        k.endswith(".lora_B.bias") for sd in out.values() for k in sd
    ):  # peft's lora_bias is all or nothing: zeros elsewhere
        for sd in out.values():
            for key in [k for k in sd if k.endswith(".lora_B.weight")]:
                sd.setdefault(key[: -len("weight")] + "bias", torch.zeros(sd[key].shape[0]))
    return {c: sd for c, sd in out.items() if sd}


def save_lora(
    pipe, patch: ErasurePatch, ranks: dict[str, int], out: str | os.PathLike, info: dict | None = None
) -> Path:
    """Write the LoRA (``pytorch_lora_weights.safetensors``) and ``erasekit_lora.json`` (ranks, source patch,
    ``info``) into a new folder ``out``, through a temporary folder renamed into place."""
    from diffusers import StableDiffusionPipeline

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise LoRAExportError(f"{out} exists and is not empty; choose another --out")
    layers = lora_layers(pipe, patch, ranks)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    StableDiffusionPipeline.save_lora_weights(
        str(tmp),
        unet_lora_layers=layers.get("unet"),
        text_encoder_lora_layers=layers.get("text_encoder"),
        weight_name=LORA_FILE,
    )
    record = {
        "format": "diffusers peft LoRA (no alphas: scale 1 per module)",
        "ranks": ranks,
        "source_patch": {k: patch.config.get(k) for k in ("method", "preset", "request", "base_model")},
        "patch_sha256": patch.config.get("patch_sha256"),
        **(info or {}),
    }
    (tmp / INFO_FILE).write_text(json.dumps(record, indent=2, default=str))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
