"""SalUn acceptance on canvas-mini (slow: about 20 minutes on 2 CPU cores).

Style erasure, 3 targets: mean UA >= 90%, mean IRA and CRA at most 5 points below the original model.
Object erasure, 2 targets: mean UA >= 85%, same IRA / CRA tolerance. 5 evaluation seeds, shipped classifiers.
Each erasure under 3 minutes, and the patch under half the UNet's safetensors.
Retain fidelity (issue 9): mean UA >= 95% over the five targets, IRA and CRA at most 2 points below the original's
on every target, and same-seed retained PSNR >= 24 dB on every target.
"""

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    import json
    from pathlib import Path

    from bench.acceptance import format_summary, run_acceptance

    targets = [
        ("Watercolor", "style"),
        ("Pop_Art", "style"),
        ("Rust", "style"),
        ("Birds", "object"),
        ("Towers", "object"),
    ]
    s = run_acceptance("salun", targets, tmp_path_factory.mktemp("salun-acceptance"), "canvas-mini", {})
    print("\n" + format_summary(s))
    record = Path("runs/acceptance")
    record.mkdir(parents=True, exist_ok=True)
    (record / "salun-slow-test.json").write_text(json.dumps(s, indent=2))
    return s


def test_style_erasure(summary):
    m = summary["style_mean"]
    assert m["ua"] >= 0.90 and m["d_ira_points"] >= -5 and m["d_cra_points"] >= -5, m


def test_object_erasure(summary):
    m = summary["object_mean"]
    assert m["ua"] >= 0.85 and m["d_ira_points"] >= -5 and m["d_cra_points"] >= -5, m


def test_retain_fidelity(summary):
    rows = summary["rows"]
    assert sum(r["ua"] for r in rows) / len(rows) >= 0.95, [r["ua"] for r in rows]
    for r in rows:
        assert r["d_ira_points"] >= -2 and r["d_cra_points"] >= -2, r
        assert r["retained_psnr"] >= 24, (r["target"], r["retained_psnr"])


def test_efficiency(summary):
    from worlds.canvas_mini import PIPELINE_DIR

    unet = (PIPELINE_DIR / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    for r in summary["rows"]:
        assert r["seconds"] < 180 and r["patch_bytes"] < unet / 2, r


def test_erased_pipeline_round_trip_on_the_shipped_model(tmp_path, canvas_pipe):
    """save_erased -> plain diffusers gives the patched images; remove_patch restores bit for bit."""
    import torch
    from diffusers import StableDiffusionPipeline

    from erase.api import erase_concept
    from erase.core.request import EraseRequest
    from eval.generate import generate
    from eval.protocols import load_protocol
    from pipelines.stable_diffusion import apply_patch, named_parameters, remove_patch, save_erased

    before = {n: p.detach().clone() for n, p in named_parameters(canvas_pipe).items()}
    request = EraseRequest.from_protocol(load_protocol("canvas-mini"), "Mosaic", "style")
    patch = erase_concept(
        canvas_pipe,
        "salun",
        request,
        tmp_path / "patch",
        preset="canvas-mini",
        overrides={"steps": 50},
        progress=False,
    )
    apply_patch(canvas_pipe, patch)
    prompts = ["A Birds image in Mosaic style.", "A Cats image in Winter style."]
    patched = generate(canvas_pipe, prompts, [0, 1], steps=20, progress=False)
    save_erased(canvas_pipe, tmp_path / "erased")
    plain = StableDiffusionPipeline.from_pretrained(str(tmp_path / "erased"))
    assert np.array_equal(generate(plain, prompts, [0, 1], steps=20, progress=False), patched)
    remove_patch(canvas_pipe)
    assert all(torch.equal(before[n], p) for n, p in named_parameters(canvas_pipe).items())
