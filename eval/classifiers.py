"""The judging classifiers of each protocol, behind one interface.

Every judge maps float images (N, 3, H, W) in [0, 1] to logits in the label
order of one axis of the protocol (``style`` / ``object``).

* a world's (``canvas-mini``): the judges its ``eval.worlds.World`` hands over (the shipped CNNs).
* ``unlearncanvas-vit``: UnlearnCanvas's timm ViT-L/16 classifiers (51 themes,
  20 objects), weights under ``model_state_dict`` in a user-supplied local
  file, loaded with ``weights_only=True``; preprocessing = resize 224,
  normalise (0.5, 0.5).
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from erase.core.errors import EraseError

from .protocols import Protocol
from .worlds import world_names, world_of

VIT_L_WIDTH = 1024


class ClassifierError(EraseError):
    """Classifier weights are missing or do not fit."""


class ResizeNormalize(nn.Module):
    def __init__(self, model: nn.Module, size: int = 224, mean: float = 0.5, std: float = 0.5):
        super().__init__()
        self.model, self.size, self.mean, self.std = model, size, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return self.model((x - self.mean) / self.std)


def load_unlearncanvas_vit(
    path: str | Path, num_classes: int, device="cpu", option: str = "--style-classifier"
) -> nn.Module:
    """A UnlearnCanvas classifier: timm ViT-L/16, head Linear(1024, C), weights under ``model_state_dict``.

    The file is read with ``torch.load(weights_only=True)``: a pickle that would run code is refused,
    never executed. Shapes are checked before the (large) model is built.
    """

    import timm

    path = Path(path)
    if not path.is_file():
        raise ClassifierError(
            f"classifier weights not found at {path}; pass the UnlearnCanvas style50.pth / "
            f"style50_cls.pth files with {option}"
        )
    try:
        with (
            warnings.catch_warnings()
        ):  # torch warns about pickle protocols before refusing; the refusal is the message
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise ClassifierError(
            f"{path} is not a weights file torch can read safely (weights_only=True refused it or it is corrupt); "
            f"pass the UnlearnCanvas .pth with {option}"
        ) from e
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ClassifierError(
            f"{path} holds no state dict (expected a dict with 'model_state_dict'); pass the "
            f"UnlearnCanvas .pth with {option}"
        )
    head = state.get("head.weight")
    if not isinstance(head, torch.Tensor) or tuple(head.shape) != (num_classes, VIT_L_WIDTH):
        got = tuple(head.shape) if isinstance(head, torch.Tensor) else None
        raise ClassifierError(
            f"{path}: head.weight has shape {got}, expected ({num_classes}, {VIT_L_WIDTH}); wrong file for {option}?"
        )
    with torch.device("meta"):  # no random init of 300M weights that the checkpoint replaces anyway
        model = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=num_classes)
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as e:
        raise ClassifierError(
            f"{path} does not fit a ViT-L/16 with {num_classes} classes: {str(e).splitlines()[0]}"
        ) from e
    return ResizeNormalize(model).eval().to(device)


def load_judges(protocol: Protocol, style_weights=None, object_weights=None, device="cpu") -> dict[str, nn.Module]:
    """One judge per axis of the protocol: {axis name: module mapping images to logits in that axis's label order}."""
    world = world_of(protocol)
    if world is not None:
        if style_weights or object_weights:
            raise ClassifierError(
                f"--style-classifier / --object-classifier are for the unlearncanvas protocol; "
                f"{protocol.classifiers} is judged by its shipped classifiers (drop those options)"
            )
        return world.judges(protocol, device)
    if protocol.classifiers == "unlearncanvas-vit":
        require_axes(protocol, ("style", "object"))
        if style_weights is None or object_weights is None:
            raise ClassifierError(
                "the unlearncanvas protocol needs --style-classifier and --object-classifier (local .pth files)"
            )
        return {
            "style": load_unlearncanvas_vit(style_weights, len(protocol.styles), device, "--style-classifier"),
            "object": load_unlearncanvas_vit(object_weights, len(protocol.objects), device, "--object-classifier"),
        }
    raise ClassifierError(
        f"unknown classifier family {protocol.classifiers!r}; use a world's "
        f"({', '.join(world_names())}) or 'unlearncanvas-vit'"
    )


def require_axes(protocol: Protocol, names: tuple[str, ...]) -> None:
    if protocol.axis_names != list(names):
        raise ClassifierError(
            f"the {protocol.classifiers} classifiers judge the axes {', '.join(names)}; "
            f"protocol {protocol.name!r} has {', '.join(protocol.axis_names)}"
        )


@torch.no_grad()
def batched_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    dev = next(model.parameters()).device
    return torch.cat(
        [model(images[i : i + batch_size].to(dev)).float().cpu() for i in range(0, len(images), batch_size)]
    )
