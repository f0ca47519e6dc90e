"""Bad input to `erase attack`: one stderr line naming the problem, exit 2, nothing written."""

import pytest
from test_bad_input_eval import MODEL, eval_args, refused

from erase.cli import main
from worlds.faces_mini.assets import GENERATOR_DIR


def attack_args(out, *extra, model=MODEL, target="Watercolor", kind="style"):
    return [
        "attack",
        "--model",
        model,
        "--target",
        target,
        "--kind",
        kind,
        "--out",
        str(out),
        "--steps",
        "2",
        "--seeds",
        "1",
        *extra,
    ]


def _notes(folder):
    """A folder of the user's own (notes.txt in it); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("mine")
    return folder


# (case, argv from tmp_path, text of the one stderr line)
CASES = [
    (
        "unknown attack",
        lambda t: attack_args(t / "out", "--attack", "gcg"),
        "unknown attack 'gcg'; known attacks: embedding",
    ),
    (
        "unknown attack option",
        lambda t: attack_args(t / "out", "--set", "lr_max=3"),
        "unknown option(s) lr_max for attack unlearndiffatk",
    ),
    (
        "attack on a StyleGAN generator",
        lambda t: attack_args(t / "out", model=str(GENERATOR_DIR)),
        "is a StyleGAN generator: it has no text encoder",
    ),
    ("--prompts 0", lambda t: attack_args(t / "out", "--prompts", "0"), "--prompts must be at least 1, got 0"),
    (
        "target not in the protocol",
        lambda t: attack_args(t / "out", target="Van_Gogh"),
        "style 'Van_Gogh' is not in protocol 'canvas-mini'",
    ),
    (
        "target on the wrong axis",
        lambda t: attack_args(t / "out", kind="object"),
        "object 'Watercolor' is not in protocol 'canvas-mini'",
    ),
    (
        "a folder of the user's files",
        lambda t: attack_args(_notes(t / "out")),
        "holds files erase attack did not write (notes.txt)",
    ),
    ("eval with an unknown attack", lambda t: eval_args(t / "out", "--attack", "gcg"), "unknown attack 'gcg'"),
    (
        "eval attack options without an attack",
        lambda t: eval_args(t / "out", "--attack-prompts", "3"),
        "need --attack NAME",
    ),
]


@pytest.mark.parametrize("build, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused(tmp_path, capfd, build, match):
    refused(build(tmp_path), tmp_path, capfd, match)


def test_attack_with_a_patch_for_another_base_model(tmp_path, capfd):
    from conftest import build_tiny_pipe
    from test_salun import request

    from erase.api import erase_concept

    erase_concept(build_tiny_pipe(), "uce", request(), tmp_path / "other-patch", progress=False)
    line = refused(attack_args(tmp_path / "out", "--patch", str(tmp_path / "other-patch")), tmp_path, capfd, "patch")
    assert "another" in line or "made on" in line or "made for" in line, line


def test_a_resume_with_another_attack_config_is_refused(tmp_path, capfd):
    first = attack_args(
        tmp_path / "out", "--attack", "embedding", "--set", "blocks=1", "--set", "iters=1", "--prompts", "1", "--quiet"
    )
    assert main(first) == 0
    refused(first + ["--set", "lr=0.5", "--resume"], tmp_path, capfd, "holds another run's results")
    refused(first, tmp_path, capfd, "is not empty; pass --resume")


def test_attack_end_to_end_writes_its_report(tmp_path, capfd):
    code = main(
        attack_args(
            tmp_path / "out",
            "--attack",
            "embedding",
            "--set",
            "blocks=1",
            "--set",
            "iters=1",
            "--prompts",
            "2",
            "--quiet",
        )
    )
    out = capfd.readouterr().out
    assert code == 0 and "ASR" in out
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {
        "attack.json",
        "attack.md",
        "grid.png",
        "run.json",
        "images",
    }


def test_eval_with_an_attack_puts_its_success_rate_beside_ua(tmp_path, capfd):
    import json

    code = main(
        eval_args(
            tmp_path / "ev",
            "--attack",
            "embedding",
            "--attack-prompts",
            "2",
            "--attack-set",
            "blocks=1",
            "--attack-set",
            "iters=1",
            "--no-fid",
            "--no-fidelity",
            "--quiet",
        )
    )
    out = capfd.readouterr().out
    assert code == 0 and "ASR" in out
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    (block,) = report["attack"]["targets"]
    assert block["target"] == "Watercolor" and block["prompts"] == 2 and 0 <= block["asr"] <= 1
    md = (tmp_path / "ev" / "report.md").read_text()
    assert "ASR under attack" in md and "## Under attack" in md and "(embedding)" in md
    assert (tmp_path / "ev" / block["folder"] / "attack.json").is_file()
