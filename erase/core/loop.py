"""The one training loop every erasure method shares.

A method (an ``Eraser``) implements ``setup(model) -> ParamSelection`` and ``step(i) -> {loss: float}``
and lists its training state (optimisers, RNGs, auxiliary modules such as a discriminator) in
``training_state()``. The loop does the rest:

1. refuses a model with patches applied, snapshots the base weights of the method's ``scope()``
   **before** ``setup`` (so a closed-form method that edits weights in ``setup`` with ``steps = 0``
   yields a correct patch), and trains on float32 master weights whatever dtype the model was loaded
   in (autocast to that dtype on CUDA);
2. seeding, progress bar, JSONL log, periodic checkpoints of the selected weights and of every entry
   of the training state, ``resume``, and the NaN/Inf guard (the last good checkpoint is kept);
3. the final patch: selected tensors must differ from their base only inside their masks, tensors in
   scope but not selected and every tensor outside the scope must be unchanged; the model is restored
   to its base weights and load dtype, then fingerprinted, so the caller applies the patch as shipped.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .components import float32_master, model_device, named_parameters
from .errors import EraseError, NonFiniteError
from .files import recover_swapped_dir, swap_dir, writing
from .patch import ErasurePatch, PatchError, applied_patches, fingerprint
from .selection import ParamSelection

CKPT_DIR = "checkpoint"


@dataclass
class LoopConfig:
    steps: int
    checkpoint_every: int = 100
    log_every: int = 10
    resume: bool = False
    progress: bool = True
    identity: dict | None = None  # what makes two runs the same; stored with checkpoints, checked on resume


class Eraser:
    """Base class for methods: ``setup`` and ``step`` are theirs; the loop owns everything else."""

    name = "eraser"
    model_family = "stable_diffusion"  # the kind of model the method erases from ("stylegan" for GAN methods)

    def __init__(self, config, request):
        self.config, self.request = config, request
        self.optimizer: torch.optim.Optimizer | None = None
        self.rng: torch.Generator | None = None  # the method's random stream (not the model's "generator" component)
        self.info: dict = {}  # anything worth reporting (mask density, data sizes ...)

    def scope(self, model) -> str | None:
        """Regex over prefixed parameter names that ``setup`` and ``step`` may change (None = any)."""
        return None

    def setup(self, model) -> ParamSelection:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, i: int) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def training_state(self) -> dict[str, object]:
        """Everything a resumed run must restore: optimisers, RNGs and auxiliary modules, by name."""
        return {k: v for k, v in {"optimizer": self.optimizer, "rng": self.rng}.items() if v is not None}

    def state_dict(self) -> dict:
        return {k: _state_of(v) for k, v in self.training_state().items()}

    def load_state_dict(self, state: dict) -> None:
        for k, obj in self.training_state().items():
            if k not in state:
                raise EraseError(
                    f"checkpoint lacks the training state {k!r}; it was made by another method "
                    "version, run without --resume"
                )
            _restore(obj, state[k])


def _state_of(obj):
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    raise TypeError(f"cannot checkpoint training state of type {type(obj).__name__}")


def _restore(obj, state) -> None:
    if isinstance(obj, torch.Generator):
        obj.set_state(state)
    else:
        obj.load_state_dict(state)


def _save_checkpoint(
    folder: Path, step: int, params: dict[str, torch.Tensor], eraser: Eraser, identity: dict | None, seconds: float
) -> None:
    """The selected weights, the method's training state and {step, run, seconds}: ``seconds`` is the run's time so
    far (setup and training, over every resume), so that a resumed run reports its whole time."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    size = sum(p.numel() * p.element_size() for p in params.values())
    with writing(folder, cleanup=(tmp,), size=size):  # out of space: the previous checkpoint stays as it was
        save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, str(tmp / "params.safetensors"))
        torch.save(eraser.state_dict(), tmp / "state.pt")
        (tmp / "meta.json").write_text(
            json.dumps({"step": step, "run": identity, "seconds": round(seconds, 3)}, default=str)
        )
    swap_dir(tmp, folder)


def _load_checkpoint(folder: Path, params: dict[str, torch.Tensor], eraser: Eraser) -> tuple[int, float]:
    """Put the checkpoint's weights and training state back; returns its step and the run's seconds until then."""
    from safetensors.torch import load_file

    saved = load_file(str(folder / "params.safetensors"))
    if set(saved) != set(params):
        raise EraseError(f"checkpoint in {folder} is for other parameters; remove it or run without --resume")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n].to(p.device, p.dtype))
    eraser.load_state_dict(torch.load(folder / "state.pt", map_location="cpu", weights_only=True))
    meta = json.loads((folder / "meta.json").read_text())
    return int(meta["step"]), float(meta.get("seconds", 0.0))


def checkpoint_meta(out_dir: str | Path) -> dict | None:
    """{"step", "run"} of the resumable checkpoint in ``out_dir``, or None. A checkpoint that a crash left as
    ``checkpoint.old`` in the middle of its replacement is put back first."""
    recover_swapped_dir(Path(out_dir) / CKPT_DIR)
    meta = Path(out_dir) / CKPT_DIR / "meta.json"
    try:
        return json.loads(meta.read_text()) if meta.exists() else None
    except (OSError, ValueError):
        return None


def _checksum(p: torch.Tensor) -> tuple[float, float]:
    d = p.detach().double()
    return float(d.sum()), float(d.abs().sum())


def _autocast(model, load_dtypes: dict):
    half = [d for d in load_dtypes.values() if d in (torch.float16, torch.bfloat16)]
    dev = model_device(model)
    return torch.autocast(dev.type, dtype=half[0]) if half and dev.type == "cuda" else nullcontext()


def run(
    eraser: Eraser, model, out_dir: str | Path, loop: LoopConfig, patch_config: dict, patch_dtype=torch.float16
) -> ErasurePatch:
    """Train ``eraser`` on ``model`` and return the patch; checkpoints and the log go to ``out_dir``."""
    from tqdm.auto import tqdm

    if applied_patches(model):
        raise EraseError(
            "the model has erasure patches applied; call remove_patch(model) before erasing "
            "(erasures train on a base model)"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / CKPT_DIR
    t0 = time.time()
    with float32_master(model) as load_dtypes:
        all_params = named_parameters(model)
        pattern = eraser.scope(model)
        scoped = {n: p for n, p in all_params.items() if pattern is None or re.search(pattern, n)}
        if not scoped:
            raise EraseError(
                f"{eraser.name}: no parameter of the model matches its scope {pattern!r}; check the options that "
                f"choose the trained weights (erase methods {eraser.name}) against the model's parameter names"
            )
        base = {n: p.detach().clone() for n, p in scoped.items()}
        outside = {n: _checksum(p) for n, p in all_params.items() if n not in scoped}
        try:
            torch.manual_seed(eraser.request.seed)
            selection = eraser.setup(model)
            unknown = [n for n in selection.masks if n not in scoped]
            if unknown:
                raise EraseError(f"{eraser.name} selected {unknown[0]}, outside its declared scope {pattern!r}")
            params = {n: scoped[n] for n in selection.masks}
            start, before = (
                _load_checkpoint(ckpt, params, eraser)
                if loop.resume and recover_swapped_dir(ckpt) and (ckpt / "meta.json").exists()
                else (0, 0.0)
            )
            log_path = out_dir / "train_log.jsonl"
            if start == 0 and log_path.exists():
                log_path.unlink()
            setup_seconds = time.time() - t0
            _train(eraser, model, params, ckpt, log_path, loop, start, load_dtypes, tqdm, clock=(t0, before))
            train_seconds = time.time() - t0 - setup_seconds
            moved = [n for n, p in scoped.items() if n not in params and not torch.equal(p.detach(), base[n])]
            if moved:
                raise PatchError(
                    f"{eraser.name} changed {moved[0]}, which is not in its selection; the patch would "
                    "not reproduce the trained model"
                )
            patch = ErasurePatch.from_diff(
                base,
                {n: p.detach() for n, p in params.items()},
                selection.masks,
                dict(patch_config),
                dtype=patch_dtype,
            )
        finally:
            with torch.no_grad():  # leave the model as it was: the caller applies the patch as shipped
                for n, p in scoped.items():
                    p.copy_(base[n])
                for p in all_params.values():
                    p.requires_grad_(False)
    changed = [n for n, p in named_parameters(model).items() if n in outside and _checksum(p) != outside[n]]
    if changed:
        raise PatchError(f"{eraser.name} changed {changed[0]}, outside its declared scope {pattern!r}")
    patch.config.setdefault("info", {}).update(eraser.info)
    patch.config["base_fingerprint"] = fingerprint(model, patch.names())
    patch.config["base_dtypes"] = {c: str(d).replace("torch.", "") for c, d in load_dtypes.items()}
    patch.config["timing"] = {
        "setup_seconds": round(setup_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "steps": loop.steps,
        "resumed_from": start,
        "seconds_before_resume": round(before, 2),  # the interrupted run's time up to its checkpoint
    }
    shutil.rmtree(ckpt, ignore_errors=True)
    return patch


def _train(
    eraser, model, params, ckpt, log_path, loop: LoopConfig, start: int, load_dtypes, tqdm, clock: tuple[float, float]
) -> None:
    """Steps ``start`` to ``loop.steps``; ``clock`` = (this run's start time, the seconds of the run before it)."""
    bar = tqdm(
        range(start, loop.steps),
        initial=start,
        total=loop.steps,
        desc=f"erase ({eraser.name})",
        disable=not loop.progress,
        mininterval=1,
    )
    with open(log_path, "a") as log:
        for i in bar:
            with _autocast(model, load_dtypes):
                losses = eraser.step(i)
            bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
            if bad or not all(torch.isfinite(p).all() for p in params.values()):
                where = (
                    f"; the last good checkpoint is kept in {ckpt} (continue with --resume)" if ckpt.exists() else ""
                )
                what = f"loss {bad}" if bad else "weights"
                raise NonFiniteError(f"non-finite {what} at step {i}: lower the learning rate (--set lr=...){where}")
            if i % loop.log_every == 0 or i == loop.steps - 1:
                log.write(json.dumps({"step": i, **{k: round(v, 8) for k, v in losses.items()}}) + "\n")
                log.flush()
                bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()})
            if loop.checkpoint_every and (i + 1) % loop.checkpoint_every == 0 and i + 1 < loop.steps:
                _save_checkpoint(ckpt, i + 1, params, eraser, loop.identity, time.time() - clock[0] + clock[1])
