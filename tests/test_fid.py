import numpy as np
import pytest
import torch
from torch import nn

from eval.fid import frechet_distance, load_or_compute_reference, make_fid, stats_key


def frechet_distance_numpy(feats_a, feats_b) -> float:
    """Independent reference: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrt(S_a S_b)) with scipy's
    sqrtm (two-pass covariances)."""
    from scipy import linalg

    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(linalg.sqrtm(s_a @ s_b))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


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


def test_frechet_distance_of_given_features_matches_scipy():
    """The features path (faces-mini FD, the bench's distance to gold) is the same
    torchmetrics FID, checked the same way."""
    g = torch.Generator().manual_seed(4)
    a, b = (
        torch.randn(300, 6, generator=g) * 2 + 5,
        torch.randn(250, 6, generator=g) * 1.5 + 5.3,
    )  # offset means, like real features
    ref = frechet_distance_numpy(a.numpy(), b.numpy())
    assert ref > 0.1 and frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(a.numpy(), a.numpy()) == pytest.approx(0.0, abs=1e-6)


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
    from eval.fid import FIDError

    with pytest.raises(FIDError, match="FID needs a feature space: pass --fid-weights FILE"):
        make_fid(None)
    with pytest.raises(
        FIDError, match="FID Inception weights not found at /nonexistent/pt_inception.pth; .* --fid-weights"
    ):
        make_fid(None, weights="/nonexistent/pt_inception.pth")


def test_reference_from_batches_equals_reference_from_one_tensor(tmp_path):
    """A reference given as an iterable of batches (streamed) gives the same statistics as one tensor."""
    feats = RandomFeatures()
    a, b = images(6), images(7, shift=0.1)
    whole, streamed = make_fid(feats, image_size=16), make_fid(feats, image_size=16)
    assert load_or_compute_reference(whole, stats_key("f", {"s": 1}), tmp_path, lambda: a) is False
    assert (
        load_or_compute_reference(
            streamed, stats_key("f", {"s": 2}), tmp_path, lambda: (a[i : i + 30] for i in range(0, 200, 30))
        )
        is False
    )
    for fid in (whole, streamed):
        fid.update(b, real=False)
    assert int(streamed.real_features_num_samples) == 200
    assert float(streamed.compute()) == pytest.approx(float(whole.compute()), rel=1e-9)


def test_reference_cache_key_names_the_excluded_concept():
    base = {"world": "canvas-mini renders", "seed_range": "fid", "per_pair": 5}
    keys = {
        stats_key("f", {**base, "excluded": {"axis": kind, "concept": c}})
        for kind, c in (("style", "Watercolor"), ("style", "Pop_Art"), ("object", "Watercolor"))
    }
    assert len(keys) == 3 and stats_key("f", base) not in keys
