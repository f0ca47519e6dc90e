"""The Python API behind ``erase run``: resolve a method + preset + overrides, train, save the patch.

    from erase.api import erase_concept
    patch = erase_concept(pipe, "salun", request, out_dir="runs/watercolor", preset="canvas-mini")

Nothing the user already has is lost: an output folder holding a finished patch is refused unless
``overwrite``; one holding an interrupted run is refused unless ``resume`` (same settings only) or
``overwrite``; ``resume`` over a finished patch of the same settings returns it untouched. Everything
is validated before the first byte is written, and a run that fails before its first checkpoint
leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from . import __version__
from .core.components import model_device
from .core.errors import EraseError
from .core.files import check_writable, file_sha256, hold_folder, read_json_object, write_json_atomic
from .core.locations import preset_dir
from .core.loop import CKPT_DIR, LoopConfig, checkpoint_meta, run
from .core.memory import peak_memory_bytes
from .core.patch import CONFIG_FILE, PATCH_FILE, ErasurePatch
from .core.registry import coerce_value, get_method
from .core.request import KINDS, EraseRequest

RESOLVED_FILE = "resolved_config.json"


def list_presets(method: str) -> list[str]:
    folder = preset_dir() / method
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def _read_preset(method: str, preset: str) -> tuple[dict, dict[str, dict]]:
    """(fields, fields by kind of concept) of a preset name (assets/presets/<method>/<name>.json) or JSON file."""
    path = Path(preset)
    if not path.is_file():
        path = preset_dir() / method / f"{preset}.json"
    if not path.is_file():
        raise EraseError(
            f"unknown preset {preset!r} for {method}; known presets: "
            f"{', '.join(list_presets(method)) or 'none'}, or a JSON file"
        )
    data = read_json_object(path, holds=f"{method} options", fix="fix the preset file or pass another --preset")
    per_kind = data.pop("for_kind", {})
    if (
        not isinstance(per_kind, dict)
        or not set(per_kind) <= set(KINDS)
        or not all(isinstance(v, dict) for v in per_kind.values())
    ):
        raise EraseError(
            f"preset {path}: for_kind must map a kind of concept ({', '.join(KINDS)}) to an object of options, e.g. "
            '{"identity": {"mode": "probe"}}; fix the preset file'
        )
    return data, {
        kind: {k: v for k, v in fields.items() if not k.startswith("_")} for kind, fields in per_kind.items()
    }


def load_preset(method: str, preset: str | None, kind: str | None = None) -> dict:
    """A preset's config fields; its ``for_kind`` object holds fields that apply on top for one kind of concept only
    (``{"identity": {...}}``)."""
    if preset is None:
        return {}
    data, per_kind = _read_preset(method, preset)
    values = {**data, **per_kind.get(kind, {})} if kind is not None else data
    return {k: v for k, v in values.items() if not k.startswith("_")}


def preset_kinds(method: str, preset: str | None) -> dict[str, dict]:
    """The fields a preset sets for one kind of concept only (its ``for_kind``), by kind."""
    return _read_preset(method, preset)[1] if preset is not None else {}


def resolve_config(method: str, preset: str | None = None, overrides: dict | None = None, kind: str | None = None):
    """Method config = defaults <- preset (with its fields for ``kind``) <- overrides; unknown fields and wrong types
    are errors."""
    spec = get_method(method)
    values = {**load_preset(method, preset, kind), **(overrides or {})}
    known = {f.name: f for f in fields(spec.config_cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise EraseError(f"unknown {method} option(s) {unknown}; known: {', '.join(sorted(known))}")
    typed = {k: coerce_value(spec.config_cls, known[k], v, method) for k, v in values.items()}
    cfg = spec.config_cls(**typed)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def run_identity(method: str, cfg, request: EraseRequest, model_id: str | None, guides=None) -> dict:
    """What makes two runs the same run (checked by --resume and against a finished patch); the guides a method
    consulted count when there are any."""
    identity = {
        "method": method,
        "config": asdict(cfg),
        "request": request.to_dict(),
        "model": None if model_id is None else str(model_id),
    }
    if guides is not None:
        identity["guides"] = guides.describe()
    return identity


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def _finished_identity(out_dir: Path) -> dict | None:
    try:
        cfg = json.loads((out_dir / CONFIG_FILE).read_text())
        identity = {
            "method": cfg["method"],
            "config": cfg["method_config"],
            "request": cfg["request"],
            "model": cfg.get("base_model"),
        }
        if "guides" in cfg:
            identity["guides"] = cfg["guides"]
        return identity
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _torn_save(out_dir: Path) -> Path | None:
    """The config of a patch save that a kill cut between its two renames: the tensors file is in place and its
    config, which names that file's SHA-256, is still in the save's temp folder. None when there is no such save."""
    if not (out_dir / PATCH_FILE).is_file() or (out_dir / CONFIG_FILE).exists():
        return None
    for config in out_dir.glob(f".patch-*.tmp/{CONFIG_FILE}"):
        try:
            recorded = json.loads(config.read_text()).get("patch_sha256")
        except (OSError, ValueError, AttributeError):
            continue
        if recorded == file_sha256(out_dir / PATCH_FILE):
            return config
    return None


# what a run killed before its first checkpoint (or before its patch) leaves
RUN_TRACES = ("train_log.jsonl", RESOLVED_FILE)


def check_out_dir(out_dir: Path, identity: dict, *, resume: bool, overwrite: bool) -> str:
    """Decide what to do with ``out_dir`` before anything is written: 'fresh', 'resume', 'finished' or 'overwrite'."""
    check_writable("--out", out_dir, folder=True)
    torn = _torn_save(out_dir)
    if torn is not None:
        if not resume:
            raise EraseError(
                f"{out_dir} holds a patch whose saving was cut short (its config is still in {torn.parent.name}); "
                "pass --resume to finish it, or choose another --out"
            )
        torn.replace(out_dir / CONFIG_FILE)  # the rename the killed process did not get to
        torn.parent.rmdir()
    has_patch = (out_dir / PATCH_FILE).exists()
    meta = checkpoint_meta(out_dir)
    if has_patch:
        if resume:
            prev = _finished_identity(out_dir)
            diff = _differences(prev or {}, identity)
            if diff:
                raise EraseError(
                    f"{out_dir} holds a finished patch made with other settings (differs in {', '.join(diff[:4])}); "
                    "choose another --out, or pass --overwrite to replace it"
                )
            return "finished"
        if not overwrite:
            raise EraseError(f"{out_dir} already holds a patch; pass --overwrite or choose another --out")
        return "overwrite"
    if meta is not None:
        diff = _differences(meta.get("run") or {}, identity)
        if resume and not diff:
            return "resume"
        if overwrite:
            return "overwrite"
        what = (
            f"an interrupted run with other settings (differs in {', '.join(diff[:4])})"
            if diff
            else "an interrupted run"
        )
        hint = (
            "pass --overwrite to start over or choose another --out"
            if diff
            else "pass --resume to continue it, --overwrite to start over, or choose another --out"
        )
        raise EraseError(f"{out_dir} holds {what} (checkpoint at step {meta['step']}); {hint}")
    # killed before its first checkpoint, or before its patch was written
    if any((out_dir / f).exists() for f in RUN_TRACES):
        if resume or overwrite:
            return "overwrite"
        raise EraseError(
            f"{out_dir} holds a run killed before it saved anything to keep (no checkpoint, no whole patch); "
            "pass --resume to run it again, or choose another --out"
        )
    return "fresh"


def erase_concept(
    pipe,
    method: str,
    request: EraseRequest,
    out_dir: str | Path,
    *,
    preset: str | None = None,
    overrides: dict | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    model_id: str | None = None,
    guides=None,
    config=None,
) -> ErasurePatch:
    """Erase ``request`` from ``pipe`` with ``method``.

    Writes the patch, resolved_config.json and the log to ``out_dir``.

    The config is the method's defaults <- ``preset`` <- ``overrides``, or ``config`` when the caller resolved it
    already (``resolve_config``: validated there, once). The model is left unpatched; apply the returned patch
    with ``pipelines.stable_diffusion.apply_patch``.
    """
    out_dir = Path(out_dir)
    spec = get_method(method)
    if config is not None and not isinstance(config, spec.config_cls):
        raise EraseError(
            f"config is a {type(config).__name__}, not {method}'s {spec.config_cls.__name__}; "
            "build it with resolve_config"
        )
    cfg = config if config is not None else resolve_config(method, preset, overrides, request.kind)
    request.validate()
    identity = run_identity(method, cfg, request, model_id, guides)
    check_writable("--out", out_dir, folder=True)
    with hold_folder(out_dir, "erase run"):  # two runs into one folder: the second is refused, none silently lost
        return _erase_held(
            pipe,
            spec,
            method,
            cfg,
            request,
            out_dir,
            identity,
            preset=preset,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            guides=guides,
        )


def _erase_held(
    pipe,
    spec,
    method: str,
    cfg,
    request: EraseRequest,
    out_dir: Path,
    identity: dict,
    *,
    preset,
    resume: bool,
    overwrite: bool,
    progress: bool,
    guides,
) -> ErasurePatch:
    mode = check_out_dir(out_dir, identity, resume=resume, overwrite=overwrite)
    if mode == "finished":
        return ErasurePatch.from_pretrained(out_dir)
    if mode == "overwrite":
        shutil.rmtree(out_dir / CKPT_DIR, ignore_errors=True)
    created = not out_dir.exists()
    device = model_device(pipe)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.time()
    eraser = spec.eraser_cls(cfg, request)
    if guides is not None:
        eraser.guides = guides
    patch_config = {
        "method": method,
        "method_config": asdict(cfg),
        "request": request.to_dict(),
        "preset": preset,
        "base_model": identity["model"],
        "package_version": __version__,
        **({"guides": guides.describe()} if guides else {}),
    }
    steps = getattr(cfg, "steps", 0)
    loop = LoopConfig(
        steps=steps,
        resume=mode == "resume",
        progress=progress,
        checkpoint_every=getattr(cfg, "checkpoint_every", 100),
        identity=identity,
    )
    try:
        patch = run(
            eraser,
            pipe,
            out_dir,
            loop,
            patch_config,
            patch_dtype=getattr(torch, getattr(cfg, "patch_dtype", "float32")),
        )
    except BaseException:
        if checkpoint_meta(out_dir) is None:  # nothing resumable: leave no trace of this run
            if created:
                shutil.rmtree(out_dir, ignore_errors=True)
            else:
                (out_dir / "train_log.jsonl").unlink(missing_ok=True)
        raise
    mem, mem_kind = peak_memory_bytes(device)
    patch.config["efficiency"] = {
        # a resumed run counts the interrupted one's time up to its checkpoint (the loop keeps it there)
        "erase_seconds": round(time.time() - t0 + patch.config.get("timing", {}).get("seconds_before_resume", 0), 2),
        "peak_memory_bytes": mem,
        "peak_memory_kind": mem_kind,
        "patch_bytes": patch.nbytes(),
    }
    write_json_atomic(out_dir / RESOLVED_FILE, {**identity, "preset": preset, "package_version": __version__})
    patch.save_pretrained(out_dir, overwrite=True)
    return patch
