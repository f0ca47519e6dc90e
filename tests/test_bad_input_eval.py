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


# -- numbers --------------------------------------------------------------------------------------------
def test_batch_size_zero(tmp_path, capfd):
    refused(
        eval_args(tmp_path / "out", "--batch-size", "0"), tmp_path, capfd, "--batch-size must be at least 1, got 0"
    )


def test_batch_size_negative(tmp_path, capfd):
    refused(
        eval_args(tmp_path / "out", "--batch-size", "-4"), tmp_path, capfd, "--batch-size must be at least 1, got -4"
    )


def test_grid_steps_zero(tmp_path, capfd):
    refused(grid_args(tmp_path / "g.png", "--steps", "0"), tmp_path, capfd, "--steps must be at least 1, got 0")


def test_grid_steps_negative(tmp_path, capfd):
    refused(grid_args(tmp_path / "g.png", "--steps", "-5"), tmp_path, capfd, "--steps must be at least 1, got -5")


def test_eval_steps_zero(tmp_path, capfd):
    argv = eval_args(tmp_path / "out")
    argv[argv.index("--steps") + 1] = "0"
    refused(argv, tmp_path, capfd, "--steps must be at least 1, got 0")


def test_seeds_zero(tmp_path, capfd):
    argv = eval_args(tmp_path / "out")
    argv[argv.index("--seeds") + 1] = "0"
    refused(argv, tmp_path, capfd, "--seeds must be at least 1")


def test_eval_threads_zero(tmp_path, capfd):
    refused(eval_args(tmp_path / "out", "--threads", "0"), tmp_path, capfd, "--threads must be at least 1, got 0")


def test_grid_threads_zero(tmp_path, capfd):
    refused(grid_args(tmp_path / "g.png", "--threads", "0"), tmp_path, capfd, "--threads must be at least 1, got 0")


def test_scale_nan(tmp_path, capfd):
    refused(eval_args(tmp_path / "out", "--scale", "nan"), tmp_path, capfd, "--scale must be a finite number, got nan")


def test_grid_scale_inf(tmp_path, capfd):
    refused(
        grid_args(tmp_path / "g.png", "--scale", "inf"), tmp_path, capfd, "--scale must be a finite number, got inf"
    )


def test_guidance_nan(tmp_path, capfd):
    refused(
        eval_args(tmp_path / "out", "--guidance", "nan"),
        tmp_path,
        capfd,
        "--guidance must be a finite number, got nan",
    )


# -- devices ---------------------------------------------------------------------------------------------
def test_unknown_device(tmp_path, capfd):
    refused(
        eval_args(tmp_path / "out", "--device", "tpu"),
        tmp_path,
        capfd,
        "--device 'tpu' is not a device; use cpu, cuda, cuda:N or mps",
    )


def test_unsupported_device_type(tmp_path, capfd):
    refused(grid_args(tmp_path / "g.png", "--device", "meta"), tmp_path, capfd, "--device 'meta' is not supported")


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
def test_out_is_an_existing_file(tmp_path, capfd):
    (tmp_path / "report").write_text("mine")
    refused(
        eval_args(tmp_path / "report"), tmp_path, capfd, f"--out {tmp_path / 'report'} is a file; give a folder path"
    )


def test_out_lies_under_a_file(tmp_path, capfd):
    (tmp_path / "notes.txt").write_text("mine")
    refused(
        eval_args(tmp_path / "notes.txt" / "eval"), tmp_path, capfd, f"lies under the file {tmp_path / 'notes.txt'}"
    )


def test_grid_out_lies_under_a_file(tmp_path, capfd):
    (tmp_path / "notes.txt").write_text("mine")
    refused(
        grid_args(tmp_path / "notes.txt" / "g.png"), tmp_path, capfd, f"lies under the file {tmp_path / 'notes.txt'}"
    )


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
    import erase.files as files

    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(files.os, "access", lambda path, mode: os.path.abspath(path) != str(locked))
    refused(
        eval_args(locked / "eval"),
        tmp_path,
        capfd,
        f"--out {locked / 'eval'}: cannot write in {locked} (permission denied)",
    )


def test_eval_into_a_folder_holding_a_users_grid(tmp_path, capfd):
    out = tmp_path / "results"
    out.mkdir()
    (out / "grid.png").write_bytes(b"my earlier grid")
    refused(eval_args(out), tmp_path, capfd, "holds files erase eval did not write (grid.png)")


def test_eval_into_a_folder_holding_other_files(tmp_path, capfd):
    out = tmp_path / "results"
    (out / "data").mkdir(parents=True)
    (out / "notes.md").write_text("mine")
    refused(eval_args(out), tmp_path, capfd, "holds files erase eval did not write (data, notes.md)")


def test_grid_out_exists(tmp_path, capfd):
    (tmp_path / "g.png").write_bytes(b"keep")
    refused(grid_args(tmp_path / "g.png"), tmp_path, capfd, "exists; pass --overwrite or choose another file")


# -- patches, classifiers, models -------------------------------------------------------------------------------
def test_patch_file_instead_of_its_folder(tmp_path, capfd):
    patch = tmp_path / "patch"
    patch.mkdir()
    (patch / "erasure_patch.safetensors").write_bytes(b"x")
    (patch / "erasure_config.json").write_text("{}")
    refused(
        eval_args(tmp_path / "out", "--patch", str(patch / "erasure_patch.safetensors")),
        tmp_path,
        capfd,
        "--patch expects the patch folder, got the file "
        f"{patch / 'erasure_patch.safetensors'}; pass its folder {patch}",
    )


def test_patch_folder_missing(tmp_path, capfd):
    refused(
        eval_args(tmp_path / "out", "--patch", str(tmp_path / "nope")),
        tmp_path,
        capfd,
        f"--patch folder {tmp_path / 'nope'} does not exist",
    )


def test_patch_folder_without_a_patch(tmp_path, capfd):
    (tmp_path / "empty").mkdir()
    refused(
        grid_args(tmp_path / "g.png", "--patch", str(tmp_path / "empty")),
        tmp_path,
        capfd,
        "has no erasure_patch.safetensors or erasure_config.json",
    )


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


def test_unlearncanvas_without_classifiers(tmp_path, capfd):
    refused(
        eval_args(tmp_path / "out", "--protocol", "unlearncanvas"),
        tmp_path,
        capfd,
        "the unlearncanvas protocol needs --style-classifier and --object-classifier",
    )


def test_classifier_options_with_canvas_mini(tmp_path, capfd):
    (tmp_path / "style50.pth").write_bytes(b"x")
    refused(
        eval_args(tmp_path / "out", "--style-classifier", str(tmp_path / "style50.pth")),
        tmp_path,
        capfd,
        "--style-classifier / --object-classifier are for the unlearncanvas protocol",
    )


def test_fid_weights_with_canvas_mini(tmp_path, capfd):
    refused(
        eval_args(tmp_path / "out", "--fid-weights", str(tmp_path / "pt_inception.pth")),
        tmp_path,
        capfd,
        "--fid-weights / --fid-reference are for real models",
    )


def test_clip_folder_without_a_model(tmp_path, capfd):
    (tmp_path / "clip").mkdir()
    refused(
        eval_args(tmp_path / "out", "--clip", str(tmp_path / "clip")),
        tmp_path,
        capfd,
        f"{tmp_path / 'clip'} holds no open_clip_config.json; point --clip at an open_clip model folder",
    )


def test_clip_architecture_without_weights(tmp_path, capfd):
    refused(
        eval_args(tmp_path / "out", "--clip", "ViT-B-32"),
        tmp_path,
        capfd,
        "CLIP architecture 'ViT-B-32' needs local weights (--clip-weights FILE)",
    )


def test_model_is_a_random_file(tmp_path, capfd):
    (tmp_path / "model.bin").write_bytes(os.urandom(4096))
    refused(
        eval_args(tmp_path / "out", model=str(tmp_path / "model.bin")),
        tmp_path,
        capfd,
        "is neither a diffusers folder nor a .safetensors/.ckpt checkpoint",
    )


def test_model_is_a_random_safetensors_file(tmp_path, capfd):
    (tmp_path / "model.safetensors").write_bytes(os.urandom(4096))
    refused(
        eval_args(tmp_path / "out", model=str(tmp_path / "model.safetensors")), tmp_path, capfd, "cannot load pipeline"
    )


def test_model_is_an_empty_folder(tmp_path, capfd):
    (tmp_path / "model").mkdir()
    refused(
        eval_args(tmp_path / "out", model=str(tmp_path / "model")),
        tmp_path,
        capfd,
        "is not a diffusers pipeline folder (no model_index.json)",
    )


def test_grid_model_is_an_empty_folder(tmp_path, capfd):
    (tmp_path / "model").mkdir()
    refused(
        grid_args(tmp_path / "g.png", model=str(tmp_path / "model")),
        tmp_path,
        capfd,
        "is not a diffusers pipeline folder",
    )


# -- concepts and protocols --------------------------------------------------------------------------------------
def test_unknown_kind(tmp_path, capfd):
    refused(
        eval_args(tmp_path / "out", kind="colour"),
        tmp_path,
        capfd,
        "unknown kind 'colour' for protocol 'canvas-mini'; its axes are: style, object",
    )


def test_photo_class_as_target(tmp_path, capfd):
    refused(
        eval_args(tmp_path / "out", target="Photo"),
        tmp_path,
        capfd,
        "'Photo' is the photo class of protocol 'canvas-mini'",
    )


def test_kind_count_does_not_match_targets(tmp_path, capfd):
    argv = eval_args(tmp_path / "out") + ["--target", "Birds", "--target", "Cats", "--kind", "object"]
    refused(argv, tmp_path, capfd, "give --kind once, or once per --target")


def test_protocol_file_with_a_bad_template(tmp_path, capfd):
    import json

    (tmp_path / "p.json").write_text(
        json.dumps({"name": "mine", "styles": ["A"], "objects": ["B"], "template": "A {thing}."})
    )
    refused(
        eval_args(tmp_path / "out", "--protocol", str(tmp_path / "p.json"), target="A"),
        tmp_path,
        capfd,
        "template must contain exactly the axis placeholders {style}, {object}",
    )


def test_grid_unknown_style(tmp_path, capfd):
    refused(
        ["grid", "--model", MODEL, "--out", str(tmp_path / "g.png"), "--styles", "Van_Gogh"],
        tmp_path,
        capfd,
        "'Van_Gogh' is not a style or object of protocol 'canvas-mini'",
    )


def test_grid_max_rows_needs_compare(tmp_path, capfd):
    refused(grid_args(tmp_path / "g.png", "--max-rows", "2"), tmp_path, capfd, "--max-rows needs --compare")


def test_eval_lpips_weights_missing(tmp_path, capfd):
    refused(
        [
            "eval",
            "--model",
            MODEL,
            "--target",
            "Watercolor",
            "--kind",
            "style",
            "--out",
            str(tmp_path / "o"),
            "--lpips-weights",
            str(tmp_path / "alex.pth"),
        ],
        tmp_path,
        capfd,
        "LPIPS weights not found",
    )
