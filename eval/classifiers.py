"""The judging classifiers of each protocol, behind one interface.

Every judge maps float images (N, 3, H, W) in [0, 1] to logits in the
protocol's label order (``styles`` / ``objects``).

* ``canvas-mini``: the shipped CNNs (``eval.canvas_mini.load_classifier``).
* ``unlearncanvas-vit``: UnlearnCanvas's timm ViT-L/16 classifiers (51 themes,
  20 objects), weights under ``model_state_dict`` in a user-supplied local
  file, loaded with ``weights_only=True``; preprocessing = resize 224,
  normalise (0.5, 0.5).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .protocols import Protocol


VIT_L_WIDTH = 1024


class ClassifierError(ValueError):
    """Classifier weights are missing or do not fit."""


class ResizeNormalize(nn.Module):
    def __init__(self, model: nn.Module, size: int = 224, mean: float = 0.5, std: float = 0.5):
        super().__init__()
        self.model, self.size, self.mean, self.std = model, size, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return self.model((x - self.mean) / self.std)


def load_unlearncanvas_vit(path: str | Path, num_classes: int, device="cpu") -> nn.Module:
    import timm

    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"classifier weights not found at {path}; pass the UnlearnCanvas style50/cls .pth files")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ClassifierError(f"{path} holds no state dict (expected a dict with 'model_state_dict')")
    head = state.get("head.weight")
    if not isinstance(head, torch.Tensor) or tuple(head.shape) != (num_classes, VIT_L_WIDTH):
        got = tuple(head.shape) if isinstance(head, torch.Tensor) else None
        raise ClassifierError(f"{path}: head.weight has shape {got}, expected ({num_classes}, {VIT_L_WIDTH}); wrong classifier file?")
    model = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ClassifierError(f"{path} does not fit a ViT-L/16 with {num_classes} classes: {str(e).splitlines()[0]}") from e
    return ResizeNormalize(model).eval().to(device)


def load_judges(protocol: Protocol, style_weights=None, object_weights=None, device="cpu") -> dict[str, nn.Module]:
    """{"style": module, "object": module} for the protocol."""
    if protocol.classifiers == "canvas-mini":
        from eval.canvas_mini import load_classifier

        judges = {k: load_classifier(k, device=device).for_inference() for k in ("style", "object")}
        for kind, names in (("style", protocol.styles), ("object", protocol.objects)):
            if judges[kind].config.classes != names:
                raise ClassifierError(f"protocol {protocol.name!r} lists {kind}s that the canvas-mini classifiers do not know")
        return judges
    if protocol.classifiers == "unlearncanvas-vit":
        if style_weights is None or object_weights is None:
            raise ClassifierError("the unlearncanvas protocol needs --style-classifier and --object-classifier (local .pth files)")
        return {
            "style": load_unlearncanvas_vit(style_weights, len(protocol.styles), device),
            "object": load_unlearncanvas_vit(object_weights, len(protocol.objects), device),
        }
    raise ClassifierError(f"unknown classifier family {protocol.classifiers!r}; use 'canvas-mini' or 'unlearncanvas-vit'")


@torch.no_grad()
def batched_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    dev = next(model.parameters()).device
    return torch.cat([model(images[i : i + batch_size].to(dev)).float().cpu() for i in range(0, len(images), batch_size)])
