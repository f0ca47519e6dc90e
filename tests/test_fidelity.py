"""Same-seed retain fidelity (issue 9): PSNR and perceptual distance against hand counts, exactness of a model
with itself, the LPIPS path with random weights in both layouts, and the judge validation (fidelity and
confidence move with human-visible degradations while accuracy may not)."""

import math

import pytest
import torch

from eval.fidelity import PSNR_CAP, FidelityError, RetainFidelity, feature_map_distance, load_lpips, psnr


def test_psnr_by_hand():
    a = torch.zeros(3, 3, 4, 4)
    b = a.clone()
    b[1] += 0.1  # mse 0.01 -> 20 dB
    b[2, 0, 0, 0] = 1.0  # one channel of one pixel off by 1: mse 1/48 -> 10 log10(48)
    got = psnr(a, b)
    assert got[0] == PSNR_CAP
    assert got[1].item() == pytest.approx(20.0, abs=1e-4)
    assert got[2].item() == pytest.approx(10 * math.log10(48), abs=1e-4)


def test_feature_map_distance_by_hand():
    a = torch.tensor([[[[3.0]], [[4.0]]]])  # one position, channels (3, 4) -> unit (0.6, 0.8)
    b = torch.tensor([[[[4.0]], [[3.0]]]])  # -> (0.8, 0.6); squared difference 0.04 + 0.04
    assert feature_map_distance([a], [b]).item() == pytest.approx(0.08, abs=1e-6)
    assert feature_map_distance([a, a], [b, 2 * a]).item() == pytest.approx(0.08, abs=1e-6)  # scale-free per position


def test_retain_fidelity_against_hand_counts():
    axes = {"style": ["A", "B", "C"], "object": ["x", "y"]}
    style = torch.tensor([0, 0, 1, 1, 2, 2, 1, 2])
    obj = torch.tensor([0, 1, 0, 1, 0, 1, 0, 0])
    p = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0, PSNR_CAP, 34.0, 56.0])
    d = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 6.0, 7.0])
    m = RetainFidelity(axes, "A", "style")
    m.update(p[:5], d[:5], {"style": style[:5], "object": obj[:5]})  # two batches
    m.update(p[5:], d[5:], {"style": style[5:], "object": obj[5:]})
    r = m.compute()
    kept = style != 0  # the target's own images are left out
    assert r["n"] == 6 and r["identical"] == 1
    assert r["psnr"] == pytest.approx(float(p[kept].mean()))
    assert r["perceptual"] == pytest.approx(float(d[kept].mean()))
    assert r["per_concept"]["style"]["B"] == {
        "psnr": pytest.approx((30 + 40 + 34) / 3),
        "perceptual": pytest.approx(13 / 3),
        "n": 3,
    }
    assert "A" not in r["per_concept"]["style"]
    assert r["per_concept"]["object"]["x"]["psnr"] == pytest.approx((30 + 50 + 34 + 56) / 4)  # style-A images excluded
    assert r["in_domain"]["psnr"] == pytest.approx(((30 + 40 + 34) / 3 + (50 + PSNR_CAP + 56) / 3) / 2)
    assert r["cross_domain"]["concepts"] == 2


def test_model_with_itself_is_exact():
    from eval.fidelity import ClassifierFeatureDistance
    from worlds.canvas_mini import load_classifier
    from worlds.canvas_mini.render import render_batch

    x = (
        torch.from_numpy(render_batch([("Watercolor", "Birds"), ("Rust", "Towers")], [1, 2]))
        .permute(0, 3, 1, 2)
        .float()
        / 255
    )
    dist = ClassifierFeatureDistance(*(load_classifier(k).for_inference() for k in ("style", "object")))
    assert torch.equal(dist(x, x.clone()), torch.zeros(2))
    assert torch.equal(psnr(x, x.clone()), torch.full((2,), PSNR_CAP))
    assert (dist(x, x.flip(0)) > 0.1).all()


@pytest.fixture(scope="module")
def random_lpips(tmp_path_factory):
    lpips = pytest.importorskip("lpips")
    torch.manual_seed(0)
    model = lpips.LPIPS(pretrained=False, net="alex", pnet_rand=True, verbose=False)
    for lin in model.lins:  # non-negative heads, as trained ones are
        lin.model[-1].weight.data.uniform_(0, 1)
    folder = tmp_path_factory.mktemp("lpips")
    torch.save(model.state_dict(), folder / "lpips_alex_random.pth")
    backbone = {f"features.{k}": v for name, sl in model.net.named_children() for k, v in sl.state_dict().items()}
    torch.save(backbone, folder / "alexnet_random_torchvision_layout.pth")
    return model.eval(), folder


def test_lpips_from_a_whole_state_dict(random_lpips):
    model, folder = random_lpips
    dist = load_lpips(folder / "lpips_alex_random.pth", "alex")
    torch.manual_seed(1)
    a, b = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert torch.allclose(dist(a, b), model(a, b, normalize=True).flatten(), atol=1e-6)
    assert torch.equal(dist(a, a.clone()), torch.zeros(2))


def test_lpips_from_a_torchvision_backbone_uses_the_package_heads(random_lpips):
    import lpips

    model, folder = random_lpips
    dist = load_lpips(folder / "alexnet_random_torchvision_layout.pth", "alex")
    heads = torch.load(lpips.__path__[0] + "/weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    for k, v in heads.items():
        assert torch.equal(dist.model.state_dict()[k], v), k
    for k, v in model.net.state_dict().items():
        assert torch.equal(dist.model.net.state_dict()[k], v), k


def test_lpips_bad_weights(tmp_path, random_lpips):
    _, folder = random_lpips
    with pytest.raises(FidelityError, match="LPIPS weights not found"):
        load_lpips(tmp_path / "none.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(FidelityError, match="do not fit lpips alex"):
        load_lpips(tmp_path / "other.pth")
    with pytest.raises(FidelityError, match="do not fit lpips vgg"):
        load_lpips(folder / "lpips_alex_random.pth", "vgg")

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(FidelityError, match="plain tensor checkpoint"):
        load_lpips(tmp_path / "evil.pth")


def test_judge_validation_fidelity_and_confidence_follow_the_degradation():
    """Blur, texture removal (palette kept) and palette shift on held-out renders: PSNR falls and the perceptual
    distance grows at every step; the style judge's true-class probability ends lower than it starts and never rises by
    more than 0.01 (blur 1 raises it by 0.003); accuracy stays at 100 at strength 1, where fidelity already moved."""
    from worlds.canvas_mini.judge_validation import measure

    table = measure(per_pair=1, objects=4)
    for name, rows in table.items():
        psnrs, percs, confs = ([r[k] for r in rows] for k in ("psnr", "perceptual", "confidence"))
        assert all(a > b for a, b in zip(psnrs, psnrs[1:])), (name, psnrs)
        assert all(a < b for a, b in zip(percs, percs[1:])), (name, percs)
        assert all(b <= a + 0.01 for a, b in zip(confs, confs[1:])) and confs[-1] < confs[0] - 0.1, (name, confs)
        assert rows[1]["accuracy"] == 1.0 and rows[1]["psnr"] < 32, (name, rows[1])


def test_comparison_grid_ranks_rows_by_psnr():
    import numpy as np

    from erase.cli.evaluate import _rank_rows

    rng = np.random.default_rng(0)
    original = [[rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2)] for _ in range(3)]
    erased = [[img.copy() for img in row] for row in original]
    erased[1][0] = 255 - erased[1][0]  # row 1 changed most, row 2 a little, row 0 not at all
    erased[2][1] = np.clip(erased[2][1].astype(int) + 3, 0, 255).astype(np.uint8)
    order, labels = _rank_rows(original, erased, ["A", "B", "C"], max_rows=2)
    assert order == [1, 2] and labels[0].startswith("B ") and labels[1].startswith("C ")
    order, labels = _rank_rows(original, erased, ["A", "B", "C"], max_rows=None)
    assert order == [0, 1, 2] and labels[0] == "A 100.0 dB"
