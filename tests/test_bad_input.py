"""The bad-input and fault catalogue of `erase run` / `erase methods` and the Python API (issue 8).

Every case: exit code 2 (130 on interrupt), exactly one line on stderr naming the problem and the fix,
no traceback, nothing pre-existing changed, nothing half-written that looks finished. The eval / grid
cases are in test_bad_input_eval.py.
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from erase.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICK = [
    "--set",
    "forget_seeds=1",
    "--set",
    "retain_seeds=1",
    "--set",
    "data_steps=2",
    "--set",
    "batch_size=2",
    "--set",
    "retain_batch_size=2",
    "--set",
    "checkpoint_every=2",
]


def model():
    from worlds.canvas_mini import PIPELINE_DIR

    return str(PIPELINE_DIR)


def fails(argv, capsys, match):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors (one line through OneLineParser)
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert match in err, err
    return err


def run_args(out, *extra, concept="Watercolor"):
    return ["run", "salun", "--model", model(), "--concept", concept, "--kind", "style", "--out", str(out), *extra]


def tree(folder: Path) -> dict:
    return (
        {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        if folder.exists()
        else {}
    )


@pytest.mark.parametrize(
    "item, match",
    [
        ("lr=abc", "salun option lr expects float, got 'abc'"),
        ("steps=2.5", "salun option steps expects int, got 2.5"),
        ("forget_seeds=-1", "forget_seeds must be at least 1"),
        ("nosuch=1", "unknown salun option(s) ['nosuch']"),
        ("lr", "--set expects key=value"),
        ("lr=NaN", "lr must be a finite number"),
        ("retain_loss=kl", "unknown retain_loss 'kl'"),
    ],
)
def test_set_values(tmp_path, capsys, item, match):
    fails(run_args(tmp_path / "out", "--set", item), capsys, match)
    assert not (tmp_path / "out").exists()


def test_steps_zero_for_a_trained_method(tmp_path, capsys):
    fails(run_args(tmp_path / "out", "--steps", "0"), capsys, "steps must be at least 1")


def test_unknown_method(tmp_path, capsys):
    fails(
        [
            "run",
            "nosuch",
            "--model",
            model(),
            "--concept",
            "Watercolor",
            "--kind",
            "style",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
        "unknown method 'nosuch'; known methods:",
    )


def test_unknown_preset(tmp_path, capsys):
    fails(run_args(tmp_path / "out", "--preset", "nosuch"), capsys, "unknown preset 'nosuch' for salun")


def test_preset_file_with_invalid_json(tmp_path, capsys):
    bad = tmp_path / "p.json"
    bad.write_text("{lr: 1")
    fails(run_args(tmp_path / "out", "--preset", str(bad)), capsys, "is not valid JSON")


def test_preset_file_of_the_wrong_shape(tmp_path, capsys):
    bad = tmp_path / "p.json"
    bad.write_text("[1, 2]")
    fails(
        run_args(tmp_path / "out", "--preset", str(bad)),
        capsys,
        "must hold a JSON object of salun options, got a list",
    )


def test_methods_preset_without_method(capsys):
    fails(["methods", "--preset", "nosuch"], capsys, "--preset needs a METHOD")


def test_methods_unknown_preset(capsys):
    fails(["methods", "salun", "--preset", "nosuch"], capsys, "unknown preset 'nosuch'")


def test_missing_model_path_is_named_before_the_anchor(tmp_path, capsys):
    fails(
        [
            "run",
            "salun",
            "--model",
            str(tmp_path / "nope"),
            "--concept",
            "Van Gogh",
            "--kind",
            "style",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
        "does not exist; pass a diffusers pipeline folder",
    )


def test_random_file_as_model(tmp_path, capsys):
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(64))
    fails(
        [
            "run",
            "salun",
            "--model",
            str(f),
            "--concept",
            "Van Gogh",
            "--kind",
            "style",
            "--anchor",
            "a painting",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
        "neither a diffusers folder nor a .safetensors/.ckpt checkpoint",
    )


def test_empty_folder_as_model(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    fails(
        [
            "run",
            "salun",
            "--model",
            str(tmp_path / "m"),
            "--concept",
            "Van Gogh",
            "--kind",
            "style",
            "--anchor",
            "a painting",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
        "not a diffusers pipeline folder",
    )


def test_unknown_concept_of_the_protocol(tmp_path, capsys):
    fails(run_args(tmp_path / "out", concept="Van_Gogh"), capsys, "is not in protocol 'canvas-mini'")


def test_kind_not_an_axis_of_the_protocol(tmp_path, capsys):
    fails(
        [
            "run",
            "salun",
            "--model",
            model(),
            "--concept",
            "Watercolor",
            "--kind",
            "identity",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
        "has no 'identity' axis",
    )


def test_unknown_kind(tmp_path, capsys):
    fails(
        [
            "run",
            "salun",
            "--model",
            model(),
            "--concept",
            "Watercolor",
            "--kind",
            "colour",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
        "invalid choice: 'colour'",
    )


def test_anchor_equal_to_target(tmp_path, capsys):
    fails(run_args(tmp_path / "out", "--anchor", "Watercolor"), capsys, "anchor equals the concept")


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "out"
    f.write_text("mine")
    fails(run_args(f), capsys, "is a file; give a folder path")
    assert f.read_text() == "mine"


def test_out_under_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("mine")
    fails(run_args(f / "sub"), capsys, "lies under the file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_out_in_an_unwritable_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        fails(run_args(ro / "out"), capsys, "permission denied")
    finally:
        ro.chmod(0o700)


def test_patch_option_on_run(tmp_path, capsys):
    fails(run_args(tmp_path / "out", "--patch", str(tmp_path)), capsys, "--patch is only for eval and grid")


def test_eval_without_a_protocol(tmp_path, capsys):
    fails(
        [
            "run",
            "salun",
            "--model",
            model(),
            "--concept",
            "Van Gogh",
            "--kind",
            "style",
            "--anchor",
            "a painting",
            "--protocol",
            "none",
            "--retain",
            "Monet",
            "--eval",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
        "--eval needs a protocol",
    )


def test_eval_seeds_zero(tmp_path, capsys):
    fails(run_args(tmp_path / "out", "--eval", "--eval-seeds", "0"), capsys, "--eval-seeds must be at least 1")


def test_existing_patch_is_not_replaced(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "erasure_patch.safetensors").write_bytes(b"mine")
    fails(run_args(out), capsys, "already holds a patch; pass --overwrite")
    assert (out / "erasure_patch.safetensors").read_bytes() == b"mine"


def _finished_run(tmp_path, capsys, seed="0"):
    out = tmp_path / "done"
    assert main(run_args(out, *QUICK, "--steps", "2", "--seed", seed, "--quiet")) == 0, capsys.readouterr().err
    capsys.readouterr()
    return out


def test_resume_with_other_settings_keeps_a_finished_patch(tmp_path, capsys):
    out = _finished_run(tmp_path, capsys)
    before = tree(out)
    fails(
        run_args(out, *QUICK, "--steps", "2", "--seed", "1", "--resume"),
        capsys,
        "finished patch made with other settings (differs in request.seed)",
    )
    assert tree(out) == before
    # the same settings: nothing to do, the patch is returned as it is
    assert main(run_args(out, *QUICK, "--steps", "2", "--seed", "0", "--resume", "--quiet")) == 0
    assert tree(out) == before


def _interrupted_run(tmp_path, concept="Watercolor"):
    """A run killed with SIGKILL after its first checkpoint (a real process, as a user would see it)."""
    out = tmp_path / "interrupted"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "erase.cli", *run_args(out, *QUICK, "--steps", "400", "--quiet", concept=concept)]
    # A shell's background jobs (`make test &`, nohup) inherit SIGINT ignored, and Python keeps it ignored:
    # give the child the default disposition so that Ctrl-C reaches it as it would from a terminal.
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not (out / "checkpoint" / "meta.json").exists():
        assert proc.poll() is None and time.time() < deadline, (
            proc.stderr.read() if proc.poll() is not None else "timeout"
        )
        time.sleep(0.2)
    return out, proc


def test_sigint_is_one_line_and_exit_130_and_keeps_the_checkpoint(tmp_path):
    out, proc = _interrupted_run(tmp_path)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1].strip()
    assert proc.returncode == 130 and err.splitlines() == ["erase run: interrupted"], err
    assert (out / "checkpoint" / "meta.json").exists() and not (out / "erasure_patch.safetensors").exists()


def test_run_into_the_folder_of_an_interrupted_run(tmp_path, capsys):
    out, proc = _interrupted_run(tmp_path)
    proc.kill()
    proc.wait()
    ckpt = tree(out / "checkpoint")
    # another concept into the same folder: refused, the other run's checkpoint kept
    fails(
        run_args(out, *QUICK, "--steps", "400", concept="Rust"),
        capsys,
        "interrupted run with other settings (differs in request",
    )
    # the same run without --resume: refused with the way forward
    fails(run_args(out, *QUICK, "--steps", "400"), capsys, "pass --resume to continue it")
    # another concept with --resume: refused too
    fails(run_args(out, *QUICK, "--steps", "400", "--resume", concept="Rust"), capsys, "other settings")
    assert tree(out / "checkpoint") == ckpt


def test_forget_images_folder_missing(tmp_path, capsys):
    fails(
        run_args(tmp_path / "out", *QUICK, "--set", f"forget_images={tmp_path / 'nope'}"),
        capsys,
        "forget_images folder",
    )
    assert not (tmp_path / "out").exists()  # nothing half-written (the model was loaded, setup failed)


def test_a_pickle_as_patch_is_never_unpickled(tmp_path, capsys):
    out = _finished_run(tmp_path, capsys)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (out / "erasure_patch.safetensors").write_bytes(pickle.dumps(Payload()))
    fails(
        [
            "eval",
            "--model",
            model(),
            "--patch",
            str(out),
            "--target",
            "Watercolor",
            "--kind",
            "style",
            "--out",
            str(tmp_path / "e"),
            "--seeds",
            "1",
        ],
        capsys,
        "does not match its config",
    )
    assert not marker.exists()


def test_a_patch_for_another_base_model(tmp_path, capsys):
    from conftest import build_tiny_pipe

    from erase.patch import ErasurePatch, PatchError, apply_patch

    out = _finished_run(tmp_path, capsys)
    with pytest.raises(PatchError, match="made for another architecture|different base model"):
        apply_patch(build_tiny_pipe(), ErasurePatch.from_pretrained(out))


def test_nan_in_a_patch(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    out = _finished_run(tmp_path, capsys)
    f = out / "erasure_patch.safetensors"
    tensors = load_file(str(f))
    key = next(k for k in tensors if k.endswith("::values"))
    tensors[key][0] = float("nan")
    save_file(tensors, str(f), metadata={"format": "erasekit-patch", "format_version": "2"})
    cfg = json.loads((out / "erasure_config.json").read_text())
    cfg.pop("patch_sha256")  # as if the file had been produced with NaN in it
    (out / "erasure_config.json").write_text(json.dumps(cfg))
    fails(
        [
            "eval",
            "--model",
            model(),
            "--patch",
            str(out),
            "--target",
            "Watercolor",
            "--kind",
            "style",
            "--out",
            str(tmp_path / "e"),
            "--seeds",
            "1",
        ],
        capsys,
        "non-finite values",
    )
    assert not (tmp_path / "e").exists()


# -- DoCo and Concept Ablation (issue 10) ------------------------------------------------------------------------
KV_QUICK = [
    "--steps",
    "2",
    "--set",
    "anchor_seeds=1",
    "--set",
    "data_steps=2",
    "--set",
    "batch_size=2",
    "--set",
    "retain_batch_size=2",
]
FOR_DOCO = ["--set", "warmup=1", "--set", "disc_layers=2"]


@pytest.mark.parametrize("method", ["doco", "concept_ablation"])
@pytest.mark.parametrize(
    "extra, match",
    [
        (["--anchor", "Watercolor"], "anchor equals the concept"),
        (["--set", "trainable=attn9\\.to_q"], "matches its scope"),
        (["--set", "trainable=attn2\\.(to_k"], "is not a valid regular expression"),
    ],
)
def test_kv_methods_refuse(tmp_path, capsys, method, extra, match):
    out = tmp_path / "out"
    argv = [
        "run",
        method,
        "--model",
        model(),
        "--concept",
        "Watercolor",
        "--kind",
        "style",
        "--out",
        str(out),
        *KV_QUICK,
        *(FOR_DOCO if method == "doco" else []),
        *extra,
    ]
    fails(argv, capsys, match)
    assert not out.exists()


def test_doco_warmup_longer_than_the_run(tmp_path, capsys):
    out = tmp_path / "out"
    fails(
        [
            "run",
            "doco",
            "--model",
            model(),
            "--concept",
            "Watercolor",
            "--kind",
            "style",
            "--out",
            str(out),
            *KV_QUICK,
            "--set",
            "warmup=5",
        ],
        capsys,
        "warmup (5) must be smaller than steps (2)",
    )
    assert not out.exists()


def test_doco_discriminator_deeper_than_the_latents(tmp_path, capsys):
    out = tmp_path / "out"
    fails(
        [
            "run",
            "doco",
            "--model",
            model(),
            "--concept",
            "Watercolor",
            "--kind",
            "style",
            "--out",
            str(out),
            *KV_QUICK,
            "--set",
            "warmup=1",
        ],
        capsys,
        "disc_layers 4 needs latents of at least 16x16; this model's are 8x8",
    )
    assert not out.exists()


def test_doco_discriminator_ending_in_one_pixel_at_batch_one(tmp_path, capsys):
    out = tmp_path / "out"
    fails(
        [
            "run",
            "doco",
            "--model",
            model(),
            "--concept",
            "Watercolor",
            "--kind",
            "style",
            "--out",
            str(out),
            *KV_QUICK,
            "--set",
            "warmup=1",
            "--set",
            "disc_layers=3",
            "--set",
            "batch_size=1",
        ],
        capsys,
        "ends in a 1x1 map, which BatchNorm cannot normalise at batch_size 1",
    )
    assert not out.exists()
