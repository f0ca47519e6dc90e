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
from test_bad_input_eval import _file, _folder, eval_args

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


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_out_in_an_unwritable_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        fails(run_args(ro / "out"), capsys, "permission denied")
    finally:
        ro.chmod(0o700)


def _args(t, concept="Van Gogh", kind="style", model_path=None, *extra):
    """`erase run salun` outside a protocol's names (the anchor given), on ``model_path`` (default: canvas-mini)."""
    return [
        "run",
        "salun",
        "--model",
        str(model_path or model()),
        "--concept",
        concept,
        "--kind",
        kind,
        *extra,
        "--out",
        str(t / "o"),
    ]


# (case, argv from tmp_path, text of the one stderr line); nothing under tmp_path may change
CASES = [
    ("steps zero for a trained method", lambda t: run_args(t / "out", "--steps", "0"), "steps must be at least 1"),
    (
        "unknown method",
        lambda t: ["run", "nosuch", *_args(t, "Watercolor")[2:]],
        "unknown method 'nosuch'; known methods:",
    ),
    ("unknown preset", lambda t: run_args(t / "out", "--preset", "nosuch"), "unknown preset 'nosuch' for salun"),
    (
        "preset file with invalid JSON",
        lambda t: run_args(t / "out", "--preset", str(_file(t / "p.json", "{lr: 1"))),
        "is not valid JSON",
    ),
    (
        "preset file of the wrong shape",
        lambda t: run_args(t / "out", "--preset", str(_file(t / "p.json", "[1, 2]"))),
        "must hold a JSON object of salun options, got a list",
    ),
    ("methods --preset without a method", lambda t: ["methods", "--preset", "nosuch"], "--preset needs a METHOD"),
    (
        "methods with an unknown preset",
        lambda t: ["methods", "salun", "--preset", "nosuch"],
        "unknown preset 'nosuch'",
    ),
    (
        "missing model path, named before the anchor",
        lambda t: _args(t, model_path=t / "nope"),
        "does not exist; pass a diffusers pipeline folder",
    ),
    (
        "random file as model",
        lambda t: _args(t, "Van Gogh", "style", _file(t / "model.bin", os.urandom(64)), "--anchor", "a painting"),
        "neither a diffusers folder nor a .safetensors/.ckpt checkpoint",
    ),
    (
        "empty folder as model",
        lambda t: _args(t, "Van Gogh", "style", _folder(t / "m"), "--anchor", "a painting"),
        "not a diffusers pipeline folder",
    ),
    (
        "unknown concept of the protocol",
        lambda t: run_args(t / "out", concept="Van_Gogh"),
        "is not in protocol 'canvas-mini'",
    ),
    ("kind not an axis of the protocol", lambda t: _args(t, "Watercolor", "identity"), "has no 'identity' axis"),
    ("unknown kind", lambda t: _args(t, "Watercolor", "colour"), "invalid choice: 'colour'"),
    (
        "anchor equal to the target",
        lambda t: run_args(t / "out", "--anchor", "Watercolor"),
        "anchor equals the concept",
    ),
    ("out is a file", lambda t: run_args(_file(t / "out")), "is a file; give a folder path"),
    ("out under a file", lambda t: run_args(_file(t / "file") / "sub"), "lies under the file"),
    ("--patch on run", lambda t: run_args(t / "out", "--patch", str(t)), "--patch is only for eval and grid"),
    (
        "--eval without a protocol",
        lambda t: _args(
            t, "Van Gogh", "style", None, "--anchor", "a painting", "--protocol", "none", "--retain", "Monet", "--eval"
        ),
        "--eval needs a protocol",
    ),
    (
        "--eval-seeds zero",
        lambda t: run_args(t / "out", "--eval", "--eval-seeds", "0"),
        "--eval-seeds must be at least 1",
    ),
    (
        "an existing patch is not replaced",
        lambda t: run_args(_file(t / "out" / "erasure_patch.safetensors").parent),
        "already holds a patch; pass --overwrite",
    ),
    (
        "forget_images folder missing (after the model loaded)",
        lambda t: run_args(t / "out", *QUICK, "--set", f"forget_images={t / 'nope'}"),
        "forget_images folder",
    ),
]


@pytest.mark.parametrize("build, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused(tmp_path, capsys, build, match):
    argv = build(tmp_path)
    before, paths = tree(tmp_path), sorted(tmp_path.rglob("*"))
    fails(argv, capsys, match)
    assert tree(tmp_path) == before and sorted(tmp_path.rglob("*")) == paths  # nothing written, the user's files kept


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


def test_a_pickle_as_patch_is_never_unpickled(tmp_path, capsys):
    out = _finished_run(tmp_path, capsys)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (out / "erasure_patch.safetensors").write_bytes(pickle.dumps(Payload()))
    fails(
        eval_args(tmp_path / "e", "--patch", str(out)),
        capsys,
        "does not match its config",
    )
    assert not marker.exists()


def test_a_patch_for_another_base_model(tmp_path, capsys):
    from conftest import build_tiny_pipe

    from erase.core.patch import ErasurePatch, PatchError, apply_patch

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
        eval_args(tmp_path / "e", "--patch", str(out)),
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
