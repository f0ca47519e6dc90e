"""Retain fidelity, judge confidence and the CLIP-space FID inside `evaluate` on the shipped canvas-mini model
(1 seed, 10 steps): the original's answer set is sampled once per model and protocol, and a patch that changes nothing
is measured as exactly the original."""

import json

import pytest
import torch

from erase.core.components import named_parameters
from erase.core.patch import ErasurePatch, apply_patch, fingerprint, remove_patch
from eval.fidelity import PSNR_CAP
from eval.protocols import load_protocol
from eval.report import EvalOptions, evaluate
from worlds.canvas_mini import PIPELINE_DIR

TARGETS = [("Watercolor", "style")]


def _noise_patch(pipe, scale: float, seed: int) -> ErasurePatch:
    params = named_parameters(pipe)
    names = [n for n in params if "mid_block" in n and n.endswith("attn2.to_v.weight")]
    g = torch.Generator().manual_seed(seed)
    base = {n: params[n].detach().clone() for n in names}
    tuned = {n: b + scale * torch.randn(b.shape, generator=g) for n, b in base.items()}
    return ErasurePatch.from_diff(
        base, tuned, {n: None for n in names}, {"method": "test"}, fingerprint=fingerprint(pipe, names)
    )


@pytest.fixture(scope="module")
def protocol():
    return load_protocol("canvas-mini").with_overrides(seeds=[0], steps=10)


@pytest.fixture(scope="module")
def runs(canvas_pipe, protocol, tmp_path_factory):
    """The original, then two patches of the same model; records every answer-set generation."""
    import eval.answer_set as answer_set

    calls, real = [], answer_set.generate_answer_set

    def counting(pipe, proto, folder, **kw):
        calls.append(str(folder))
        return real(pipe, proto, folder, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(answer_set, "generate_answer_set", counting)
    mp.setattr("eval.report.generate_answer_set", counting)
    root = tmp_path_factory.mktemp("fidelity")
    opts = EvalOptions(progress=False, grid=False)
    try:
        out = {
            "original": evaluate(
                canvas_pipe, protocol, TARGETS, root / "original", model_id=str(PIPELINE_DIR), options=opts
            )
        }
        for name, scale in (("noise", 0.3), ("zero", 0.0)):
            apply_patch(canvas_pipe, _noise_patch(canvas_pipe, 0.3, 1), scale=scale)
            try:
                out[name] = evaluate(
                    canvas_pipe, protocol, TARGETS, root / name, model_id=str(PIPELINE_DIR), patch=name, options=opts
                )
            finally:
                remove_patch(canvas_pipe)
    finally:
        mp.undo()
    return out, calls, root


def test_the_original_is_sampled_once(runs):
    out, calls, root = runs
    assert calls == [str(root / "original" / "images"), str(root / "noise" / "images"), str(root / "zero" / "images")]
    assert out["original"]["retain_fidelity"] is None and "carries no patch" in out["original"]["retain_fidelity_note"]


def test_the_original_evaluated_again_reuses_its_cached_answer_set(runs, canvas_pipe, protocol, tmp_path):
    again = evaluate(
        canvas_pipe,
        protocol,
        TARGETS,
        tmp_path / "again",
        model_id=str(PIPELINE_DIR),
        options=EvalOptions(progress=False, grid=False),
    )
    n = len(protocol.answer_set())
    assert again["images"] == {"total": n, "generated": 0, "reused": n}
    assert again["per_concept"] == runs[0]["original"]["per_concept"]
    skipped = evaluate(
        canvas_pipe,
        protocol,
        TARGETS,
        tmp_path / "no-fidelity",
        model_id=str(PIPELINE_DIR),
        options=EvalOptions(progress=False, grid=False, fid=False, fidelity=False),
    )
    assert skipped["images"]["generated"] == n  # --no-fidelity: no cache is read either


def test_a_patch_that_changes_nothing_is_exact(runs):
    f = runs[0]["zero"]["retain_fidelity"]
    assert f["n"] == 100 and f["identical"] == 100  # 10 other styles x 10 objects
    assert f["psnr"] == PSNR_CAP and f["perceptual"] == 0.0


def test_a_real_change_is_seen_per_concept(runs):
    report = runs[0]["noise"]
    f = report["retain_fidelity"]
    assert f["identical"] < f["n"] and 10 < f["psnr"] < 60 and f["perceptual"] > 0
    assert "Watercolor" not in f["per_concept"]["style"] and len(f["per_concept"]["style"]) == 10
    assert len(f["per_concept"]["object"]) == 10 and all(v["n"] == 10 for v in f["per_concept"]["object"].values())
    assert f["in_domain"]["concepts"] == 10 and f["cross_domain"]["concepts"] == 10
    assert "classifiers' feature maps" in f["perceptual_space"]
    on_disk = json.loads((runs[2] / "noise" / "report.json").read_text())
    assert on_disk["retain_fidelity"]["psnr"] == pytest.approx(f["psnr"])
    md = (runs[2] / "noise" / "report.md").read_text()
    assert "## Same-seed retain fidelity" in md and "| Pencil_Drawing | style |" in md


def test_confidence_sits_next_to_accuracy(runs):
    report = runs[0]["original"]
    c = report["confidence"]
    probs = {k: v["true_prob"] for k, v in report["per_concept"]["style"].items()}
    assert c["target"] == pytest.approx(probs["Watercolor"])
    others = [p for k, p in probs.items() if k not in ("Watercolor", "Photo")]
    assert c["ira"] == pytest.approx(sum(others) / len(others))
    assert "judge confidence" in (runs[2] / "original" / "report.md").read_text()


def test_second_fid_in_clip_space(runs):
    report = runs[0]["original"]
    assert "CLIP image embeddings" in report["fid_clip"]["feature_space"]
    assert report["fid_clip"]["n_reference"] == report["fid"]["n_reference"] == 100
    assert report["fid_clip"]["value"] >= 0 and report["fid_clip"]["value"] != report["fid"]["value"]
