"""Bad input to `erase eval` and `erase grid`, as a new user would try it: one test per case.

Every case must exit with code 2, print exactly one line on stderr that names the
problem (no traceback), change nothing that existed and create no output.
"""

import os
import pickle
import stat

import pytest

from erase.cli import main
from worlds.canvas_mini import PIPELINE_DIR

MODEL = str(PIPELINE_DIR)


def snapshot(root):
    """Every path under ``root`` with its kind, bytes and mode: what 'nothing changed' means."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                None if os.path.isdir(p) else open(p, "rb").read(),
            )
    return out


def refused(argv, root, capfd, match):
    """Run the CLI; assert exit code 2, one stderr line containing ``match``, no traceback, ``root`` unchanged."""
    before = snapshot(root)
    capfd.readouterr()
    code = main(argv)
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert match in lines[0], lines[0]
    assert snapshot(root) == before
    return lines[0]


def eval_args(out, *extra, target="Watercolor", kind="style", model=MODEL):
    return [
        "eval",
        "--model",
        model,
        "--target",
        target,
        "--kind",
        kind,
        "--out",
        str(out),
        "--seeds",
        "1",
        "--steps",
        "2",
        *extra,
    ]


def grid_args(out, *extra, model=MODEL):
    return ["grid", "--model", model, "--out", str(out), "--styles", "Watercolor", "--objects", "Birds", *extra]


def _file(path, data=b"mine"):
    """Create ``path`` (its folder too) holding ``data``; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    return path


def _folder(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def _with(argv, flag, value):
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def _patch_pair(t):
    _file(t / "patch" / "erasure_patch.safetensors", b"x")
    _file(t / "patch" / "erasure_config.json", "{}")
    return t / "patch" / "erasure_patch.safetensors"


def _results_with_files(t):
    _file(t / "results" / "notes.md")
    return _folder(t / "results" / "data").parent


def _protocol_file(t):
    import json

    return _file(
        t / "p.json", json.dumps({"name": "mine", "styles": ["A"], "objects": ["B"], "template": "A {thing}."})
    )


# (case, argv from tmp_path, the one stderr line's expected text (or a function of tmp_path giving it))
CASES = [
    # numbers
    ("batch size zero", lambda t: eval_args(t / "out", "--batch-size", "0"), "--batch-size must be at least 1, got 0"),
    (
        "batch size negative",
        lambda t: eval_args(t / "out", "--batch-size", "-4"),
        "--batch-size must be at least 1, got -4",
    ),
    ("grid steps zero", lambda t: grid_args(t / "g.png", "--steps", "0"), "--steps must be at least 1, got 0"),
    ("grid steps negative", lambda t: grid_args(t / "g.png", "--steps", "-5"), "--steps must be at least 1, got -5"),
    ("eval steps zero", lambda t: _with(eval_args(t / "out"), "--steps", "0"), "--steps must be at least 1, got 0"),
    ("seeds zero", lambda t: _with(eval_args(t / "out"), "--seeds", "0"), "--seeds must be at least 1"),
    ("eval threads zero", lambda t: eval_args(t / "out", "--threads", "0"), "--threads must be at least 1, got 0"),
    ("grid threads zero", lambda t: grid_args(t / "g.png", "--threads", "0"), "--threads must be at least 1, got 0"),
    ("scale nan", lambda t: eval_args(t / "out", "--scale", "nan"), "--scale must be a finite number, got nan"),
    ("grid scale inf", lambda t: grid_args(t / "g.png", "--scale", "inf"), "--scale must be a finite number, got inf"),
    (
        "guidance nan",
        lambda t: eval_args(t / "out", "--guidance", "nan"),
        "--guidance must be a finite number, got nan",
    ),
    # devices
    (
        "unknown device",
        lambda t: eval_args(t / "out", "--device", "tpu"),
        "--device 'tpu' is not a device; use cpu, cuda, cuda:N or mps",
    ),
    (
        "unsupported device type",
        lambda t: grid_args(t / "g.png", "--device", "meta"),
        "--device 'meta' is not supported",
    ),
    # output paths
    (
        "out is an existing file",
        lambda t: eval_args(_file(t / "report")),
        lambda t: f"--out {t / 'report'} is a file; give a folder path",
    ),
    (
        "out lies under a file",
        lambda t: eval_args(_file(t / "notes.txt") / "eval"),
        lambda t: f"lies under the file {t / 'notes.txt'}",
    ),
    (
        "grid out lies under a file",
        lambda t: grid_args(_file(t / "notes.txt") / "g.png"),
        lambda t: f"lies under the file {t / 'notes.txt'}",
    ),
    (
        "eval into a folder holding a user's grid",
        lambda t: eval_args(_file(t / "results" / "grid.png").parent),
        "holds files erase eval did not write (grid.png)",
    ),
    (
        "eval into a folder holding other files",
        lambda t: eval_args(_results_with_files(t)),
        "holds files erase eval did not write (data, notes.md)",
    ),
    (
        "grid out exists",
        lambda t: grid_args(_file(t / "g.png", b"keep")),
        "exists; pass --overwrite or choose another file",
    ),
    # patches
    (
        "patch file instead of its folder",
        lambda t: eval_args(t / "out", "--patch", str(_patch_pair(t))),
        lambda t: (
            f"--patch expects the patch folder, got the file {t / 'patch' / 'erasure_patch.safetensors'}; "
            f"pass its folder {t / 'patch'}"
        ),
    ),
    (
        "patch folder missing",
        lambda t: eval_args(t / "out", "--patch", str(t / "nope")),
        lambda t: f"--patch folder {t / 'nope'} does not exist",
    ),
    (
        "patch folder without a patch",
        lambda t: grid_args(t / "g.png", "--patch", str(_folder(t / "empty"))),
        "has no erasure_patch.safetensors or erasure_config.json",
    ),
    # judges, CLIP, FID, LPIPS
    (
        "unlearncanvas without classifiers",
        lambda t: eval_args(t / "out", "--protocol", "unlearncanvas"),
        "the unlearncanvas protocol needs --style-classifier and --object-classifier",
    ),
    (
        "classifier options with canvas-mini",
        lambda t: eval_args(t / "out", "--style-classifier", str(_file(t / "style50.pth", b"x"))),
        "--style-classifier / --object-classifier are for the unlearncanvas protocol",
    ),
    (
        "FID weights with canvas-mini",
        lambda t: eval_args(t / "out", "--fid-weights", str(t / "pt_inception.pth")),
        "--fid-weights / --fid-reference are for real models",
    ),
    (
        "CLIP folder without a model",
        lambda t: eval_args(t / "out", "--clip", str(_folder(t / "clip"))),
        lambda t: f"{t / 'clip'} holds no open_clip_config.json; point --clip at an open_clip model folder",
    ),
    (
        "CLIP architecture without weights",
        lambda t: eval_args(t / "out", "--clip", "ViT-B-32"),
        "CLIP architecture 'ViT-B-32' needs local weights (--clip-weights FILE)",
    ),
    (
        "LPIPS weights missing",
        lambda t: eval_args(t / "o", "--lpips-weights", str(t / "alex.pth")),
        "LPIPS weights not found",
    ),
    # models
    (
        "model is a random file",
        lambda t: eval_args(t / "out", model=str(_file(t / "model.bin", os.urandom(4096)))),
        "is neither a diffusers folder nor a .safetensors/.ckpt checkpoint",
    ),
    (
        "model is a random safetensors file",
        lambda t: eval_args(t / "out", model=str(_file(t / "model.safetensors", os.urandom(4096)))),
        "cannot load pipeline",
    ),
    (
        "model is an empty folder",
        lambda t: eval_args(t / "out", model=str(_folder(t / "model"))),
        "is not a diffusers pipeline folder (no model_index.json)",
    ),
    (
        "grid model is an empty folder",
        lambda t: grid_args(t / "g.png", model=str(_folder(t / "model"))),
        "is not a diffusers pipeline folder",
    ),
    # concepts and protocols
    (
        "unknown kind",
        lambda t: eval_args(t / "out", kind="colour"),
        "unknown kind 'colour' for protocol 'canvas-mini'; its axes are: style, object",
    ),
    (
        "photo class as target",
        lambda t: eval_args(t / "out", target="Photo"),
        "'Photo' is the photo class of protocol 'canvas-mini'",
    ),
    (
        "kind count does not match targets",
        lambda t: eval_args(t / "out") + ["--target", "Birds", "--target", "Cats", "--kind", "object"],
        "give --kind once, or once per --target",
    ),
    (
        "protocol file with a bad template",
        lambda t: eval_args(t / "out", "--protocol", str(_protocol_file(t)), target="A"),
        "template must contain exactly the axis placeholders {style}, {object}",
    ),
    (
        "grid unknown style",
        lambda t: ["grid", "--model", MODEL, "--out", str(t / "g.png"), "--styles", "Van_Gogh"],
        "'Van_Gogh' is not a style or object of protocol 'canvas-mini'",
    ),
    ("grid max rows needs compare", lambda t: grid_args(t / "g.png", "--max-rows", "2"), "--max-rows needs --compare"),
    (
        "faces-mini protocol on a diffusion model",
        lambda t: eval_args(t / "out", "--protocol", "faces-mini", target="eyeglasses", kind="attribute"),
        "protocol 'faces-mini' evaluates a StyleGAN folder (config.json + generator.safetensors)",
    ),
]


@pytest.mark.parametrize("build, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused(tmp_path, capfd, build, match):
    """The case's files are made first (they are the user's: they must stay as they were), then the command."""
    argv = build(tmp_path)
    refused(argv, tmp_path, capfd, match(tmp_path) if callable(match) else match)


def test_absent_cuda_device(tmp_path, capfd):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU; the case is a CUDA device that is absent")
    refused(
        eval_args(tmp_path / "out", "--device", "cuda"),
        tmp_path,
        capfd,
        "--device cuda: no cuda device is available on this machine; use --device cpu",
    )


def test_cuda_index_out_of_range(tmp_path, capfd):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (the CPU case is test_absent_cuda_device)")
    refused(eval_args(tmp_path / "out", "--device", f"cuda:{torch.cuda.device_count()}"), tmp_path, capfd, "device(s)")


# -- output paths ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes through chmod 0o555, so a read-only folder does not block it"
)
def test_out_in_an_unwritable_folder(tmp_path, capfd):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        refused(eval_args(locked / "eval"), tmp_path, capfd, "permission denied")
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes through chmod 0o555, so a read-only folder does not block it"
)
def test_grid_out_in_an_unwritable_folder(tmp_path, capfd):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        refused(grid_args(locked / "g.png"), tmp_path, capfd, "permission denied")
    finally:
        locked.chmod(0o755)


def test_out_in_a_folder_access_denies(tmp_path, capfd, monkeypatch):
    """The same refusal, with os.access answering as it would for a non-root user (runs as root too)."""
    import erase.core.files as files

    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(files.os, "access", lambda path, mode: os.path.abspath(path) != str(locked))
    refused(
        eval_args(locked / "eval"),
        tmp_path,
        capfd,
        f"--out {locked / 'eval'}: cannot write in {locked} (permission denied)",
    )


# -- patches, classifiers, models -------------------------------------------------------------------------------
class Payload:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_as_style_classifier_is_refused_unexecuted(tmp_path, capfd):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "style50.pth"
    with open(evil, "wb") as f:
        pickle.dump({"model_state_dict": Payload(str(marker))}, f)
    refused(
        eval_args(
            tmp_path / "out",
            "--protocol",
            "unlearncanvas",
            "--style-classifier",
            str(evil),
            "--object-classifier",
            str(evil),
        ),
        tmp_path,
        capfd,
        f"{evil} is not a weights file torch can read safely (weights_only=True",
    )
    assert not marker.exists()


def test_torch_save_pickle_as_style_classifier_is_refused_unexecuted(tmp_path, capfd):
    import torch

    marker = tmp_path / "payload-ran"
    evil = tmp_path / "style50.pth"
    torch.save({"model_state_dict": Payload(str(marker))}, evil)
    refused(
        eval_args(
            tmp_path / "out",
            "--protocol",
            "unlearncanvas",
            "--style-classifier",
            str(evil),
            "--object-classifier",
            str(evil),
        ),
        tmp_path,
        capfd,
        "weights_only=True refused it",
    )
    assert not marker.exists()


# -- concepts and protocols --------------------------------------------------------------------------------------
