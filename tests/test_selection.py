import pytest
import torch
from torch import nn

from erase.core.selection import ParamSelection


def test_saliency_keeps_the_largest_magnitudes():
    grads = {"a": torch.tensor([0.1, -5.0, 0.2, 3.0]), "b": torch.tensor([[-0.3, 4.0], [0.05, -2.0]])}
    sel = ParamSelection.by_saliency(grads, 0.5)  # 8 entries -> keep 4: -5, 4, 3, -2
    assert sel.masks["a"].tolist() == [False, True, False, True]
    assert sel.masks["b"].tolist() == [[False, True], [False, True]]


def test_saliency_fraction_counts_and_global_ranking():
    g = torch.Generator().manual_seed(0)
    grads = {"small": torch.randn(1000, generator=g) * 0.01, "large": torch.randn(1000, generator=g)}
    sel = ParamSelection.by_saliency(grads, 0.25)
    kept = sel.masks["small"].sum() + sel.masks["large"].sum()
    assert kept == 500
    # global ranking: the small-scale tensor loses almost everything (layer scale shapes a global mask)
    assert sel.masks["small"].sum() < 5
    threshold = torch.cat([grads["small"].abs(), grads["large"].abs()]).sort().values[-500]
    assert (grads["large"].abs()[sel.masks["large"]] >= threshold).all()


def test_saliency_does_not_sort(monkeypatch):
    def no_sort(*a, **k):
        raise AssertionError("full sort used")

    monkeypatch.setattr(torch, "sort", no_sort)
    monkeypatch.setattr(torch, "argsort", no_sort)
    ParamSelection.by_saliency({"a": torch.randn(100)}, 0.3)


def test_bad_fraction():
    with pytest.raises(ValueError):
        ParamSelection.by_saliency({"a": torch.randn(3)}, 0.0)


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


def test_by_name_freeze_and_count():
    m = model()
    sel = ParamSelection.by_name(m, r"^2\.")
    params = sel.freeze_others_(m)
    assert len(params) == 2 and not m[0].weight.requires_grad and m[2].weight.requires_grad
    assert sel.count(m) == 4 * 2 + 2
    assert ParamSelection.everything(m).count(m) == sum(p.numel() for p in m.parameters())
    with pytest.raises(ValueError, match="no parameter matches"):
        ParamSelection.by_name(m, "nothing")


def test_masked_weights_stay_bit_identical_under_adam():
    m = model()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    grads = {n: torch.randn_like(p) for n, p in m.named_parameters()}
    sel = ParamSelection.by_saliency(grads, 0.5)
    opt = torch.optim.Adam(sel.freeze_others_(m), lr=1e-2, weight_decay=0.0)
    x = torch.randn(16, 4)
    for _ in range(5):
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        sel.mask_grads_(m)
        opt.step()
    for n, p in m.named_parameters():
        mask = sel.masks[n]
        assert torch.equal(p.detach()[~mask], before[n][~mask]), n
        assert not torch.equal(p.detach()[mask], before[n][mask]), n


def test_density_by_prefix():
    m = model()
    sel = ParamSelection({"0.weight": torch.zeros(4, 4, dtype=torch.bool).fill_diagonal_(True), "2.bias": None})
    d = sel.density_by_prefix(m, depth=1)
    assert d["0"] == pytest.approx(4 / 20) and d["2"] == pytest.approx(2 / 10)


def test_saliency_keeps_ties_with_the_threshold():
    grads = {"w": torch.tensor([2.0, 2.0, 2.0, 2.0])}
    sel = ParamSelection.by_saliency(grads, 0.5)  # upstream keeps |g| >= threshold: all four tie, all four kept
    assert sel.masks["w"].tolist() == [True, True, True, True]
    grads = {"w": torch.tensor([0.0, 0.0, 0.0, 1.0, 3.0, 3.0])}
    sel = ParamSelection.by_saliency(grads, 0.5)  # threshold 1.0: 1 and both 3s kept; zeros never tie in
    assert sel.masks["w"].tolist() == [False, False, False, True, True, True]
    sel = ParamSelection.by_saliency({"w": torch.tensor([0.0, 0.0, 0.0, 5.0])}, 0.5)  # threshold 0: only non-zero
    assert sel.masks["w"].tolist() == [False, False, False, True]
