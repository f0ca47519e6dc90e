"""The Python API behind ``erase run``: resolve a method + preset + overrides, train, save the patch.

    from erase.api import erase_concept
    patch = erase_concept(pipe, "salun", request, out_dir="runs/watercolor", preset="canvas-mini")
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from . import __version__
from .errors import EraseError
from .loop import LoopConfig, run
from .patch import PATCH_FILE, ErasurePatch
from .registry import get_method
from .request import EraseRequest

PRESET_DIR = Path(__file__).resolve().parents[1] / "assets" / "presets"


def list_presets(method: str) -> list[str]:
    folder = PRESET_DIR / method
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_preset(method: str, preset: str | None) -> dict:
    """A preset name (assets/presets/<method>/<name>.json) or a path to a JSON file of config fields."""
    if preset is None:
        return {}
    path = Path(preset)
    if not path.is_file():
        path = PRESET_DIR / method / f"{preset}.json"
    if not path.is_file():
        raise EraseError(f"unknown preset {preset!r} for {method}; known presets: {', '.join(list_presets(method)) or 'none'}")
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def resolve_config(method: str, preset: str | None = None, overrides: dict | None = None):
    """Method config = defaults <- preset <- overrides; unknown fields are an error."""
    spec = get_method(method)
    values = {**load_preset(method, preset), **(overrides or {})}
    known = {f.name: f for f in fields(spec.config_cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise EraseError(f"unknown {method} option(s) {unknown}; known: {', '.join(sorted(known))}")
    cfg = spec.config_cls(**values)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024), "peak RSS of the process"


def erase_concept(pipe, method: str, request: EraseRequest, out_dir: str | Path, *, preset: str | None = None,
                  overrides: dict | None = None, resume: bool = False, overwrite: bool = False, progress: bool = True,
                  model_id: str | None = None) -> ErasurePatch:
    """Erase ``request`` from ``pipe`` with ``method``; writes the patch, resolved_config.json and the log to ``out_dir``.

    The pipeline is left unpatched; apply the returned patch with ``pipelines.stable_diffusion.apply_patch``.
    """
    out_dir = Path(out_dir)
    if (out_dir / PATCH_FILE).exists() and not overwrite:
        raise EraseError(f"{out_dir} already holds a patch; pass --overwrite or choose another --out")
    spec = get_method(method)
    cfg = resolve_config(method, preset, overrides)
    request.validate()
    resolved = {"method": method, "preset": preset, "config": asdict(cfg), "request": request.to_dict(),
                "model": model_id, "package_version": __version__}
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".resolved_config.json.tmp"
    tmp.write_text(json.dumps(resolved, indent=2))
    os.replace(tmp, out_dir / "resolved_config.json")

    if pipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(pipe.device)
    t0 = time.time()
    eraser = spec.eraser_cls(cfg, request)
    patch_config = {"method": method, "method_config": asdict(cfg), "request": request.to_dict(), "preset": preset,
                    "base_model": model_id, "package_version": __version__}
    patch_dtype = getattr(torch, getattr(cfg, "patch_dtype", "float32"))
    patch = run(eraser, pipe, out_dir, LoopConfig(steps=cfg.steps, resume=resume, progress=progress,
                                                   checkpoint_every=getattr(cfg, "checkpoint_every", 100)),
                patch_config, patch_dtype=patch_dtype)
    mem, mem_kind = peak_memory_bytes(pipe.device)
    patch.config["efficiency"] = {"erase_seconds": round(time.time() - t0, 2), "peak_memory_bytes": mem,
                                  "peak_memory_kind": mem_kind, "patch_bytes": patch.nbytes()}
    patch.save_pretrained(out_dir, overwrite=overwrite)
    return patch
