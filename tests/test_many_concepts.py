"""Many concepts in one model (issue 28): the joint request for every method, the list's figures by hand,
and the bad lists refused in one line."""

import math

import pytest
from test_concept_ablation import TINY as CA
from test_doco import TINY as DOCO
from test_salun import TINY as SALUN

from erase.cli.erasing import joint_protocol_request, parse_concept_list
from eval.concept_accuracy import harmonic_mean, list_scores
from eval.protocols import load_protocol

TINY = {
    "concept_ablation": CA,
    "doco": DOCO,
    "salun": SALUN,
    "esd": {"steps": 2, "sample_steps": 3, "lr": 1e-3},
    "uce": {},
    "rece": {"epochs": 1},
    "mace": {"lora_steps": 2, "lora_images": 1, "data_steps": 2},
}


def test_every_diffusion_method_has_a_joint_run_here():
    from erase.core.registry import list_methods

    assert set(list_methods("stable_diffusion")) == set(TINY)


def test_list_scores_by_hand():
    acc = {"style": {"A": 0.1, "B": 0.0, "C": 0.9, "D": 0.7, "Photo": 0.2}, "object": {"x": 1.0, "y": 0.5}}
    s = list_scores(acc, [("A", "style"), ("B", "style")], {"style": "Photo", "object": None})
    assert s["per_target_ua"] == {"A": 0.9, "B": 1.0}
    assert (
        math.isclose(s["ua"], 0.95) and math.isclose(s["ira"], 0.8) and math.isclose(s["cra"], 0.75)
    )  # Photo out of every average
    assert math.isclose(s["h"], 3 / (1 / 0.95 + 1 / 0.8 + 1 / 0.75))
    mixed = list_scores(acc, [("A", "style"), ("y", "object")], {"style": "Photo"})
    assert math.isclose(mixed["ira"], (0.0 + 0.9 + 0.7 + 1.0) / 4) and math.isnan(
        mixed["cra"]
    )  # both axes touched: no cross axis
    assert math.isclose(mixed["h"], harmonic_mean([mixed["ua"], mixed["ira"]]))
    assert harmonic_mean([0.0, 1.0, 1.0]) == 0.0


@pytest.mark.parametrize(
    "text, kind, message",
    [
        ("Watercolor,Rust,Watercolor", "style", "names 'Watercolor' twice"),
        ("style:Towers,object:Towers", "style", "names 'Towers' on two axes"),
        ("Watercolor,,Rust", "style", "empty entry"),
        ("Watercolor,Nope", "style", "'Nope' is not in protocol"),
        ("Photo,Rust", "style", "photo class"),
        (
            ",".join(
                [
                    "Watercolor",
                    "Rust",
                    "Crayon",
                    "Pop_Art",
                    "Ink_Art",
                    "Neon_Lines",
                    "Mosaic",
                    "Pencil_Drawing",
                    "Winter",
                    "Glowing_Sunset",
                ]
            ),
            "style",
            "erases every style",
        ),
    ],
)
def test_bad_lists_are_refused(text, kind, message):
    from erase.cli.common import UsageError

    with pytest.raises(UsageError, match=message):
        parse_concept_list(text, kind, load_protocol("canvas-mini"))


def test_the_joint_request_names_every_concept_and_retains_none_of_them():
    protocol = load_protocol("canvas-mini")
    r = joint_protocol_request(protocol, "Watercolor,object:Birds", "style", anchor=None, seed=0)
    assert r.concept == "Watercolor+Birds"
    assert len(r.forget_prompts) == len(r.anchor_prompts) == 10 + 11
    assert not [p for p in r.retain_prompts if "Watercolor" in p or "Birds" in p] and len(r.retain_prompts) == 10 * 9


@pytest.mark.parametrize("method", sorted(TINY))
def test_every_method_erases_two_concepts_in_one_request(tiny_pipe, tmp_path, method):
    """Two steps of each method on the joint request of two canvas-mini styles: one patch,
    both concepts' prompts trained."""
    from erase.api import erase_concept
    from eval.protocols import style_object_axes

    small = load_protocol("canvas-mini").with_overrides(
        axes=style_object_axes(["Watercolor", "Rust", "Crayon", "Photo"], ["Birds", "Towers"], "Photo")
    )
    request = joint_protocol_request(small, "Watercolor,Rust", "style", anchor=None, seed=0)
    assert len(request.forget_prompts) == 4 and len(request.retain_prompts) == 4
    patch = erase_concept(tiny_pipe, method, request, tmp_path / method, overrides=TINY[method], progress=False)
    assert patch.config["request"]["concept"] == "Watercolor+Rust"
    assert any(float(patch.dense_delta(n).abs().max()) > 0 for n in patch.names())
    assert patch.config["request"]["forget_prompts"] == request.forget_prompts


def test_erase_run_and_eval_of_a_list_report_the_lists_figures(tmp_path):
    """erase run uce --concept Watercolor,Rust --eval: one patch; the report's ua / ira / cra / h are the list's."""
    from erase.cli import main

    out = tmp_path / "two"
    assert (
        main(
            [
                "run",
                "uce",
                "--model",
                "canvas-mini",
                "--concept",
                "Watercolor,Rust",
                "--kind",
                "style",
                "--preset",
                "canvas-mini",
                "--out",
                str(out),
                "--eval",
                "--eval-seeds",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    import json

    r = json.loads((out / "eval" / "report.json").read_text())
    assert r["joint"] and r["erased"] == ["Watercolor", "Rust"] and set(r["per_target_ua"]) == {"Watercolor", "Rust"}
    acc = {c: v["accuracy"] for c, v in r["per_concept"]["style"].items()}
    kept = [c for c in acc if c not in ("Watercolor", "Rust", "Photo")]
    assert math.isclose(
        r["ira"], sum(acc[c] for c in kept) / len(kept)
    )  # a hand count from the report's own accuracies
    assert math.isclose(r["ua"], 1 - (acc["Watercolor"] + acc["Rust"]) / 2)
    assert r["ua"] >= 0.9 and r["h"] > 0.9
    assert set(r["retain_fidelity"]["per_concept"]["style"]) == set(kept) | {"Photo"}


def test_the_pictures_of_a_list_place_each_runs_images_in_its_row_and_column(tmp_path, monkeypatch):
    """bench.many_pictures on a fake runs folder: each tile comes from its method's (or the original's) image."""
    import numpy as np
    from PIL import Image

    import bench.many_pictures as pictures

    monkeypatch.setattr(pictures, "WORK", tmp_path)
    cols = pictures.columns("styles", 3)
    colours = {}
    for m, method in enumerate(("uce", "mace")):
        for c, (_, _, rel) in enumerate(cols):
            path = tmp_path / rel if rel.startswith("original/") else tmp_path / method / "k3" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            colour = (10 * c, 100 + 50 * m, 7) if not rel.startswith("original/") else (200, 10 * c, 9)
            Image.new("RGB", (32, 32), colour).save(path)
            colours[(m, c)] = colour
    img = np.asarray(Image.open(pictures.draw("styles", 3, tmp_path / "p.png")))
    cell = 32 * pictures.SCALE + 6
    for (m, c), colour in colours.items():
        y, x = pictures.HEAD_H + m * cell + cell // 2, pictures.LABEL_W + c * cell + cell // 2
        assert tuple(img[y, x]) == colour, (m, c)
    assert [label for _, label, _ in cols[:2]] == ["original", "erased model"] and "Winter" in cols[4][0]


def _row(**kw):
    r = {"ua": 1.0, "ira": 1.0, "cra": 0.996, "original_ira": 1.0, "original_cra": 0.996, "psnr": 30.0}
    r.update({"k": 5, "asr": 0.2, "time_vs_single": 2.0})
    r.update(kw)
    return r


@pytest.mark.parametrize(
    ("change", "holds", "meets"),
    [
        ({}, True, True),
        ({"ua": 0.989}, False, False),
        ({"ira": 0.979}, False, False),
        ({"cra": 0.97}, False, False),
        ({"cra": float("nan"), "original_cra": float("nan")}, True, True),  # a mixed list: no CRA
        ({"psnr": 27.9}, False, False),
        ({"psnr": None}, False, False),
        ({"asr": 0.31}, True, False),
        ({"asr": None}, True, False),  # not attacked: the bar is not shown met
        ({"time_vs_single": 5.1}, True, False),
    ],
)
def test_the_bar_of_a_list_and_its_part_before_the_attack(change, holds, meets):
    """bench.many attacks only the lists that hold before the attack (the bar is decided by the attack there)."""
    from bench.many import holds_before_attack, meets_bar

    assert holds_before_attack(_row(**change)) is holds and meets_bar(_row(**change)) is meets


def test_the_bench_pool_runs_every_job_and_reports_the_ones_that_fail(tmp_path, monkeypatch):
    from bench.pool import run_pool

    (tmp_path / "fakejob.py").write_text(
        "import sys, pathlib\n"
        "job, out = sys.argv[2], pathlib.Path(sys.argv[3])\n"
        "(out / job).write_text(job)\n"
        "sys.exit(3 if job == 'bad' else 0)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    failed = run_pool("fakejob", ["a", "bad", "c"], tmp_path / "logs", 2, [str(tmp_path)])
    assert failed == ["bad"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name in ("a", "bad", "c")) == ["a", "bad", "c"]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["a.log", "bad.log", "c.log"]
