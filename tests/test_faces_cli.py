"""faces-mini through the CLI on smoke-built artefacts (a few training steps each: the plumbing, not the
quality): `erase run text-to-unlearn` and `erase eval --protocol faces-mini`, and their bad input (one
line, exit 2, nothing written)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = [
    "--steps",
    "2",
    "--set",
    "mapper_steps=5",
    "--set",
    "gate_points=0",
    "--set",
    "direction_samples=8",
    "--set",
    "gate_samples=16",
    "--threads",
    "1",
    "--quiet",
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "worlds.faces_mini.train",
            "--smoke",
            "--threads",
            "1",
            "--out",
            str(root / "assets"),
            "--work",
            str(root / "work"),
            "--stages",
            "classifier,identity,guide_classifier,guide_classifier_b,guide_identity,clip_guide,clip_judge,generator,sharpen",
        ],
        check=True,
        cwd=ROOT,
        env=_env(root / "assets", root),
        capture_output=True,
    )
    return root


def _env(assets: Path, root: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), ERASEKIT_FACES_MINI=str(assets), ERASEKIT_CACHE=str(root / "cache"))


def erase(assets, *args):
    return subprocess.run(
        [sys.executable, "-m", "erase", *args],
        cwd=ROOT,
        env=_env(assets / "assets", assets),
        capture_output=True,
        text=True,
    )


def run_args(assets, out, *extra, concept="eyeglasses", kind="attribute"):
    return [
        "run",
        "text-to-unlearn",
        "--model",
        str(assets / "assets" / "generator"),
        "--concept",
        concept,
        "--kind",
        kind,
        "--out",
        str(out),
        *extra,
    ]


def eval_args(assets, patch, out, seeds):
    return [
        "eval",
        "--model",
        str(assets / "assets" / "generator"),
        "--patch",
        str(patch),
        "--protocol",
        "faces-mini",
        "--target",
        "eyeglasses",
        "--kind",
        "attribute",
        "--out",
        str(out),
        "--seeds",
        str(seeds),
        "--threads",
        "1",
        "--quiet",
    ]


def test_the_build_sharpens_its_generator_once(assets):
    """The staged build's sharpen stage: the generator folder records it, and the GAN's own generator is kept."""
    import json

    record = json.loads((assets / "assets" / "generator" / "sharpen.json").read_text())
    assert record["steps"] == 2 and record["guide"] == "guide-classifier"  # the smoke recipe's steps
    assert (assets / "work" / "generator-gan" / "generator.safetensors").exists()


def test_run_then_eval_writes_a_generator_patch_and_the_faces_report(assets, tmp_path):
    out = tmp_path / "patch"
    r = erase(assets, *run_args(assets, out, *QUICK))
    assert r.returncode == 0, r.stderr
    cfg = json.loads((out / "erasure_config.json").read_text())
    assert cfg["method"] == "text_to_unlearn" and cfg["request"]["forget_prompts"] == ["a face with eyeglasses"]
    assert (
        cfg["guides"]["clip"].startswith("faces-mini clip-guide ") and "gate" in cfg["info"]
    )  # the name, then a digest of its weights
    r = erase(assets, *eval_args(assets, out, tmp_path / "eval", seeds=32))
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "eval" / "report.json").read_text())
    for key in (
        "attribute_rates",
        "edited_attribute_rates",
        "identity_similarity",
        "fd",
        "clip_similarity",
        "gamma",
        "retain_fidelity",
        "seconds",
    ):
        assert key in rep
    assert set(rep["attribute_rates"]) == {"eyeglasses", "smile", "hat", "beard", "hair_colour", "skin", "identity"}
    assert all(
        abs(sum(v.values()) - 1) < 1e-6 for v in rep["attribute_rates"].values()
    )  # each head's rates over its classes sum to 1
    assert 0 <= rep["gamma"]["classifier"]["value"] <= 1 and rep["clip_similarity"]["judge"].startswith(
        "faces-mini clip-judge"
    )
    assert (tmp_path / "eval" / "grid.png").exists()
    # the held-out mapper is trained for the steps the smoke build's recipe gives its evaluation (20, not 1,500)
    assert rep["edit"]["settings"]["steps"] == 20


def test_a_patch_on_the_mapping_network_shows_in_the_evaluation(assets, tmp_path):
    """`layers mapping` changes only z -> w: the evaluation must map the seeds through the patched mapping (it once
    reused the original's w, so such a patch scored as bit-identical: PSNR 100 dB)."""
    out = tmp_path / "patch"
    r = erase(assets, *run_args(assets, out, *QUICK, "--set", "layers=mapping"))
    assert r.returncode == 0, r.stderr
    r = erase(assets, *eval_args(assets, out, tmp_path / "eval", seeds=16))
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert rep["retain_fidelity"]["psnr"] < 80, rep["retain_fidelity"]


@pytest.mark.parametrize(
    "case,message",
    [
        ("unknown attribute", "attribute 'monocle' is not in protocol 'faces-mini'"),
        ("gate", "the gate needs +101"),
        ("no config", "holds generator.safetensors but no config.json"),
        ("pickle", "NVIDIA .pkl generators are refused unread"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(assets, tmp_path, case, message):
    out = tmp_path / "out"
    model = assets / "assets" / "generator"
    if case == "no config":
        model = tmp_path / "bare"
        model.mkdir()
        (model / "generator.safetensors").write_bytes(
            (assets / "assets" / "generator" / "generator.safetensors").read_bytes()
        )
    if case == "pickle":
        model = tmp_path / "ffhq.pkl"
        model.write_bytes(b"not opened")
    args = run_args(assets, out, *QUICK, concept="monocle" if case == "unknown attribute" else "eyeglasses")
    args[args.index("--model") + 1] = str(model)
    if case == "gate":
        args += ["--set", "gate_points=101"]
    r = erase(assets, *args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert not out.exists()


def _figures(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("seconds", "images")}


def test_faces_eval_resumes_and_reuses_the_cached_original_like_canvas_mini(assets, tmp_path):
    """The one evaluation path: an interrupted faces-mini evaluation is continued with --resume (only what is
    missing is rendered, the figures come out the same), refused without it, and the original's answers are
    rendered once per model and protocol."""
    patch = tmp_path / "patch"
    assert erase(assets, *run_args(assets, patch, *QUICK)).returncode == 0
    first = tmp_path / "first"
    r = erase(assets, *eval_args(assets, patch, first, seeds=20))
    assert r.returncode == 0, r.stderr
    assert "eyeglasses (attribute): rate" in r.stdout
    report = json.loads((first / "report.json").read_text())
    assert report["images"] == {"total": 40, "generated": 40, "reused": 0}
    md = (first / "report.md").read_text()
    assert "## Same-seed retain fidelity" in md and "![original / this model" in md
    cached = list((assets / "cache" / "answer-sets").glob("*/complete"))
    assert len(cached) >= 1
    stamp = {p: p.stat().st_mtime_ns for p in cached}

    (first / "images" / "eyeglasses_seeds0-19.safetensors").unlink()
    (first / "report.json").unlink()
    r = erase(assets, *eval_args(assets, patch, first, seeds=20))
    assert r.returncode == 2 and "--resume" in r.stderr, r.stderr
    r = erase(assets, *eval_args(assets, patch, first, seeds=20), "--resume")
    assert r.returncode == 0, r.stderr
    resumed = json.loads((first / "report.json").read_text())
    assert resumed["images"] == {"total": 40, "generated": 20, "reused": 20}
    assert _figures(resumed) == _figures(report)
    assert {p: p.stat().st_mtime_ns for p in cached} == stamp  # the original's set was read, not rendered again

    # images rendered by another renderer (another evaluation mapper) are never read as this one's
    run = json.loads((first / "run.json").read_text())
    assert run["answers"]["renderer"]["settings"]["steps"] == 20  # the smoke recipe's evaluation mapper
    run["answers"]["renderer"]["settings"]["l2"] = 0.0
    (first / "run.json").write_text(json.dumps(run))
    r = erase(assets, *eval_args(assets, patch, first, seeds=20), "--resume")
    assert r.returncode == 2 and "holds another run's results" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--attack", "embedding"], "has none (its generator is latent-seeded)"),
        (["--target", "smile"], "evaluates one target at a time"),
    ],
)
def test_faces_eval_refuses_what_needs_a_prompt_or_several_targets(assets, tmp_path, extra, message):
    out = tmp_path / "eval"
    args = eval_args(assets, "unused", out, seeds=4)
    del args[args.index("--patch") : args.index("--patch") + 2]  # the original model
    r = erase(assets, *args, *extra)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert not out.exists()
