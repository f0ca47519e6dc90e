"""evaluate() on a small canvas-mini answer set (1 seed, 2 steps): sampler, FID exclusion,
streaming, CLIP scale, progress."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from eval.protocols import load_protocol
from eval.report import EvalOptions, evaluate
from eval.scoring import prepare_judging
from worlds.canvas_mini import PIPELINE_DIR

TARGETS = [("Watercolor", "style"), ("Birds", "object")]
BATCH = 32


def small_protocol():
    return load_protocol("canvas-mini").with_overrides(seeds=[0], steps=2)


@pytest.fixture(scope="module")
def small(tmp_path_factory, canvas_pipe):
    """One evaluation with its own reference cache, recording what the judges and the reference renderer saw."""
    import importlib

    import eval.answer_set as answer_set

    render_module = importlib.import_module(
        "worlds.canvas_mini.render"
    )  # the package re-exports a function named render

    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("eval") / "small"
    protocol = small_protocol()
    opt = EvalOptions(progress=False, batch_size=BATCH)
    judging = prepare_judging(protocol, TARGETS, opt)
    judge_batches, rendered, events = [], [], []

    def judged(axis, batch):
        judge_batches.append((axis, batch.shape[0], batch.dtype))
        events.append("judge")

    for axis in ("style", "object"):
        judging.judges[axis].register_forward_hook(lambda m, inp, o, axis=axis: judged(axis, inp[0]))
    real_render, real_read = render_module.render_array, answer_set._read_png
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ERASEKIT_CACHE", str(cache))
        mp.setattr(
            render_module, "render_array", lambda s, o, seed: rendered.append((s, o)) or real_render(s, o, seed)
        )
        mp.setattr(
            answer_set, "_read_png", lambda path, r, sha256=None: events.append("read") or real_read(path, r, sha256)
        )
        report = evaluate(
            canvas_pipe, protocol, TARGETS, out, model_id=str(PIPELINE_DIR), options=opt, judging=judging
        )
    return {
        "out": out,
        "report": report,
        "cache": cache,
        "judge_batches": judge_batches,
        "rendered": rendered,
        "events": events,
    }


def test_fid_reference_and_generated_set_both_exclude_the_target(small):
    from safetensors.torch import load_file

    style_fid, object_fid = (t["fid"] for t in small["report"]["targets"])
    assert (style_fid["n_reference"], style_fid["n_generated"]) == (
        10 * 10,
        10 * 10,
    )  # 11 styles x 10 objects, minus Watercolor's 10
    assert (object_fid["n_reference"], object_fid["n_generated"]) == (11 * 9, 11 * 9)  # minus Birds' 11
    assert style_fid["excluded"] == {"axis": "style", "concept": "Watercolor"}
    # the renderer drew no image of either target for the reference that excluded it
    first, second = small["rendered"][:100], small["rendered"][100:]
    assert len(small["rendered"]) == 199
    assert not [p for p in first if p[0] == "Watercolor"] and not [p for p in second if p[1] == "Birds"]
    # one cached reference per excluded concept and feature space (classifier features, CLIP embeddings), each holding
    # exactly the non-target renders; both feature spaces were fed from one rendering (199 renders above, not 398)
    counts = sorted(
        int(load_file(str(f))["real_features_num_samples"]) for f in small["cache"].glob("fid_ref_*.safetensors")
    )
    assert counts == [99, 99, 100, 100]


def test_scoring_streams_the_answer_set_in_batches(small):
    # PNGs are read a batch at a time, each batch judged before the next is read: never the whole set at once
    runs = [len(run) for run in "".join("r" if e == "read" else " " for e in small["events"]).split()]
    assert runs == [32, 32, 32, 14, 110]  # then the grid reads its 11 x 10 cells (first seed)
    sizes = [(axis, n) for axis, n, _ in small["judge_batches"]]
    for axis in ("style", "object"):
        assert [n for a, n in sizes if a == axis] == [32, 32, 32, 14]  # 110 images, never more than one batch at once
    assert {dtype for _, _, dtype in small["judge_batches"]} == {torch.float32}


def test_iter_answer_set_yields_uint8_batches_with_axis_labels(small):
    from eval.answer_set import iter_answer_set

    protocol = small_protocol()
    batches = list(iter_answer_set(protocol, small["out"] / "images", batch_size=50))
    assert [len(b.entries) for b in batches] == [50, 50, 10]
    first = batches[0]
    assert first.images.dtype == torch.uint8 and tuple(first.images.shape) == (50, 3, 32, 32)
    assert first.entries[10] == ("Neon_Lines", "Birds", 0)  # styles outer, objects inner, seeds innermost
    assert first.labels["style"][10].item() == 1 and first.labels["object"][10].item() == 0
    assert first.prompts[10] == "A Birds image in Neon Lines style."
    png = np.asarray(Image.open(small["out"] / "images" / "Neon_Lines_Birds_seed0.png").convert("RGB"))
    assert torch.equal(first.images[10], torch.from_numpy(png).permute(2, 0, 1))


def test_scores_match_the_saved_confusion_and_clip_scale_is_stated(small):
    report, out = small["report"], small["out"]
    conf = torch.tensor(report["confusion"]["style"]["matrix"]).double()
    acc = conf.diag() / conf.sum(1)
    styles = report["confusion"]["style"]["classes"]
    i = styles.index("Watercolor")
    others = [acc[j].item() for j, s in enumerate(styles) if s not in ("Watercolor", "Photo")]
    objs = torch.tensor(report["confusion"]["object"]["matrix"]).double()
    t = report["targets"][0]
    assert t["ua"] == pytest.approx(1 - acc[i].item())
    assert t["ira"] == pytest.approx(sum(others) / len(others))
    assert t["cra"] == pytest.approx((objs.diag() / objs.sum(1)).mean().item())
    assert report["style_accuracy"] == pytest.approx(conf.diag().sum().item() / 110)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["clip_score"]["scale"].startswith("100 * max(cosine(image, prompt), 0)")
    assert "CLIP score scale: 100 * max(cosine(image, prompt), 0)" in (out / "report.md").read_text()
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
        "deviations",
        "images",
        "versions",
        "seconds",
        "grid",
    ):
        assert key in on_disk, key
    assert on_disk["deviations"] == [
        "seeds: [0, 1, 2, 3, 4] -> [0] (protocol 'canvas-mini' says [0, 1, 2, 3, 4])",
        "steps: 50 -> 2 (protocol 'canvas-mini' says 50)",
    ]


def test_the_protocol_sampler_is_applied_and_the_pipeline_scheduler_restored(
    small, canvas_pipe, tmp_path, monkeypatch
):
    """A pipeline carrying Euler is evaluated with DDIM (eta 0), as the protocol says; its own scheduler comes back."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    import eval.answer_set as answer_set

    used, real_generate = [], answer_set.generate

    def spy(pipe, *args, **kwargs):
        used.append((type(pipe.scheduler).__name__, kwargs["eta"]))
        return real_generate(pipe, *args, **kwargs)

    monkeypatch.setattr(answer_set, "generate", spy)
    own = canvas_pipe.scheduler
    euler = EulerDiscreteScheduler.from_config(own.config)
    canvas_pipe.scheduler = euler
    try:
        report = evaluate(
            canvas_pipe,
            small_protocol(),
            TARGETS[:1],
            tmp_path / "e",
            model_id=str(PIPELINE_DIR),
            options=EvalOptions(progress=False, fid=False, grid=False),
        )
        assert canvas_pipe.scheduler is euler
    finally:
        canvas_pipe.scheduler = own
    assert isinstance(own, DDIMScheduler)
    assert used == [("DDIMScheduler", 0.0), ("DDIMScheduler", 0.0)]  # 110 images in two batches of 64
    assert report["sampler"] == {
        "sampler": "ddim",
        "applied": "DDIMScheduler",
        "pipeline_scheduler": "EulerDiscreteScheduler",
        "eta": 0.0,
    }
    for name in ("Watercolor_Birds_seed0.png", "Crayon_Flame_seed0.png"):  # bit-identical to the DDIM-carrying run
        assert (tmp_path / "e" / "images" / name).read_bytes() == (small["out"] / "images" / name).read_bytes()


def test_a_sampler_override_is_applied_and_recorded(canvas_pipe, tmp_path):
    from eval.answer_set import generate_answer_set
    from eval.protocols import Axis

    protocol = small_protocol().with_overrides(
        sampler="euler", axes=[Axis("style", ["Watercolor"]), Axis("object", ["Birds", "Cats"])]
    )
    stats = generate_answer_set(canvas_pipe, protocol, tmp_path, progress=False)
    assert stats["sampler"] == {
        "sampler": "euler",
        "applied": "EulerDiscreteScheduler",
        "pipeline_scheduler": "DDIMScheduler",
        "eta": 0.0,
    }
    assert "sampler: 'ddim' -> 'euler' (protocol 'canvas-mini' says 'ddim')" in protocol.deviations
    assert type(canvas_pipe.scheduler).__name__ == "DDIMScheduler"


def test_grid_uses_the_protocol_sampler(canvas_pipe):
    from diffusers import EulerDiscreteScheduler

    from erase.cli.evaluate import _grid_rows
    from eval.generate import generate

    protocol = small_protocol()
    expected = generate(
        canvas_pipe, [protocol.prompt("Watercolor", "Birds")], [3], steps=2, height=32, width=32, progress=False
    )
    own = canvas_pipe.scheduler
    canvas_pipe.scheduler = EulerDiscreteScheduler.from_config(own.config)
    try:
        rows = _grid_rows(canvas_pipe, protocol, ["Watercolor"], ["Birds"], seed=3)
    finally:
        canvas_pipe.scheduler = own
    assert np.array_equal(rows[0][0], expected[0])


def _bars(err: str, desc: str) -> list[tuple[int, int]]:
    """(n, total) of every refresh of the tqdm bars named ``desc`` in captured stderr."""
    return [(int(n), int(t)) for n, t in re.findall(re.escape(desc) + r":[^\r\n]*?\| *(\d+)/(\d+) \[", err)]


def test_one_progress_bar_per_job_with_the_real_total(small, canvas_pipe, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv(
        "ERASEKIT_CACHE", str(tmp_path / "cache")
    )  # an empty cache: every image is generated, none reused
    capfd.readouterr()
    evaluate(
        canvas_pipe,
        small_protocol(),
        TARGETS[:1],
        tmp_path / "p",
        model_id=str(PIPELINE_DIR),
        options=EvalOptions(batch_size=16, fid=False, grid=False),
    )
    err = capfd.readouterr().err
    assert set(re.findall(r"([^\r\n|]+?): +\d+%\|", err)) == {
        "erase eval: generating",
        "erase eval: scoring",
    }  # no other bars
    gen, score = _bars(err, "erase eval: generating"), _bars(err, "erase eval: scoring")
    assert (
        gen[0] == (0, 110) and gen[-1] == (110, 110) and {t for _, t in gen} == {110}
    )  # one bar, not one per 16-image chunk
    assert [n for n, _ in gen].count(0) == 1
    assert score[-1] == (110, 110) and {t for _, t in score} == {110}
    assert re.search(r"erase eval: generating:[^\r\n]*110/110 \[\d\d:\d\d<\d\d:\d\d", err)  # elapsed<remaining: an ETA
    evaluate(
        canvas_pipe,
        small_protocol(),
        TARGETS[:1],
        tmp_path / "q",
        model_id=str(PIPELINE_DIR),
        options=EvalOptions(batch_size=16, fid=False, grid=False, progress=False),
    )
    assert "erase eval" not in capfd.readouterr().err


def test_cli_eval_succeeds_quietly(tmp_path, capfd):
    from erase.cli import main

    out = tmp_path / "cli"
    code = main(
        [
            "eval",
            "--model",
            str(PIPELINE_DIR),
            "--target",
            "Watercolor",
            "--kind",
            "style",
            "--out",
            str(out),
            "--seeds",
            "1",
            "--steps",
            "2",
            "--no-fid",
            "--quiet",
        ]
    )
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""
    report = json.loads((out / "report.json").read_text())
    assert captured.out.splitlines()[0] == (
        f"{'Watercolor':>16s} (style): UA {100 * report['ua']:5.1f}  IRA {100 * report['ira']:5.1f}  "
        f"CRA {100 * report['cra']:5.1f}"
    )
    assert report["fid"] is None and report["sampler"]["applied"] == "DDIMScheduler"


def test_a_folder_written_before_axes_still_belongs_to_its_run(tmp_path):
    """run.json of an earlier version holds the protocol in the styles/objects shape: the same run may resume it."""
    from eval.report import OutputFolderError, check_output_folder, run_identity

    protocol = small_protocol()
    old = run_identity(str(PIPELINE_DIR), None, protocol)
    axes = old["protocol"].pop("axes")
    old["protocol"].update(styles=axes[0]["concepts"], objects=axes[1]["concepts"], photo_class="Photo")
    (tmp_path / "run.json").write_text(json.dumps(old))
    (tmp_path / "images").mkdir()
    check_output_folder(tmp_path, run_identity(str(PIPELINE_DIR), None, protocol))
    with pytest.raises(OutputFolderError, match="holds another run's results"):
        check_output_folder(tmp_path, run_identity(str(PIPELINE_DIR), None, protocol.with_overrides(steps=3)))


def test_the_protocol_names_the_metric_of_each_axis(small):
    """A protocol whose object axis asks for another registered metric is scored with it;
    the style axis is untouched."""
    from dataclasses import replace

    import torch.nn.functional as F

    from eval.axis_metrics import AXIS_METRICS, register_axis_metric
    from eval.concept_accuracy import ConceptAccuracy
    from eval.scoring import score_answer_set

    seen = []

    class TopTwo(ConceptAccuracy):
        """A hit when the true class is among the judge's two best guesses."""

        def update(self, logits, target):
            seen.append(len(target))
            top = logits.topk(2, dim=1).indices
            pred = torch.where((top == target[:, None]).any(1), target, top[:, 0])
            super().update(F.one_hot(pred, len(self.classes)).float(), target)

    register_axis_metric("top2_accuracy", lambda axis: TopTwo(axis.concepts))
    try:
        base = small_protocol()
        protocol = base.with_overrides(axes=[base.axes[0], replace(base.axes[1], metric="top2_accuracy")])
        judging = prepare_judging(protocol, TARGETS[:1], EvalOptions(progress=False, fid=False))
        scores = score_answer_set(judging, small["out"] / "images", batch_size=64, progress=False)
    finally:
        AXIS_METRICS.pop("top2_accuracy")
    assert seen == [64, 46]
    assert scores.metrics["style"]["overall"] == pytest.approx(small["report"]["style_accuracy"])
    assert scores.metrics["object"]["overall"] > small["report"]["object_accuracy"]
    assert protocol.deviations[-1].startswith(
        "axes: [style: 11 concepts, null class Photo, metric concept_accuracy; "
        "object: 10 concepts, null class None, metric concept_accuracy] -> [style: 11 concepts, "
        "null class Photo, metric concept_accuracy; object: 10 concepts, null class None, metric top2_accuracy]"
    )
