"""The linear probe in W and the concept-free counterpart it gives (erase.core.latent_probe), and its use as
Text-to-Unlearn's ``counterpart probe``."""

import json

import pytest
import torch

from erase.core.guides import Guides
from erase.core.latent_probe import LatentProbe, balanced_accuracy, fit_probe


class LinearWorld(torch.nn.Module):
    """A stand-in generator whose W is z and whose image is a grey level set by w[0]: a concept that is linear in W
    ('bright', w[0] > 0.3) or, with ``linear=False``, one that is not (|w[0]| > 0.7, on both sides)."""

    def __init__(self, dim: int = 6, n_latent: int = 3):
        super().__init__()
        self.config = type("Config", (), {"z_dim": dim})()
        self.n_latent = n_latent
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def mapping(self, z):
        return z

    def truncate(self, w, psi):
        return w * psi

    def synthesis(self, codes):
        level = codes[:, 0, 0].view(-1, 1, 1, 1).expand(-1, 3, 4, 4)
        return level.clamp(-1, 1)


def guides(linear: bool) -> Guides:
    def concept_probability(x, concept):
        v = x.mean(dim=(1, 2, 3)) * 2 - 1  # the image's grey level back in [-1, 1]
        return (v > 0.3).float() if linear else (v.abs() > 0.7).float()

    return Guides(clip_image=lambda x: x, clip_text=lambda t: t, concept_probability=concept_probability)


def test_balanced_accuracy_matches_a_hand_count():
    truth = torch.tensor([True, True, True, True, False, False])
    predicted = torch.tensor([True, True, True, False, False, True])
    assert balanced_accuracy(predicted, truth) == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert balanced_accuracy(torch.zeros(6, dtype=torch.bool), truth) == pytest.approx(0.5)  # always 'no'


def test_the_counterpart_moves_only_faces_above_minus_margin_and_exactly_to_it():
    a = torch.tensor([2.0, 0.0, -1.0])
    v = torch.tensor([0.5, 1.0, 0.0])  # a . v = 1
    probe = LatentProbe(weight=a, bias=0.5, move=v, margin=1.0, accuracy=1.0, rate=0.5)
    w = torch.tensor([[3.0, 1.0, 0.0], [-2.0, 4.0, 1.0], [-0.75, 2.0, 0.0]])  # scores 6.5, -4.5, -1.0
    moved = probe.counterpart(w)
    assert torch.allclose(probe.score(moved), torch.tensor([-1.0, -4.5, -1.0]))
    assert torch.equal(moved[1:], w[1:])  # at or below -margin: exactly as it was
    assert torch.allclose(moved[0], w[0] - 7.5 * v)  # along v only
    wplus = torch.stack([w, w], 1)  # every W+ row is moved the same way
    assert torch.allclose(probe.counterpart(wplus), torch.stack([moved, moved], 1))


def test_a_concept_linear_in_w_gives_an_accurate_probe_and_its_counterpart_is_concept_free():
    G = LinearWorld()
    g = guides(linear=True)
    probe = fit_probe(G, g, "bright", n=800, seed=0, margin=3.0)
    assert probe.accuracy > 0.95 and 0.2 < probe.rate < 0.5
    z = torch.randn(400, 6, generator=torch.Generator().manual_seed(9))
    wplus = z.unsqueeze(1).expand(-1, G.n_latent, -1)
    has = g.concept_probability((G.synthesis(wplus) + 1) / 2, "bright").bool()
    free = probe.counterpart(wplus)
    after = g.concept_probability((G.synthesis(free) + 1) / 2, "bright").bool()
    assert has.sum() > 50 and not after.any()  # every face with the concept lost it
    moved = probe.score(z) > -3.0
    assert torch.allclose(probe.score(free[moved]), torch.tensor(-3.0), atol=1e-4)  # and stops at -margin
    far = probe.score(z) < -3.0  # faces the probe reads as clearly without it are untouched
    assert far.sum() > 50 and torch.equal(free[far], wplus[far])


def test_a_concept_that_is_not_linear_in_w_gives_a_probe_near_chance():
    probe = fit_probe(LinearWorld(), guides(linear=False), "extreme", n=800, seed=0, margin=3.0)
    assert probe.accuracy < 0.7


def test_text_to_unlearn_uses_the_probe_counterpart_only_above_its_accuracy_floor(tmp_path):
    from tests.test_text_to_unlearn import QUICK, quick_erase

    over = {**QUICK, "remove_target": 1.0, "counterpart": "probe", "probe_samples": 64}
    used = quick_erase(tmp_path / "a", {**over, "probe_accuracy": 0.0}).config["info"]
    unused = quick_erase(tmp_path / "b", {**over, "probe_accuracy": 1.01}).config["info"]
    assert used["probe"]["used"] and not unused["probe"]["used"]
    assert "removal" not in used  # the probe replaces the removing mapper, which is never trained
    logs = {k: [json.loads(r) for r in (tmp_path / k / "train_log.jsonl").read_text().splitlines()] for k in "ab"}
    assert any("removal" in r for r in logs["a"]) and not any("removal" in r for r in logs["b"])


def test_mode_probe_trains_the_mapping_towards_every_faces_counterpart(tmp_path):
    """With layers mapping the trained mapping's w is held to the probe's counterpart: after a few steps the faces the
    probe reads the concept in score lower, by the probe fitted on the frozen generator (recorded in info)."""
    from erase.core.latent_probe import fit_probe
    from erase.core.patch import apply_patch
    from tests.test_text_to_unlearn import QUICK, quick_erase, tiny_pipe, toy_guides

    over = {**QUICK, "mode": "probe", "layers": "mapping", "steps": 40, "batch_size": 64, "probe_samples": 256}
    patch = quick_erase(tmp_path / "p", {**over, "probe_accuracy": 0.0})
    info = patch.config["info"]["probe"]
    assert info["used"] and "gate" not in patch.config["info"]  # no mapper is trained in mode probe
    pipe = tiny_pipe()
    G = pipe.generator
    probe = fit_probe(G, toy_guides(), "eyeglasses", n=256, seed=4, margin=3.0)  # the run's (request seed 0 + 4)
    assert probe.describe() == {k: info[k] for k in ("balanced_accuracy", "rate", "margin")}
    z = torch.randn(512, G.config.z_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = (probe.score(G.mapping(z)) + 3.0).clamp_min(0).mean()
        apply_patch(pipe, patch)
        after = (probe.score(G.mapping(z)) + 3.0).clamp_min(0).mean()
    assert before > 0 and after < 0.5 * before


def test_mode_probe_refuses_a_concept_that_is_not_linear_in_w(tmp_path):
    from erase.core.errors import EraseError
    from tests.test_text_to_unlearn import QUICK, quick_erase

    with pytest.raises(EraseError, match="is not linear in this generator's W"):
        quick_erase(tmp_path / "p", {**QUICK, "mode": "probe", "probe_samples": 64, "probe_accuracy": 1.01})
    assert not (tmp_path / "p" / "patch.safetensors").exists()


def test_mode_probe_refuses_remove_target_which_would_hold_each_face_to_its_counterpart_twice():
    from erase.core.errors import EraseError
    from erase.methods._text_to_unlearn_config import TextToUnlearnConfig

    TextToUnlearnConfig(mode="probe").check()
    TextToUnlearnConfig(remove_target=1.0, counterpart="mapper").check()  # directional: the removing mapper's face
    with pytest.raises(EraseError, match="set remove_target=0"):
        TextToUnlearnConfig(mode="probe", remove_target=1.0).check()


def test_the_probe_is_fitted_once_and_then_read_from_the_cache_with_the_callers_margin(tmp_path, monkeypatch):
    import erase.core.latent_probe as lp

    monkeypatch.setenv("ERASEKIT_CACHE", str(tmp_path / "cache"))
    fits = []
    real = lp.fit_probe
    monkeypatch.setattr(lp, "fit_probe", lambda *a, **k: fits.append(1) or real(*a, **k))
    G, g = LinearWorld(), guides(linear=True)
    first = lp.cached_probe(G, g, "bright", n=256, seed=0, margin=2.0)
    again = lp.cached_probe(G, g, "bright", n=256, seed=0, margin=4.0)
    other = lp.cached_probe(G, g, "bright", n=256, seed=1, margin=2.0)  # another sample: another fit
    assert len(fits) == 2 and len(list((tmp_path / "cache" / "probes").glob("*.safetensors"))) == 2
    assert torch.equal(first.weight, again.weight) and torch.equal(first.move, again.move)
    assert (first.bias, first.accuracy, first.rate) == (again.bias, again.accuracy, again.rate)
    assert again.margin == 4.0 and not torch.equal(first.weight, other.weight)
    direct = real(G, g, "bright", n=256, seed=0, margin=2.0)
    assert torch.equal(first.weight, direct.weight) and first.describe() == direct.describe()
