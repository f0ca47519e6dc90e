"""The one training loop every erasure method shares.

A method (an ``Eraser``) implements ``setup(pipe) -> ParamSelection`` and
``step(i) -> {loss name: float}``, plus ``state_dict`` / ``load_state_dict`` for
its optimiser and random state. The loop does the rest: seeding, progress bar,
JSONL log, periodic checkpoints and ``--resume``, the NaN/Inf guard, and the
final patch (base tensors are restored afterwards, so the caller applies the
patch exactly as it will be shipped).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import EraseError, NonFiniteError
from .patch import ErasurePatch
from .selection import ParamSelection

CKPT_DIR = "checkpoint"


@dataclass
class LoopConfig:
    steps: int
    checkpoint_every: int = 100
    log_every: int = 10
    resume: bool = False
    progress: bool = True


class Eraser:
    """Base class for methods: ``setup`` and ``step`` are theirs; the loop owns everything else."""

    name = "eraser"

    def __init__(self, config, request):
        self.config, self.request = config, request
        self.optimizer: torch.optim.Optimizer | None = None
        self.generator: torch.Generator | None = None
        self.info: dict = {}  # anything worth reporting (mask density, data sizes ...)

    def setup(self, pipe) -> ParamSelection:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, i: int) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict() if self.optimizer else {},
                "generator": self.generator.get_state() if self.generator is not None else torch.empty(0, dtype=torch.uint8)}

    def load_state_dict(self, state: dict) -> None:
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.generator is not None:
            self.generator.set_state(state["generator"])


def _save_checkpoint(folder: Path, step: int, params: dict[str, torch.Tensor], eraser: Eraser) -> None:
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, str(tmp / "params.safetensors"))
    torch.save(eraser.state_dict(), tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step}))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(folder: Path, params: dict[str, torch.Tensor], eraser: Eraser) -> int:
    from safetensors.torch import load_file

    saved = load_file(str(folder / "params.safetensors"))
    if set(saved) != set(params):
        raise EraseError(f"checkpoint in {folder} is for other parameters; remove it or run without --resume")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n].to(p.device, p.dtype))
    eraser.load_state_dict(torch.load(folder / "state.pt", map_location="cpu", weights_only=True))
    return int(json.loads((folder / "meta.json").read_text())["step"])


def run(eraser: Eraser, pipe, out_dir: str | Path, loop: LoopConfig, patch_config: dict, patch_dtype=torch.float16) -> ErasurePatch:
    """Train ``eraser`` on ``pipe`` and return the patch; checkpoints and the log go to ``out_dir``."""
    from tqdm.auto import tqdm

    from pipelines.stable_diffusion import named_parameters

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / CKPT_DIR
    torch.manual_seed(eraser.request.seed)
    t0 = time.time()
    selection = eraser.setup(pipe)
    all_params = named_parameters(pipe)
    params = {n: all_params[n] for n in selection.masks}
    base = {n: p.detach().clone() for n, p in params.items()}
    start = 0
    if loop.resume and (ckpt / "meta.json").exists():
        start = _load_checkpoint(ckpt, params, eraser)
    elif not loop.resume:
        shutil.rmtree(ckpt, ignore_errors=True)
    log_path = out_dir / "train_log.jsonl"
    if start == 0 and log_path.exists():
        log_path.unlink()
    setup_seconds = time.time() - t0
    bar = tqdm(range(start, loop.steps), initial=start, total=loop.steps, desc=f"erase ({eraser.name})", disable=not loop.progress, mininterval=1)
    try:
        with open(log_path, "a") as log:
            for i in bar:
                losses = eraser.step(i)
                bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
                if bad:
                    where = f"; the last good checkpoint is in {ckpt}" if ckpt.exists() else ""
                    raise NonFiniteError(f"non-finite loss at step {i} ({bad}); lower the learning rate{where}")
                if i % loop.log_every == 0 or i == loop.steps - 1:
                    log.write(json.dumps({"step": i, **{k: round(v, 8) for k, v in losses.items()}}) + "\n")
                    log.flush()
                    bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()})
                if loop.checkpoint_every and (i + 1) % loop.checkpoint_every == 0 and i + 1 < loop.steps:
                    if not all(torch.isfinite(p).all() for p in params.values()):
                        raise NonFiniteError(f"non-finite weights at step {i + 1}; the last good checkpoint is kept in {ckpt}")
                    _save_checkpoint(ckpt, i + 1, params, eraser)
        if not all(torch.isfinite(p).all() for p in params.values()):
            raise NonFiniteError("training produced non-finite weights; lower the learning rate")
        train_seconds = time.time() - t0 - setup_seconds
        cfg = dict(patch_config)
        cfg.setdefault("info", {}).update(eraser.info)
        cfg["timing"] = {"setup_seconds": round(setup_seconds, 2), "train_seconds": round(train_seconds, 2), "steps": loop.steps, "resumed_from": start}
        patch = ErasurePatch.from_diff(base, {n: p.detach() for n, p in params.items()}, selection.masks, cfg, dtype=patch_dtype)
    finally:
        with torch.no_grad():  # leave the pipeline as it was: the caller applies the patch as shipped
            for n, p in params.items():
                p.copy_(base[n])
                p.requires_grad_(False)
    shutil.rmtree(ckpt, ignore_errors=True)
    return patch
