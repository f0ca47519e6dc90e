"""Where the shipped faces-mini artefacts live, and how to load them (safetensors + JSON config only)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from erase.core.errors import EraseError
from erase.core.locations import world_dir
from worlds.canvas_mini.assets import load_clip

from .models import AttributeClassifier, AttributeClassifierConfig, IdentityEmbedder, IdentityEmbedderConfig

ASSETS_DIR = world_dir("faces-mini")  # $ERASEKIT_FACES_MINI, else the shipped copy (checkout or installed package)
GENERATOR_DIR = ASSETS_DIR / "generator"
JUDGES = {
    "classifier": (AttributeClassifier, AttributeClassifierConfig),
    "classifier_b": (AttributeClassifier, AttributeClassifierConfig),
    "identity": (IdentityEmbedder, IdentityEmbedderConfig),
}
# networks only the method consults (Text-to-Unlearn's guides); the evaluation never loads them
GUIDES = {
    "guide-classifier": (AttributeClassifier, AttributeClassifierConfig),
    "guide-classifier-b": (AttributeClassifier, AttributeClassifierConfig),
    "guide-identity": (IdentityEmbedder, IdentityEmbedderConfig),
}
TRAINED = {**JUDGES, **GUIDES}
CLIPS = ("clip-guide", "clip-judge")


class FacesAssetError(EraseError):
    """A faces-mini artefact is missing or unreadable."""


def save_module(model: nn.Module, folder: Path, extra: dict | None = None) -> None:
    """``model.safetensors`` + ``config.json`` (the model's config and how it was trained), each renamed into place."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_c = folder / ".model.safetensors.tmp", folder / ".config.json.tmp"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp_w))
    tmp_c.write_text(json.dumps({"config": model.config.to_dict(), **(extra or {})}, indent=2))
    os.replace(tmp_w, folder / "model.safetensors")
    os.replace(tmp_c, folder / "config.json")


def evaluation_mapper_steps(root: Path, default: int) -> int:
    """The held-out evaluation mapper's steps that the assets in ``root`` were built for (``recipe.json``'s
    ``eval_mapper_steps``; ``default`` where the recipe does not say, as the shipped one built before it did)."""
    try:
        steps = json.loads((Path(root) / "recipe.json").read_text())["recipe"]["eval_mapper_steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return default
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise FacesAssetError(
            f"{Path(root) / 'recipe.json'}: eval_mapper_steps must be a positive integer, got {steps!r}; fix the file"
        )
    return steps


def load_judge(name: str, folder: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """A trained faces-mini judge (``classifier``, ``classifier_b`` or ``identity``) or guide (``guide-classifier``,
    ``guide-identity``) in eval mode, gradients off."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if name not in TRAINED:
        raise FacesAssetError(f"unknown faces-mini network {name!r}; choose one of: {', '.join(TRAINED)}")
    folder = Path(folder) if folder is not None else ASSETS_DIR / name
    for f in ("config.json", "model.safetensors"):
        if not (folder / f).is_file():
            raise FacesAssetError(
                f"faces-mini {name} is missing {folder / f}; rebuild it with `python -m worlds.faces_mini.train` "
                f"(stage {name.replace('-', '_')})"
            )
    cls, cfg_cls = TRAINED[name]
    model = cls(cfg_cls(**json.loads((folder / "config.json").read_text())["config"]))
    try:
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
    except (SafetensorError, RuntimeError) as e:
        raise FacesAssetError(
            f"{folder / 'model.safetensors'} does not fit its config.json: {str(e).splitlines()[0][:200]}"
        ) from e
    return model.to(device).eval().requires_grad_(False)


def load_faces_clip(which: str = "clip-judge", folder: str | Path | None = None, device: str | torch.device = "cpu"):
    """One of the two tiny CLIPs: ``clip-guide`` (the method's) or ``clip-judge`` (evaluation only); ``folder``
    defaults to the shipped one."""
    if which not in CLIPS:
        raise FacesAssetError(f"unknown faces-mini CLIP {which!r}; choose one of: {', '.join(CLIPS)}")
    folder = Path(folder) if folder is not None else ASSETS_DIR / which
    if not (folder / "open_clip_config.json").is_file():
        raise FacesAssetError(
            f"faces-mini {which} is missing in {folder}; rebuild it with `python -m worlds.faces_mini.train`"
        )
    return load_clip(folder, device=device)
