"""What the mini worlds' trainers share: seeding, the cosine learning-rate schedule, moving a finished artefact
folder into place, and stages that are timed and skipped once done (so an interrupted build resumes)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from erase.core.files import swap_dir, write_json_atomic


def seed_all(seed: int) -> torch.Generator:
    """Seed Python's and torch's global generators; return a CPU generator of the same seed for data sampling."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def cosine_lr(step: int, total: int, warmup: int, peak: float, floor: float = 0.1) -> float:
    """Linear warm-up to ``peak``, then a cosine decay to ``floor * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished artefact folder into place (the old one removed only after the new one is complete; signals
    wait until the swap is done: ``erase.core.files.swap_dir``)."""
    swap_dir(tmp, final)


def new_open_clip(name: str, model_cfg: dict, work: Path, device):
    """A freshly initialised open_clip model of a custom config: (model in train mode, tokenizer, mean, std)."""
    import open_clip

    cfg_dir = work / "clip_cfg"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / f"{name}.json").write_text(json.dumps(model_cfg))
    open_clip.add_model_config(str(cfg_dir / f"{name}.json"))
    model = open_clip.create_model(name, pretrained=None).to(device).train()
    mean = torch.tensor(model.visual.image_mean or open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std or open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return model, open_clip.get_tokenizer(name), mean, std


def save_open_clip(model, model_cfg: dict, final: Path) -> None:
    """An open_clip folder that ``local-dir:`` loads (config + fp16 safetensors), moved into place when complete."""
    from safetensors.torch import save_file

    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}, indent=2))
    save_file(
        {k: v.detach().half().contiguous() for k, v in model.eval().cpu().state_dict().items()},
        str(tmp / "open_clip_model.safetensors"),
    )
    replace_dir(tmp, final)


class StagedBuild:
    """Stages ``stage_<name>`` run in order through ``timed``; their wall times go to the
    work folder and the recipe."""

    command = "python -m ..."

    def __init__(self, recipe, out: Path, work: Path, device: str):
        self.r, self.out, self.work, self.device = recipe, out, work, torch.device(device)
        self.work.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.times_path = self.work / "stage_seconds.json"
        self.times = json.loads(self.times_path.read_text()) if self.times_path.exists() else {}
        self.cpu_path = self.work / "stage_cpu_seconds.json"
        self.cpu_times = json.loads(self.cpu_path.read_text()) if self.cpu_path.exists() else {}

    def timed(self, name: str, fn) -> None:
        if name in self.times:
            print(f"[skip] {name} (done in {self.times[name]:.0f}s)")
            return
        t0, c0 = time.time(), time.process_time()
        fn()
        self.times[name] = round(time.time() - t0, 1)
        # CPU seconds too: on a shared machine the wall time says more about the neighbours than about the stage
        self.cpu_times[name] = round(time.process_time() - c0, 1)
        self.times_path.write_text(json.dumps(self.times, indent=2))
        self.cpu_path.write_text(json.dumps(self.cpu_times, indent=2))
        print(f"[done] {name}: {self.times[name]:.0f}s ({self.cpu_times[name]:.0f} CPU s)")

    def run(self, stages: list[str]) -> None:
        for name in stages:
            self.timed(name, getattr(self, f"stage_{name}"))
        self.write_recipe()

    def recipe_extra(self) -> dict:
        return {}

    def write_recipe(self) -> None:
        """``recipe.json``: the recipe, device, threads, stage times and the measured quality (``quality.json``)."""
        quality_path = self.out / "quality.json"
        recipe = {
            "recipe": asdict(self.r),
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
            "stage_seconds": self.times,
            "stage_cpu_seconds": self.cpu_times,
            "total_minutes": round(sum(self.times.values()) / 60, 1),
            **self.recipe_extra(),
            "quality": json.loads(quality_path.read_text()) if quality_path.exists() else None,
            "command": self.command,
        }
        write_json_atomic(self.out / "recipe.json", recipe)


def build_parser(description: str, out: Path, work: str, stages: list[str]) -> argparse.ArgumentParser:
    """The options every mini-world trainer takes (a trainer adds its own overrides)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", default=str(out), help="where finished artefacts go (default: the shipped assets folder)")
    p.add_argument("--work", default=work, help="cache + checkpoints; rerun with the same folder to resume")
    p.add_argument("--stages", default=",".join(stages), help=f"comma-separated subset of {stages}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="torch CPU threads (2 is fastest on a 2-core machine)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a few steps per stage on a few renders: checks the plumbing, not the quality",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one recipe field (a JSON value; dotted keys reach inside, e.g. gan.n_mlp=8); repeatable",
    )
    return p


def set_recipe_fields(recipe, overrides: list[str]) -> None:
    """Apply ``KEY=VALUE`` overrides to a recipe dataclass in place. VALUE is JSON (a bare word is a string);
    ``a.b=v`` sets key ``b`` of the dict (or field of the dataclass) ``a``. Unknown keys and values of another
    type raise ValueError naming what exists."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r} is not KEY=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *path, last = key.split(".")
        target = recipe
        for part in path:
            target = target[part] if isinstance(target, dict) else getattr(target, part, None)
            if target is None:
                raise ValueError(f"--set {key}: the recipe has no {part!r}")
        fields = {} if isinstance(target, dict) else {f.name: f for f in dataclasses.fields(target)}
        names = list(target) if isinstance(target, dict) else list(fields)
        if last not in names:
            raise ValueError(f"--set {key}: unknown key {last!r}; choose one of: {', '.join(names)}")
        old = target[last] if isinstance(target, dict) else getattr(target, last)
        optional = last in fields and "None" in str(fields[last].type)
        fits = (
            isinstance(value, type(old))
            or (isinstance(old, float) and type(value) is int)
            or (value is None and optional)
        )
        if old is not None and not fits:
            raise ValueError(f"--set {key}: expected a {type(old).__name__} like {json.dumps(old)}, got {raw!r}")
        if isinstance(target, dict):
            target[last] = value
        else:
            setattr(target, last, value)


def set_recipe_fields_or_exit(p: argparse.ArgumentParser, recipe, overrides: list[str]) -> None:
    """``set_recipe_fields`` for a trainer's ``--set``: a bad override is a one-line usage error (exit 2)."""
    try:
        set_recipe_fields(recipe, overrides)
    except ValueError as e:
        p.error(str(e))


def chosen_stages(p: argparse.ArgumentParser, spec: str, stages: list[str]) -> list[str]:
    chosen = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in stages]
    if unknown:
        p.error(f"unknown stage(s) {unknown}; choose from {stages}")
    return chosen
