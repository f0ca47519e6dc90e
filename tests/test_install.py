"""A regular (not editable) install works from any directory: the wheel carries the presets and the shipped models.

The wheel is built from this checkout and installed into a fresh virtual environment whose only other packages are
this environment's dependencies (a .pth line, so nothing is downloaded); every command runs from a temporary
directory with the checkout nowhere on its path."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the new environment's python, its bin folder, a working directory outside the checkout)."""
    base = tmp_path_factory.mktemp("install")
    wheels, venv, work = base / "wheels", base / "venv", base / "work"
    work.mkdir()
    source = (
        base / "source"
    )  # a copy of what the wheel is built from: a build/ left in the checkout can hold stale modules
    for name in ("erase", "eval", "worlds", "pipelines", "assets"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "_erasekit_test_deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )  # torch, diffusers, ... (not erasekit)
    wheel = next(wheels.glob("erasekit-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    return python, venv / "bin", work


def run(installed, *argv, timeout=900):
    python, bin_dir, work = installed
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "ERASEKIT_ASSETS", "ERASEKIT_CANVAS_MINI", "ERASEKIT_FACES_MINI")
    }
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(list(argv), cwd=work, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_installed_package_is_not_the_checkout(installed):
    python = installed[0]
    r = run(
        installed,
        str(python),
        "-c",
        "import erase, erase.core.locations as l; print(erase.__file__); print(l.assets_root())",
    )
    assert r.returncode == 0, r.stderr
    package, assets = r.stdout.split()
    assert not package.startswith(str(ROOT)) and not assets.startswith(str(ROOT))
    assert not (
        Path(package).parents[1] / "eval" / "canvas_mini"
    ).exists()  # the worlds live in worlds/, nothing stale
    assert Path(assets, "presets", "salun", "canvas-mini.json").is_file()
    assert Path(assets, "canvas-mini", "pipeline", "model_index.json").is_file()


def test_an_installed_erase_runs_a_method_on_a_shipped_model_by_name(installed):
    r = run(installed, "erase", "methods")
    assert r.returncode == 0 and "presets: canvas-mini, canvas-mini-robust" in r.stdout, r.stderr
    r = run(
        installed,
        "erase",
        "run",
        "uce",
        "--model",
        "canvas-mini",
        "--concept",
        "Watercolor",
        "--kind",
        "style",
        "--preset",
        "canvas-mini",
        "--out",
        "runs/wc",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    patch = installed[2] / "runs" / "wc"
    assert (patch / "erasure_patch.safetensors").is_file()
    assert '"model": "canvas-mini"' in (patch / "resolved_config.json").read_text()  # recorded as the user gave it
    r = run(
        installed,
        "erase",
        "run",
        "uce",
        "--model",
        "no-such-model",
        "--concept",
        "Watercolor",
        "--kind",
        "style",
        "--out",
        "runs/x",
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not (installed[2] / "runs" / "x").exists()


@pytest.mark.slow
def test_an_installed_erase_runs_salun_and_the_demo(installed):
    """The issue's command (SalUn's canvas-mini preset from another directory), then ``erase demo``."""
    r = run(
        installed,
        "erase",
        "run",
        "salun",
        "--model",
        "canvas-mini",
        "--concept",
        "Watercolor",
        "--kind",
        "style",
        "--preset",
        "canvas-mini",
        "--out",
        "runs/wc-salun",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert (installed[2] / "runs" / "wc-salun" / "erasure_patch.safetensors").is_file()
    r = run(installed, "erase", "demo", "--out", "demo-out")
    assert r.returncode == 0, r.stderr
    assert {"report.md", "report.json", "original_vs_erased.png"} <= {
        p.name for p in (installed[2] / "demo-out").iterdir()
    }
