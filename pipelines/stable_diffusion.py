"""Load diffusers Stable-Diffusion-family pipelines offline, from a folder, the HF cache or a single file."""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from erase.core.components import named_parameters
from erase.core.errors import EraseError
from erase.core.files import swap_dir, writing
from erase.core.locations import resolve_model
from erase.core.patch import applied_patches, apply_patch, remove_patch, set_patch_scale


class PipelineLoadError(EraseError):
    """The given model is not a loadable text-to-image pipeline."""


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_pipeline(
    model: str | Path,
    *,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    local_files_only: bool = True,
    xformers: bool = False,
):
    """A ``StableDiffusionPipeline`` from a diffusers folder, a shipped model's name (``canvas-mini``), a cached hub
    id, or a single-file checkpoint.

    Nothing is downloaded unless ``local_files_only=False``. The safety checker is not loaded. Attention uses
    PyTorch SDPA (diffusers' default); ``xformers=True`` switches to xformers' memory-efficient attention (GPU only).
    ``dtype`` may be "fp16" / "bf16" / "fp32" or a torch dtype (half precision is meant for GPUs).
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise PipelineLoadError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    model = str(resolve_model(model))
    path = Path(model)
    kwargs = {"safety_checker": None, "requires_safety_checker": False}
    if dtype is not None:
        import diffusers
        from packaging.version import Version

        # diffusers >= 0.35 names it `dtype` (and deprecates `torch_dtype`)
        kwargs["dtype" if Version(diffusers.__version__) >= Version("0.35") else "torch_dtype"] = dtype
    try:
        with _quiet_loading():
            pipe = _from_pretrained(model, path, kwargs, local_files_only)
    except PipelineLoadError:
        raise
    except (OSError, ValueError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PipelineLoadError(f"cannot load pipeline {model!r}: {first}") from e
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    if xformers:
        try:
            pipe.enable_xformers_memory_efficient_attention()
        except Exception as e:  # noqa: BLE001 - xformers raises many kinds of errors when unusable
            raise PipelineLoadError(
                f"xformers attention is not usable here ({str(e).splitlines()[0]}); drop "
                "--xformers to use PyTorch SDPA"
            ) from e
    return pipe


@contextmanager
def _quiet_loading():
    """diffusers and transformers draw a progress bar per component while loading; keep stderr for what matters."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            diffusers_logging.enable_progress_bar()
        if was[1]:
            transformers_logging.enable_progress_bar()


def _from_pretrained(model: str, path: Path, kwargs: dict, local_files_only: bool):
    from diffusers import StableDiffusionPipeline

    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise PipelineLoadError(
                f"{path} is not a diffusers pipeline folder (no model_index.json); pass a "
                "folder saved with save_pretrained"
            )
        pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=True, **kwargs)
    elif path.suffix in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise PipelineLoadError(f"checkpoint file {path} does not exist")
        pipe = StableDiffusionPipeline.from_single_file(model, local_files_only=local_files_only, **kwargs)
    elif path.exists():
        raise PipelineLoadError(f"{path} is neither a diffusers folder nor a .safetensors/.ckpt checkpoint")
    elif "/" in model and not model.startswith((".", "/")):
        pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=local_files_only, **kwargs)
    else:
        raise PipelineLoadError(
            f"model {model!r} not found: pass a diffusers folder, a cached hub id (org/name) or a checkpoint file"
        )
    return pipe


# ---------------------------------------------------------------------------
# Erasure patches on a pipeline. The surface mirrors diffusers' LoRA API: apply (load + fuse with a
# scale), set_patch_scale, remove (exact unfuse + unload), save_erased. Apply / remove work on any
# model and live with the patch format (erase.core.patch); they are re-exported here for pipeline users.

__all__ = [
    "load_pipeline",
    "save_erased",
    "apply_patch",
    "remove_patch",
    "set_patch_scale",
    "applied_patches",
    "named_parameters",
]


def model_card(history: list[dict], base_model: str | None, metrics: dict | None = None) -> str:
    """README.md with the YAML front matter the Hugging Face Hub reads: base model, library, tags, erased concepts,
    method and preset, and the measured UA / IRA / CRA / retain fidelity when given."""
    concepts = [h["request"]["concept"] for h in history if h.get("request")]
    methods = sorted({h["method"] for h in history if h.get("method")})
    front = ["---", "library_name: diffusers", "tags:", "- stable-diffusion", "- concept-erasure", "- erasekit"]
    front += [f"- {m}" for m in methods]
    if base_model:
        front.append(f"base_model: {json.dumps(str(base_model))}")
    front.append("erased_concepts: " + json.dumps(concepts))
    front += ["---", ""]
    body = [
        f"# Erased: {', '.join(concepts) or 'nothing'}",
        "",
        f"This pipeline is {base_model or 'a base model'} with {len(history)} erasure patch(es) from erasekit folded "
        "into its weights. It loads with plain `diffusers.StableDiffusionPipeline.from_pretrained`.",
        "",
        "| concept | kind | anchor | method | preset | scale |",
        "|---|---|---|---|---|---|",
    ]
    for h in history:
        r = h.get("request") or {}
        body.append(
            f"| {r.get('concept')} | {r.get('kind')} | {r.get('anchor')} | {h.get('method')} | "
            f"{h.get('preset')} | {h.get('scale')} |"
        )
    if metrics:

        def pct(x):
            return "n/a" if x is None else f"{100 * x:.1f}"

        psnr = metrics.get("retained_psnr")
        body += [
            "",
            "## Measured",
            "",
            f"UA {pct(metrics.get('ua'))}, IRA {pct(metrics.get('ira'))}, CRA {pct(metrics.get('cra'))}"
            + (f", same-seed retained PSNR {psnr:.1f} dB" if psnr is not None else "")
            + " (erasekit evaluation; see its report).",
            "",
        ]
    body += ["", "Patch details: `erasure_history.json`.", ""]
    return "\n".join(front + body)


def save_erased(pipe, out: str | os.PathLike, overwrite: bool = False, metrics: dict | None = None) -> Path:
    """Save the patched pipeline as a plain diffusers folder (loads with StableDiffusionPipeline.from_pretrained).

    Written to a temp folder and renamed; the applied patches' configs go to ``erasure_history.json`` and a
    model card (``README.md`` with Hub front matter; ``metrics`` when the erasure was evaluated) describes them.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PipelineLoadError(
            f"{out} exists and is not empty; pass overwrite=True / --overwrite or choose another folder"
        )
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(out, cleanup=(tmp,)):  # out of space: nothing half-written, an earlier folder intact
        pipe.save_pretrained(str(tmp), safe_serialization=True)
    history = [
        {
            "name": a["name"],
            "scale": a["scale"],
            **{
                k: a["config"].get(k)
                for k in ("method", "preset", "request", "base_model", "patch_sha256", "package_version")
            },
        }
        for a in applied_patches(pipe)
    ]
    (tmp / "erasure_history.json").write_text(json.dumps(history, indent=2, default=str))
    base = next((h["base_model"] for h in history if h.get("base_model")), getattr(pipe, "name_or_path", None))
    (tmp / "README.md").write_text(model_card(history, base, metrics))
    swap_dir(tmp, out)  # an overwritten folder is replaced whole, never left half-removed
    return out
