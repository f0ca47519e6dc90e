"""The evaluation module end to end on the shipped canvas-mini model (no erasure)."""

import json

import pytest
import torch

from eval.protocols import load_protocol
from eval.report import EvalOptions, OutputFolderError, evaluate
from worlds.canvas_mini import ASSETS_DIR, OBJECTS, PIPELINE_DIR, STYLES


@pytest.fixture(scope="module")
def original_report(tmp_path_factory, canvas_pipe):
    out = tmp_path_factory.mktemp("eval") / "original"
    protocol = load_protocol("canvas-mini")
    targets = [("Watercolor", "style"), ("Pop_Art", "style"), ("Birds", "object")]
    report = evaluate(
        canvas_pipe, protocol, targets, out, model_id=str(PIPELINE_DIR), options=EvalOptions(progress=False)
    )
    return out, report


def test_report_files_and_fields(original_report):
    out, report = original_report
    on_disk = json.loads((out / "report.json").read_text())
    for key in (
        "protocol",
        "target",
        "kind",
        "ua",
        "ira",
        "cra",
        "targets",
        "macro",
        "style_accuracy",
        "object_accuracy",
        "per_concept",
        "confusion",
        "fid",
        "clip_score",
        "photo_class_rule",
        "sampler",
        "deviations",
        "images",
        "versions",
        "seconds",
        "grid",
    ):
        assert key in on_disk, key
    assert (out / "report.md").read_text().startswith("# Evaluation report")
    assert (out / "grid.png").exists()
    assert sorted(p.name for p in (out / "images").glob("*.png")) == sorted(
        f"{s}_{o}_seed{k}.png" for s in STYLES for o in OBJECTS for k in range(5)
    )
    assert report["images"] == {"total": 550, "generated": 550, "reused": 0}
    assert report["sampler"] == {
        "sampler": "ddim",
        "applied": "DDIMScheduler",
        "pipeline_scheduler": "DDIMScheduler",
        "eta": 0.0,
    }
    for t in report["targets"]:
        acc = {k: v["accuracy"] for k, v in report["per_concept"][t["kind"]].items()}
        other_kind = "object" if t["kind"] == "style" else "style"
        other = [v["accuracy"] for k, v in report["per_concept"][other_kind].items() if k != "Photo"]
        own = [a for k, a in acc.items() if k not in (t["target"], "Photo")]
        assert t["ua"] == pytest.approx(1 - acc[t["target"]])
        assert t["ira"] == pytest.approx(sum(own) / len(own))
        assert t["cra"] == pytest.approx(sum(other) / len(other))
    assert report["macro"]["ua"] == pytest.approx(sum(t["ua"] for t in report["targets"]) / 3)
    assert "classifier features" in report["fid"]["feature_space"]
    assert [(t["fid"]["n_reference"], t["fid"]["n_generated"]) for t in report["targets"]] == [
        (500, 500),
        (500, 500),
        (495, 495),
    ]
    assert report["clip_score"]["scale"].startswith("100 * max(cosine(image, prompt), 0)")
    assert report["deviations"] == []


def test_accuracy_matches_the_canvas_mini_check(original_report):
    _, report = original_report
    quality = json.loads((ASSETS_DIR / "quality.json").read_text())
    assert abs(report["style_accuracy"] - quality["generation_style"]) <= 0.01
    assert abs(report["object_accuracy"] - quality["generation_object"]) <= 0.01


def test_original_model_still_draws_every_target(original_report):
    _, report = original_report
    for t in report["targets"]:
        assert t["ua"] <= 0.25, t  # UA of an unerased model is small: it still draws the concept


def test_hand_count_against_the_saved_confusion(original_report):
    _, report = original_report
    conf = torch.tensor(report["confusion"]["style"]["matrix"])
    i = STYLES.index("Watercolor")
    assert report["per_concept"]["style"]["Watercolor"]["accuracy"] == pytest.approx(
        conf[i, i].item() / conf[i].sum().item()
    )
    others = [conf[j, j].item() / conf[j].sum().item() for j in range(len(STYLES)) if j != i and STYLES[j] != "Photo"]
    assert report["targets"][0]["ira"] == pytest.approx(sum(others) / len(others))


def test_resume_reuses_images_and_foreign_runs_are_refused(original_report, canvas_pipe):
    out, _ = original_report
    protocol = load_protocol("canvas-mini")
    again = evaluate(
        canvas_pipe,
        protocol,
        [("Watercolor", "style")],
        out,
        model_id=str(PIPELINE_DIR),
        options=EvalOptions(progress=False, fid=False, grid=False),
    )
    assert again["images"] == {"total": 550, "generated": 0, "reused": 550}
    with pytest.raises(OutputFolderError, match="another run"):
        evaluate(
            canvas_pipe, protocol.with_overrides(steps=10), [("Watercolor", "style")], out, model_id=str(PIPELINE_DIR)
        )


def test_clip_score_ranks_matching_captions_first():
    import numpy as np

    from eval.clip_alignment import CLIPAlignment
    from eval.generate import to_tensor
    from worlds.canvas_mini import load_clip, render
    from worlds.canvas_mini.world import caption

    clip = CLIPAlignment(*load_clip())
    pairs = [(s, o) for s in STYLES for o in OBJECTS][::7]
    images = to_tensor(np.stack([np.asarray(render(s, o, 123_456)) for s, o in pairs]))
    matching = [caption(s, o) for s, o in pairs]
    shifted = matching[1:] + matching[:1]
    assert clip.clip_score(images, matching) > clip.clip_score(images, shifted) + 5
    wins = (clip.cosine(images, matching) > clip.cosine(images, shifted)).float().mean().item()
    assert wins >= 0.9
