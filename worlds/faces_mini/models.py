"""The faces-mini judges: a multi-head attribute classifier and an identity embedder (small CNNs), and the
configs of the two tiny open_clip models (one guides unlearning, the other only evaluates it).

Both CNNs take float images (N, 3, 32, 32) in [0, 1]. The attribute classifier's pooled features are the
Frechet-distance feature space of faces-mini, and its per-stage feature maps are the perceptual distance
that stands in for LPIPS (channel-unit-normalised squared differences, spatially averaged, summed over stages).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .world import HEADS, RESOLUTION


def conv_trunk(channels: list[int]) -> tuple[nn.ModuleList, int]:
    """Stages of two 3x3 conv + BN + ReLU, 2x max-pooling between stages; returns (stages, output width)."""
    stages, c_in = nn.ModuleList(), 3
    for i, c in enumerate(channels):
        layers: list[nn.Module] = [nn.MaxPool2d(2)] if i else []
        for _ in range(2):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        stages.append(nn.Sequential(*layers))
    return stages, c_in


def trunk_feature_maps(stages: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every stage of a ``conv_trunk`` on float images in [0, 1]."""
    h, maps = (x - 0.5) / 0.5, []
    for stage in stages:
        h = stage(h)
        maps.append(h)
    return maps


def _check_images(x: torch.Tensor, resolution: int, what: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != resolution or x.shape[3] != resolution:
        raise ValueError(
            f"the faces-mini {what} expects images of shape (N, 3, {resolution}, {resolution}) in [0, 1], "
            f"got {tuple(x.shape)}; resize to {resolution}x{resolution} first"
        )


@dataclass
class AttributeClassifierConfig:
    heads: dict = field(default_factory=lambda: dict(HEADS))  # head name -> number of classes
    channels: list = field(default_factory=lambda: [32, 64, 128])
    resolution: int = RESOLUTION

    def to_dict(self) -> dict:
        return asdict(self)


class AttributeClassifier(nn.Module):
    """One CNN trunk, one linear head per attribute (eyeglasses, smile, hat, beard, hair colour, skin, identity)."""

    def __init__(self, config: AttributeClassifierConfig):
        super().__init__()
        self.config = config
        self.stages, width = conv_trunk(list(config.channels))
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in config.heads.items()})
        self.feature_dim = width

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage (the perceptual distance's layers)."""
        _check_images(x, self.config.resolution, "attribute classifier")
        return trunk_feature_maps(self.stages, x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled last-stage features: the Frechet-distance feature space."""
        return self.feature_maps(x)[-1].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {name: head(f) for name, head in self.heads.items()}


def perceptual_distance(net: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS-style distance in the feature maps of ``net`` (any module with ``feature_maps``; differentiable
    in both inputs).

    Each stage's activations are unit-normalised over channels per pixel; the squared difference is averaged
    over pixels and summed over channels and stages, as LPIPS does with uniform layer weights."""
    total = torch.zeros(a.shape[0], device=a.device)
    for fa, fb in zip(net.feature_maps(a), net.feature_maps(b)):
        total = total + (F.normalize(fa, dim=1) - F.normalize(fb, dim=1)).pow(2).sum(1).mean(dim=(1, 2))
    return total


@dataclass
class IdentityEmbedderConfig:
    n_identities: int  # named identities + 1 anonymous class
    geometry_dim: int  # face-geometry factors regressed alongside (what makes an anonymous face itself)
    channels: list = field(default_factory=lambda: [32, 64, 96])
    embed_dim: int = 64
    resolution: int = RESOLUTION

    def to_dict(self) -> dict:
        return asdict(self)


class IdentityEmbedder(nn.Module):
    """Unit-length face embeddings that ignore attributes (glasses, hat, smile ...) and keep face geometry.

    Trained to name the identity (named ones + "anonymous") and to regress the face-geometry factors from the
    embedding, under random attributes: the faces-mini stand-in for ArcFace."""

    def __init__(self, config: IdentityEmbedderConfig):
        super().__init__()
        self.config = config
        self.stages, width = conv_trunk(list(config.channels))
        self.project = nn.Linear(width, config.embed_dim)
        self.identity_head = nn.Linear(config.embed_dim, config.n_identities)
        self.geometry_head = nn.Linear(config.embed_dim, config.geometry_dim)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage (a perceptual distance that is not the attribute judge's)."""
        _check_images(x, self.config.resolution, "identity embedder")
        return trunk_feature_maps(self.stages, x)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.feature_maps(x)[-1].mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.raw(x), dim=-1)


# Two tiny CLIPs with different widths and seeds: "guide" drives Text-to-Unlearn, "judge" only evaluates it. Their
# text widths are small because open_clip's 49,408-token embedding table dominates their size (assets budget).
CLIP_MODELS = {
    "faces-mini-clip-guide": {
        "embed_dim": 64,
        "vision_cfg": {
            "image_size": RESOLUTION,
            "layers": 3,
            "width": 96,
            "head_width": 32,
            "mlp_ratio": 2.0,
            "patch_size": 4,
        },
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 40, "heads": 4, "layers": 2},
    },
    "faces-mini-clip-judge": {
        "embed_dim": 48,
        "vision_cfg": {
            "image_size": RESOLUTION,
            "layers": 3,
            "width": 112,
            "head_width": 28,
            "mlp_ratio": 2.0,
            "patch_size": 4,
        },
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
}
