"""Where the shipped canvas-mini artefacts live, and how to load them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from erase.core.errors import EraseError
from erase.core.locations import world_dir

from .models import CLIP_MODEL_NAME, ClassifierConfig, ConceptClassifier
from .world import OBJECTS, STYLES

ASSETS_DIR = world_dir("canvas-mini")  # $ERASEKIT_CANVAS_MINI, else the shipped copy (checkout or installed package)
PIPELINE_DIR = ASSETS_DIR / "pipeline"
CLASSIFIER_DIR = ASSETS_DIR / "classifiers"
CLIP_DIR = ASSETS_DIR / "clip"

KINDS = {"style": STYLES, "object": OBJECTS}


class AssetError(EraseError):
    """A shipped artefact is missing or unreadable."""


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise AssetError(
            f"canvas-mini {what} not found at {path}; rebuild it with `python -m worlds.canvas_mini.train` "
            f"or set ERASEKIT_CANVAS_MINI to a folder that holds it"
        )
    return path


def save_classifier(model: ConceptClassifier, folder: Path, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    kind = model.config.kind
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp_w, tmp_c = folder / f".{kind}.safetensors.tmp", folder / f".{kind}.json.tmp"
    save_file(state, str(tmp_w))
    tmp_c.write_text(json.dumps({**model.config.to_dict(), **(extra or {})}, indent=2))
    os.replace(tmp_w, folder / f"{kind}.safetensors")
    os.replace(tmp_c, folder / f"{kind}.json")


def load_classifier(
    kind: str, folder: str | Path | None = None, device: str | torch.device = "cpu"
) -> ConceptClassifier:
    """The shipped style or object classifier, in eval mode.

    Maps float images (N, 3, H, W) in [0, 1] at the world's resolution to logits ordered like
    STYLES (kind="style") or OBJECTS (kind="object").
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if kind not in KINDS:
        raise ValueError(f"unknown classifier kind {kind!r}; choose 'style' or 'object'")
    folder = Path(folder) if folder is not None else CLASSIFIER_DIR
    cfg_path = _require(folder / f"{kind}.json", f"{kind} classifier config")
    w_path = _require(folder / f"{kind}.safetensors", f"{kind} classifier weights")
    try:
        raw = json.loads(cfg_path.read_text())
        config = ClassifierConfig(
            kind=raw["kind"], classes=raw["classes"], channels=raw["channels"], resolution=raw["resolution"]
        )
        state = load_file(str(w_path))
    except (json.JSONDecodeError, KeyError, SafetensorError, OSError) as e:
        raise AssetError(f"canvas-mini {kind} classifier at {folder} is corrupt ({e}); rebuild it") from e
    if config.classes != KINDS[kind]:
        raise AssetError(
            f"{kind} classifier at {folder} was trained for classes {config.classes}, expected {KINDS[kind]}"
        )
    model = ConceptClassifier(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise AssetError(
            f"{kind} classifier weights at {w_path} do not fit its config: {str(e).splitlines()[0]}"
        ) from e
    return model.eval().to(device)


def load_clip(folder: str | Path | None = None, device: str | torch.device = "cpu"):
    """The tiny open_clip model: returns (model, tokenizer), model in eval mode."""
    import open_clip

    folder = Path(folder) if folder is not None else CLIP_DIR
    _require(folder / "open_clip_config.json", "CLIP config")
    _require(folder / "open_clip_model.safetensors", "CLIP weights")
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}", device=device)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    return model.eval(), tokenizer


__all__ = [
    "ASSETS_DIR",
    "PIPELINE_DIR",
    "CLASSIFIER_DIR",
    "CLIP_DIR",
    "CLIP_MODEL_NAME",
    "load_classifier",
    "load_clip",
    "save_classifier",
    "AssetError",
]
