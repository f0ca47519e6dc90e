"""The shipped canvas-mini artefacts: load offline, round-trip through plain diffusers, judge reliably."""

import json

import numpy as np
import pytest
import torch

from eval.generate import generate
from worlds.canvas_mini import ASSETS_DIR, OBJECTS, RESOLUTION, STYLES, AssetError, load_classifier
from worlds.canvas_mini.check import BARS, predict
from worlds.canvas_mini.data import render_set


@pytest.fixture(scope="module")
def fresh():
    # unseen seeds (the check range), 2 renders per style x object pair
    return render_set("check", 2)


def test_pipeline_is_a_plain_diffusers_pipeline(canvas_pipe, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    assert isinstance(canvas_pipe, StableDiffusionPipeline)
    assert isinstance(canvas_pipe.scheduler, DDIMScheduler)
    prompts = ["A Birds image in Watercolor style.", "A Towers image in Neon Lines style."]
    a = generate(canvas_pipe, prompts, [0, 1], steps=10, progress=False)
    assert a.shape == (2, RESOLUTION, RESOLUTION, 3)
    canvas_pipe.save_pretrained(tmp_path / "copy")
    b = generate(
        StableDiffusionPipeline.from_pretrained(str(tmp_path / "copy")), prompts, [0, 1], steps=10, progress=False
    )
    assert np.array_equal(a, b)
    # per-image seeding: the same (prompt, seed) gives the same image in another batch
    c = generate(canvas_pipe, prompts[1:], [1], steps=10, progress=False)
    assert np.abs(c[0].astype(int) - a[1].astype(int)).max() <= 1


@pytest.mark.parametrize("kind,classes", [("style", STYLES), ("object", OBJECTS)])
def test_classifiers_beat_their_bar_on_fresh_renders(fresh, kind, classes):
    clf = load_classifier(kind)
    assert clf.config.classes == classes
    labels = fresh.style if kind == "style" else fresh.obj
    acc = predict(clf, fresh.float_images()).eq(labels).float().mean().item()
    assert acc >= BARS[f"classifier_{kind}_renders"], acc


def test_inference_copy_folds_batchnorm_without_changing_answers(fresh):
    clf = load_classifier("object")
    fast = clf.for_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert not any(p.requires_grad for p in fast.parameters())
    x = fresh.float_images()
    with torch.no_grad():
        a, b = clf(x), fast(x)
        fa, fb = clf.features(x), fast.features(x)
    assert torch.allclose(a, b, atol=1e-4) and torch.equal(a.argmax(1), b.argmax(1))
    assert torch.allclose(fa, fb, atol=1e-4)
    # the original is untouched (still has its BatchNorm layers)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in clf.modules())


def test_classifier_rejects_wrong_image_size():
    clf = load_classifier("style")
    with pytest.raises(ValueError, match=rf"\(N, 3, {RESOLUTION}, {RESOLUTION}\)"):
        clf(torch.rand(1, 3, 64, 64))


def test_missing_or_corrupt_assets(tmp_path):
    with pytest.raises(AssetError, match="not found"):
        load_classifier("style", tmp_path)
    (tmp_path / "style.json").write_text("{broken")
    (tmp_path / "style.safetensors").write_bytes(b"xx")
    with pytest.raises(AssetError, match="corrupt"):
        load_classifier("style", tmp_path)
    with pytest.raises(ValueError, match="unknown classifier kind"):
        load_classifier("colour")


def test_tiny_clip_retrieves_captions(fresh):
    from worlds.canvas_mini import load_clip
    from worlds.canvas_mini.check import clip_retrieval

    model, tok = load_clip()
    acc = clip_retrieval(model, tok, fresh.float_images(), fresh.style * len(OBJECTS) + fresh.obj)
    assert acc >= BARS["clip_retrieval_top1"], acc


def test_recipe_records_measured_quality():
    recipe = json.loads((ASSETS_DIR / "recipe.json").read_text())
    q = recipe["quality"]
    assert q["generation_style"] >= BARS["generation_style"] and q["generation_object"] >= BARS["generation_object"]
    assert recipe["total_minutes"] > 0 and "unet" in recipe["stage_seconds"]
