"""Out-of-distribution evaluation with other prompt templates (erase eval --templates), and the rule that
no training step of any method reads the shipped OOD templates."""

import json
from pathlib import Path

import pytest

from erase.cli import main
from eval.protocols import ProtocolError, load_protocol, load_templates

ROOT = Path(__file__).resolve().parents[1]
OOD_FILE = ROOT / "assets" / "templates" / "canvas-mini-ood.txt"


def test_shipped_templates_load_and_differ_from_the_protocol():
    p = load_protocol("canvas-mini")
    templates = load_templates(OOD_FILE, p)
    assert len(templates) >= 8 and p.template not in templates
    assert templates[0] == "A {style} style picture of a {object}."  # comments skipped, order kept


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "holds no template"),
        ("# only a comment\n\n", "holds no template"),
        ("A picture of a cat.\n", "must contain exactly {object}, {style}"),
        ("A {object} in {style} by {artist}.\n", "must contain exactly"),
        ("A {object} in {style}.\nA {object} in {style}.\n", "twice"),
        ("A {object in {style}.\n", "bad template"),
    ],
)
def test_bad_templates_files(tmp_path, text, match):
    f = tmp_path / "t.txt"
    f.write_text(text)
    with pytest.raises(ProtocolError, match=match):
        load_templates(f, load_protocol("canvas-mini"))


def test_cli_reports_ood_per_template_and_mean(tmp_path, capsys):
    from worlds.canvas_mini import PIPELINE_DIR

    f = tmp_path / "t.txt"
    f.write_text("A {style} style picture of a {object}.\n{object} drawn in {style} style.\n")
    out = tmp_path / "eval"
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
            "4",
            "--no-fid",
            "--templates",
            str(f),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    r = json.loads((out / "report.json").read_text())
    ood = r["ood"]
    assert [p["template"] for p in ood["per_template"]] == f.read_text().splitlines()
    sub = json.loads((out / "ood" / "template-1" / "report.json").read_text())
    assert sub["ira"] == ood["per_template"][1]["ira"] and any("template" in d for d in sub["deviations"])
    assert ood["mean"]["ira"] == pytest.approx((ood["per_template"][0]["ira"] + ood["per_template"][1]["ira"]) / 2)
    manifest = (out / "ood" / "template-0" / "images" / "manifest.jsonl").read_text().splitlines()
    assert json.loads(manifest[0])["prompt"] == "A Pencil Drawing style picture of a Birds."
    assert "Out-of-distribution prompts" in (out / "report.md").read_text()


def test_cli_refuses_a_bad_templates_file_before_writing(tmp_path, capsys):
    from worlds.canvas_mini import PIPELINE_DIR

    f = tmp_path / "t.txt"
    f.write_text("no placeholders here\n")
    out = tmp_path / "eval"
    assert (
        main(
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
                "--templates",
                str(f),
            ]
        )
        == 2
    )
    assert "must contain exactly" in capsys.readouterr().err and not out.exists()


def test_no_method_reads_the_ood_templates(tiny_pipe, tmp_path, monkeypatch):
    """Run every registered method for a few steps while recording every file opened: the OOD file is never read."""
    import builtins
    import io

    from test_salun import request

    from erase.api import erase_concept
    from erase.core.registry import list_methods

    opened = []
    real_open = builtins.open

    def spy(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    tiny = {
        "salun": {"forget_seeds": 1, "retain_seeds": 1},
        "concept_ablation": {"anchor_seeds": 1, "retain_seeds": 1, "alpha": 1.0},
        "doco": {"anchor_seeds": 1, "retain_seeds": 1, "warmup": 1, "disc_layers": 2, "disc_width": 8},
    }
    from dataclasses import fields

    from erase.core.registry import get_method

    for name in list_methods("stable_diffusion"):
        defaults = {f.name: f.default for f in fields(get_method(name).config_cls)}
        common = {"steps": 2, "data_steps": 2, "batch_size": 2, "retain_batch_size": 2, "sample_steps": 2}
        closed_form = defaults.get("steps") == 0  # UCE, RECE: no training steps
        over = {
            k: v
            for k, v in {**common, **tiny.get(name, {})}.items()
            if k in defaults and not (closed_form and k == "steps")
        }
        erase_concept(tiny_pipe, name, request(), tmp_path / name, overrides=over, progress=False)
    assert opened, "the spy saw no file at all"
    assert not [f for f in opened if "ood" in Path(f).name or "templates" in Path(f).parts]
    for f in (ROOT / "erase").rglob("*.py"):  # and no method's source names the file
        assert "canvas-mini-ood" not in f.read_text() and "assets/templates" not in f.read_text(), f
