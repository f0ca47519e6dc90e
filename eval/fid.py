"""FID with a pluggable feature space, on top of torchmetrics' FrechetInceptionDistance.

* Real models: the standard FID Inception weights from a local file
  (``make_fid(weights=path)``; needs the ``torch-fidelity`` package that torchmetrics uses for it).
* canvas-mini: the shipped classifiers' penultimate features (``ClassifierFeatures``).

A report always names the feature space next to the number: an FID in one
feature space is not comparable with an FID in another.

Reference statistics (the running sums torchmetrics keeps for the real set) are
cached on disk under a hash of everything that produced them: feature space
fingerprint and the description of the reference images, including which
concept was left out of them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from erase.core.cache import cached_tensors
from erase.core.errors import EraseError

REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


class ClassifierFeatures(nn.Module):
    """Concatenated penultimate features of canvas-mini's style and object classifiers."""

    def __init__(self, style_clf: nn.Module, object_clf: nn.Module):
        super().__init__()
        self.style_clf, self.object_clf = style_clf.eval(), object_clf.eval()
        self.num_features = style_clf.feature_dim + object_clf.feature_dim
        self.name = f"canvas-mini classifier features (style+object penultimate, {self.num_features}-d)"

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.style_clf.features(x), self.object_clf.features(x)], dim=1)


class CLIPFeatures(nn.Module):
    """open_clip image embeddings (unit length) as a second FID feature space (canvas-mini's tiny CLIP)."""

    def __init__(self, clip, clip_name: str):
        super().__init__()
        self.clip, self.model = clip, clip.model  # the model registered as a submodule: part of the fingerprint
        self.num_features = int(clip.image_features(torch.zeros(1, 3, 32, 32)).shape[1])
        self.name = f"CLIP image embeddings ({clip_name}, {self.num_features}-d, unit length)"

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.image_features(x)


def module_fingerprint(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class FIDError(EraseError):
    """FID cannot be computed as asked: no feature space, missing weights or reference images."""


def make_fid(features: nn.Module | None = None, *, weights: str | Path | None = None, image_size: int = 299):
    """A torchmetrics FID over float images in [0, 1] that keeps its reference statistics across resets."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if features is not None:
        return FrechetInceptionDistance(
            feature=features, normalize=True, reset_real_features=False, input_img_size=(3, image_size, image_size)
        )
    check_inception_weights(weights)
    return FrechetInceptionDistance(
        feature=2048, normalize=True, reset_real_features=False, feature_extractor_weights_path=str(weights)
    )


def check_inception_weights(weights: str | Path | None) -> None:
    """Raise FIDError unless standard-Inception FID can run offline with ``weights``."""
    if weights is None:
        raise FIDError(
            "FID needs a feature space: pass --fid-weights FILE (the FID Inception weights), or --no-fid to skip FID"
        )
    if not Path(weights).is_file():
        raise FIDError(
            f"FID Inception weights not found at {weights}; download pt_inception-2015-12-05 once and pass its path "
            "with --fid-weights, or pass --no-fid"
        )
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as e:
        raise FIDError(
            "standard-Inception FID needs the torch-fidelity package: pip install torch-fidelity (or pass --no-fid)"
        ) from e


def stats_key(feature_id: str, reference: dict) -> str:
    return hashlib.sha256(
        json.dumps({"features": feature_id, "reference": reference}, sort_keys=True).encode()
    ).hexdigest()[:24]


def load_or_compute_reference(fid, key: str, cache_dir: str | Path, images_fn, batch_size: int = 256) -> bool:
    """Fill ``fid``'s real-image statistics from the cache, or compute them with ``images_fn()`` and cache them.

    ``images_fn`` returns float images in [0, 1]: one (N, 3, H, W) tensor, or an iterable of such batches
    (so a large reference set is never held in memory at once). Returns True on a cache hit.
    """
    path = Path(cache_dir) / f"fid_ref_{key}.safetensors"
    built = []

    def compute() -> dict[str, torch.Tensor]:
        built.append(True)
        images = images_fn()
        batches = (
            [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
            if isinstance(images, torch.Tensor)
            else images
        )
        for batch in batches:
            fid.update(batch, real=True)
        return {
            name: getattr(fid, name).detach().cpu().reshape(getattr(fid, name).shape).contiguous()
            for name in REAL_STATES
        }

    # one builder per entry across processes, verified before use, written whole (an unwritable cache costs a
    # recomputation next time)
    stats = cached_tensors(path, compute)
    if not built:
        for name in REAL_STATES:
            setattr(fid, name, stats[name].to(getattr(fid, name).device))
    return not built


class GivenFeatures(nn.Module):
    """The identity on precomputed (N, D) features, so that the one FID implementation (torchmetrics') measures
    features that were extracted elsewhere."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between two sets of precomputed features (N, D), arrays or tensors, with the same
    torchmetrics FID as every report (float64 statistics); ``tests/test_fid.py`` checks it against scipy's sqrtm."""
    a, b = (torch.as_tensor(np.asarray(f), dtype=torch.float64) for f in (feats_a, feats_b))
    fid = make_fid(GivenFeatures(a.shape[1]))
    fid.update(a, real=True)
    fid.update(b, real=False)
    return float(fid.compute())
