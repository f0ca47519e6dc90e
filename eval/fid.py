"""FID with a pluggable feature space, on top of torchmetrics' FrechetInceptionDistance.

* Real models: the standard FID Inception weights from a local file
  (``inception_fid(path)``; needs the ``torch-fidelity`` package that torchmetrics uses for it).
* canvas-mini: the shipped classifiers' penultimate features (``ClassifierFeatures``).

A report always names the feature space next to the number: an FID in one
feature space is not comparable with an FID in another.

Reference statistics (the running sums torchmetrics keeps for the real set) are
cached on disk under a hash of everything that produced them: feature space
fingerprint and the description of the reference images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

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


def module_fingerprint(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def make_fid(features: nn.Module | None = None, *, weights: str | Path | None = None, image_size: int = 299):
    """A torchmetrics FID over float images in [0, 1] that keeps its reference statistics across resets."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if features is not None:
        return FrechetInceptionDistance(feature=features, normalize=True, reset_real_features=False, input_img_size=(3, image_size, image_size))
    if weights is None:
        raise ValueError("FID needs a feature space: pass canvas-mini classifier features or --fid-weights PATH (FID Inception weights)")
    if not Path(weights).is_file():
        raise FileNotFoundError(f"FID Inception weights not found at {weights}; download pt_inception-2015-12-05 once and pass its path")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as e:
        raise ImportError("standard-Inception FID needs torch-fidelity: pip install torch-fidelity") from e
    return FrechetInceptionDistance(feature=2048, normalize=True, reset_real_features=False, feature_extractor_weights_path=str(weights))


def stats_key(feature_id: str, reference: dict) -> str:
    return hashlib.sha256(json.dumps({"features": feature_id, "reference": reference}, sort_keys=True).encode()).hexdigest()[:24]


def load_or_compute_reference(fid, key: str, cache_dir: str | Path, images_fn, batch_size: int = 256) -> bool:
    """Fill ``fid``'s real-image statistics from the cache, or compute them with ``images_fn()`` and cache them.

    ``images_fn`` returns float images (N, 3, H, W) in [0, 1]. Returns True on a cache hit.
    """
    from safetensors.torch import load_file, save_file

    path = Path(cache_dir) / f"fid_ref_{key}.safetensors"
    if path.exists():
        stats = load_file(str(path))
        for name in REAL_STATES:
            setattr(fid, name, stats[name].to(getattr(fid, name).device))
        return True
    images = images_fn()
    for i in range(0, len(images), batch_size):
        fid.update(images[i : i + batch_size], real=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({name: getattr(fid, name).detach().cpu().reshape(getattr(fid, name).shape).contiguous() for name in REAL_STATES}, str(tmp))
    tmp.replace(path)
    return False


def frechet_distance_numpy(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Independent reference: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrt(S_a S_b)) with scipy's sqrtm."""
    from scipy import linalg

    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(linalg.sqrtm(s_a @ s_b))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))
