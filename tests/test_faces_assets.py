"""The shipped faces-mini judges and tiny CLIPs, measured on renders none of them was trained on (the check range)."""

import pytest

from eval.faces_mini.assets import ASSETS_DIR, load_judge
from eval.faces_mini.check import CLIP_ZERO_SHOT_BAR, JUDGE_ACCURACY_BAR, clip_zero_shot, head_accuracy, identity_accuracy
from eval.faces_mini.render import render_set
from eval.faces_mini.world import BINARY, SEED_BASE


def _built(name: str) -> bool:
    return any((ASSETS_DIR / name / f).is_file() for f in ("config.json", "open_clip_config.json"))


@pytest.fixture(scope="module")
def fresh():
    images, labels = render_set(1000, SEED_BASE["check"])
    return images.float() / 255, labels


@pytest.mark.parametrize("name", ["classifier", "classifier_b"])
def test_attribute_classifiers_name_every_head(fresh, name):
    if not _built(name):
        pytest.skip(f"faces-mini {name} not built")
    x, labels = fresh
    accuracy = head_accuracy(load_judge(name), x, labels)
    assert min(accuracy.values()) >= JUDGE_ACCURACY_BAR, accuracy


def test_identity_embedder_names_the_identities(fresh):
    if not _built("identity"):
        pytest.skip("faces-mini identity embedder not built")
    x, labels = fresh
    assert identity_accuracy(load_judge("identity"), x, labels) >= JUDGE_ACCURACY_BAR


@pytest.mark.parametrize("which", ["clip-guide", "clip-judge"])
def test_each_clip_tells_every_attribute_from_its_negation(fresh, which):
    """Zero-shot "a smiling face" vs "a serious face" and so on; a guide blind to an attribute cannot erase it."""
    if not _built(which):
        pytest.skip(f"faces-mini {which} not built")
    x, labels = fresh
    accuracy = clip_zero_shot(which, ASSETS_DIR / which, x, {h: labels[h] for h in BINARY})
    assert min(accuracy.values()) >= CLIP_ZERO_SHOT_BAR, accuracy


def test_the_guides_offer_three_perceptual_distances_that_see_a_change(fresh):
    if not all(_built(n) for n in ("clip-guide", "classifier", "identity")):
        pytest.skip("faces-mini guides not built")
    from eval.faces_mini.guides import faces_mini_guides

    guides = faces_mini_guides()
    x = fresh[0][:16]
    assert set(guides.perceptual_choices) == {"classifier", "identity", "random"}
    assert {f"perceptual:{k}" for k in guides.perceptual_choices} <= set(guides.describe())
    seen = []
    for name, distance in guides.perceptual_choices.items():
        same, other = distance(x, x), distance(x, x.flip(0))
        assert same.abs().max() < 1e-6 and other.min() > 0, name
        seen.append(other)
    assert not any(a.allclose(b) for i, a in enumerate(seen) for b in seen[i + 1:])  # three different networks
    assert guides.perceptual(x, x.flip(0)).allclose(guides.perceptual_choices["classifier"](x, x.flip(0)))
