import numpy as np
import pytest
import torch
from torch import nn

from eval.fid import frechet_distance_numpy, load_or_compute_reference, make_fid, stats_key


class RandomFeatures(nn.Module):
    """A fixed random feature map (N, 3, 16, 16) -> (N, 8)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.num_features = 8
        self.proj = nn.Parameter(torch.randn(3 * 16 * 16, 8, generator=g) / 16, requires_grad=False)

    def forward(self, x):
        return torch.tanh(x.flatten(1) @ self.proj)


def images(seed, n=200, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g) * 0.8 + shift).clamp(0, 1)


def test_fid_matches_independent_scipy_computation():
    feats = RandomFeatures()
    a, b = images(1), images(2, shift=0.15)
    fid = make_fid(feats, image_size=16)
    fid.update(a, real=True)
    fid.update(b, real=False)
    ours = float(fid.compute())
    ref = frechet_distance_numpy(feats(a).double().numpy(), feats(b).double().numpy())
    assert ref > 0.01
    assert ours == pytest.approx(ref, rel=1e-3)


def test_fid_of_a_set_against_itself_is_zero():
    feats = RandomFeatures()
    a = images(3)
    fid = make_fid(feats, image_size=16)
    fid.update(a, real=True)
    fid.update(a, real=False)
    assert abs(float(fid.compute())) < 1e-4


def test_reference_statistics_cache(tmp_path):
    feats = RandomFeatures()
    a, b = images(4), images(5, shift=0.1)
    calls = []

    def real():
        calls.append(1)
        return a

    key = stats_key("random-features", {"set": "a"})
    fid1 = make_fid(feats, image_size=16)
    assert load_or_compute_reference(fid1, key, tmp_path, real) is False
    fid1.update(b, real=False)
    fid2 = make_fid(feats, image_size=16)
    assert load_or_compute_reference(fid2, key, tmp_path, real) is True  # from disk, no recompute
    fid2.update(b, real=False)
    assert len(calls) == 1
    assert float(fid2.compute()) == pytest.approx(float(fid1.compute()), rel=1e-9)
    assert stats_key("random-features", {"set": "b"}) != key


def test_fid_needs_a_feature_space():
    with pytest.raises(ValueError, match="feature space"):
        make_fid(None)
    with pytest.raises(FileNotFoundError, match="Inception weights"):
        make_fid(None, weights="/nonexistent/pt_inception.pth")
