"""CLI surface: help text, and one-line errors with exit code 2 and nothing written on bad input."""

import json
import subprocess
import sys

import pytest

from erase.cli import main


def test_console_help():
    r = subprocess.run([sys.executable, "-m", "erase.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("eval", "grid", "run", "methods"):
        assert cmd in r.stdout


@pytest.mark.parametrize("cmd", ["eval", "grid", "run", "methods"])
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert len(capsys.readouterr().out) > 200 or cmd == "methods"


def fails(argv, capsys, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert match in err, err
    return err


def test_eval_bad_inputs(tmp_path, capsys):
    out = tmp_path / "out"
    base = ["eval", "--model", str(tmp_path), "--kind", "style", "--out", str(out)]
    fails(base + ["--target", "Watercolor", "--protocol", "nope"], capsys, "unknown protocol")
    fails(base + ["--target", "Van_Gogh"], capsys, "not in protocol 'canvas-mini'")
    fails(base + ["--target", "Watercolor"], capsys, "not a diffusers pipeline folder")
    assert not out.exists()


def test_eval_refuses_folder_of_another_run(tmp_path, capsys, canvas_pipe):
    from worlds.canvas_mini import PIPELINE_DIR

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"ua": 0.5}))
    fails(
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
        ],
        capsys,
        "holds a report from another run",
    )
    assert json.loads((out / "report.json").read_text()) == {"ua": 0.5}


def test_run_bad_inputs(tmp_path, capsys):
    from worlds.canvas_mini import PIPELINE_DIR

    out = tmp_path / "out"
    model = str(PIPELINE_DIR)
    base = ["run", "salun", "--model", model, "--kind", "style", "--out", str(out)]
    fails(base + ["--concept", "  "], capsys, "concept to erase is empty")
    fails(base + ["--concept", "Watercolor", "--anchor", "Watercolor"], capsys, "anchor")
    fails(
        ["run", "esdx", "--model", model, "--kind", "style", "--out", str(out), "--concept", "Watercolor"],
        capsys,
        "unknown method 'esdx'",
    )
    fails(base + ["--concept", "Watercolor", "--preset", "fast"], capsys, "unknown preset 'fast'")
    fails(base + ["--concept", "Watercolor", "--set", "lr"], capsys, "key=value")
    fails(
        [
            "run",
            "salun",
            "--model",
            str(tmp_path),
            "--kind",
            "style",
            "--out",
            str(out),
            "--concept",
            "Van Gogh",
            "--anchor",
            "a painting",
        ],
        capsys,
        "not a diffusers pipeline folder",
    )
    assert not out.exists()
    out.mkdir()
    (out / "erasure_patch.safetensors").write_bytes(b"mine")
    fails(base + ["--concept", "Watercolor"], capsys, "already holds a patch")
    assert (out / "erasure_patch.safetensors").read_bytes() == b"mine"


def test_grid_bad_inputs(tmp_path, capsys):
    from worlds.canvas_mini import PIPELINE_DIR

    existing = tmp_path / "g.png"
    existing.write_bytes(b"keep")
    fails(["grid", "--model", str(PIPELINE_DIR), "--out", str(existing)], capsys, "exists")
    fails(["grid", "--model", str(PIPELINE_DIR), "--out", str(tmp_path / "g.jpg")], capsys, ".png")
    assert existing.read_bytes() == b"keep"


def test_methods_lists_salun(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "salun" in out and "canvas-mini" in out and "sd15" in out


def test_methods_shows_options_with_preset_values_and_help(capsys):
    from erase.core.registry import config_options
    from erase.methods.salun import SalUnConfig

    assert main(["methods", "salun", "--preset", "sd15"]) == 0
    lines = capsys.readouterr().out.splitlines()
    alpha = next(line for line in lines if line.split()[:1] == ["alpha"])
    assert alpha.split()[1] == "0.5" and "weight of the retain loss" in alpha  # sd15 sets alpha 0.5
    # every option of the config is documented
    assert all(help_text for _, _, help_text in config_options(SalUnConfig))
    fails(["methods", "salun", "--preset", "nope"], capsys, "unknown preset")
