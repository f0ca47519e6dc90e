"""The shipped faces-mini judges and tiny CLIPs, measured on renders none of them was trained on (the check range)."""

import pytest

from worlds.faces_mini.assets import ASSETS_DIR, load_judge
from worlds.faces_mini.check import (
    CLIP_ZERO_SHOT_BAR,
    JUDGE_ACCURACY_BAR,
    clip_zero_shot,
    head_accuracy,
    identity_accuracy,
)
from worlds.faces_mini.render import render_set
from worlds.faces_mini.world import BINARY, SEED_BASE


def _built(name: str) -> bool:
    return any((ASSETS_DIR / name / f).is_file() for f in ("config.json", "open_clip_config.json"))


@pytest.fixture(scope="module")
def fresh():
    images, labels = render_set(1000, SEED_BASE["check"])
    return images.float() / 255, labels


@pytest.mark.parametrize("name", ["classifier", "classifier_b", "guide-classifier", "guide-classifier-b"])
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
    if not all(_built(n) for n in ("clip-guide", "guide-classifier", "guide-identity")):
        pytest.skip("faces-mini guides not built")
    from worlds.faces_mini.guides import faces_mini_guides

    guides = faces_mini_guides()
    x = fresh[0][:16]
    assert set(guides.perceptual_choices) == {"guide-classifier", "guide-identity", "random"}
    assert {f"perceptual:{k}" for k in guides.perceptual_choices} <= set(guides.describe())
    seen = []
    for name, distance in guides.perceptual_choices.items():
        same, other = distance(x, x), distance(x, x.flip(0))
        assert same.abs().max() < 1e-6 and other.min() > 0, name
        seen.append(other)
    assert not any(a.allclose(b) for i, a in enumerate(seen) for b in seen[i + 1 :])  # three different networks
    assert guides.perceptual(x, x.flip(0)).allclose(guides.perceptual_choices["random"](x, x.flip(0)))


def test_the_other_attributes_are_kept_through_a_network_the_generator_was_not_sharpened_through(fresh):
    """The generator's last step tuned its faces through one guide classifier (sharpen.json names it); a KL through
    that same network recoloured the erased faces' lips, so the attributes an erasure keeps are read by the second."""
    import json

    import torch

    from worlds.faces_mini.guides import GUIDE_ASSETS, faces_mini_guides
    from worlds.faces_mini.world import HEADS

    if not all(_built(n) for n in GUIDE_ASSETS):
        pytest.skip("faces-mini guides not built")

    sharpened_through = json.loads((ASSETS_DIR / "generator" / "sharpen.json").read_text())["guide"]
    x = fresh[0][:64]

    def other_heads(name):
        with torch.no_grad():
            logits = load_judge(name)(x)
        return torch.cat([logits[h].log_softmax(1) for h in HEADS if h != "eyeglasses"], dim=1)

    with torch.no_grad():
        kept = faces_mini_guides().other_attributes(x, "eyeglasses")
    assert sharpened_through == "guide-classifier"
    assert kept.allclose(other_heads("guide-classifier-b"), atol=1e-5)
    assert not kept.allclose(other_heads(sharpened_through), atol=1e-2)


def test_the_shipped_generator_has_the_recipes_layout_and_meets_the_generator_bars(fresh):
    """The committed generator is the recipe's (8-layer mapping, its widths, float16 on disk), sharpened, and meets
    issue 25's generator bars on the check's 1,000 samples: every binary attribute and hair colour within 8 points of
    the renders' rates (measured worst 5.3, blond hair), confident on 80% of the samples on the eyeglasses and smile
    heads and 60% on identity (measured 88.2 / 88.2 / 74.7%; the GAN before its sharpening: 83.5 / 75.3 / 57.2%,
    smile 9.0 points off)."""
    if not (_built("generator") and _built("classifier")):
        pytest.skip("faces-mini generator not built")
    import json

    from safetensors import safe_open

    from worlds.faces_mini.check import BARS, generator_samples, judge_all, rates
    from worlds.faces_mini.train import Recipe

    config = json.loads((ASSETS_DIR / "generator" / "config.json").read_text())
    recipe = Recipe()
    assert {k: config[k] for k in ("resolution", "n_mlp", "style_dim", "z_dim")} == {
        k: recipe.gan[k] for k in ("resolution", "n_mlp", "style_dim", "z_dim")
    }
    assert {str(k): v for k, v in config["channels"].items()} == recipe.gan["channels"]
    with safe_open(str(ASSETS_DIR / "generator" / "generator.safetensors"), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
    assert json.loads((ASSETS_DIR / "generator" / "sharpen.json").read_text())["steps"] == recipe.sharpen_steps
    x = generator_samples(ASSETS_DIR, 1000)
    assert x.shape == (1000, 3, 32, 32)
    probs = judge_all(load_judge("classifier"), x)
    made = rates({h: p.argmax(1) for h, p in probs.items()})
    data = rates(fresh[1])
    off = {k: round(100 * abs(made[k] - data[k]), 1) for k in made}
    assert max(off.values()) <= BARS["rate_points"], off
    confident = {h: float((probs[h].max(1).values > 0.9).float().mean()) for h in BARS["confident_heads"]}
    assert all(confident[h] >= bar for h, bar in BARS["confident_heads"].items()), confident


def test_the_evaluation_mapper_steps_come_from_the_assets_recipe(tmp_path):
    import json

    from worlds.faces_mini.assets import FacesAssetError, evaluation_mapper_steps

    assert evaluation_mapper_steps(tmp_path, 1500) == 1500  # no recipe.json: the default
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"recipe": {"seed": 0}}))
    assert evaluation_mapper_steps(tmp_path, 1500) == 1500  # a recipe from before the field
    recipe.write_text(json.dumps({"recipe": {"eval_mapper_steps": 20}}))
    assert evaluation_mapper_steps(tmp_path, 1500) == 20
    recipe.write_text(json.dumps({"recipe": {"eval_mapper_steps": 0}}))
    with pytest.raises(FacesAssetError, match="eval_mapper_steps must be a positive integer"):
        evaluation_mapper_steps(tmp_path, 1500)
