"""`erase run` then `erase eval --patch` through the CLI on the shipped canvas-mini model:
the target's accuracy falls."""

import json
import re

import pytest

from erase.cli import main


def test_run_then_eval_patch_erases_the_target(tmp_path, capsys):
    from worlds.canvas_mini import PIPELINE_DIR

    model, patch = str(PIPELINE_DIR), tmp_path / "patch"
    quick = [
        "--set",
        "forget_seeds=1",
        "--set",
        "retain_seeds=1",
        "--set",
        "data_steps=10",
        "--set",
        "lr=0.002",
        "--set",
        "checkpoint_every=1000",
    ]
    assert (
        main(
            [
                "run",
                "salun",
                "--model",
                model,
                "--concept",
                "Watercolor",
                "--kind",
                "style",
                "--preset",
                "canvas-mini",
                "--steps",
                "40",
                *quick,
                "--out",
                str(patch),
                "--quiet",
            ]
        )
        == 0
    ), capsys.readouterr().err
    common = ["--target", "Watercolor", "--kind", "style", "--seeds", "1", "--steps", "20", "--no-fid", "--quiet"]
    assert main(["eval", "--model", model, "--out", str(tmp_path / "original"), *common]) == 0, capsys.readouterr().err
    assert main(["eval", "--model", model, "--patch", str(patch), "--out", str(tmp_path / "erased"), *common]) == 0, (
        capsys.readouterr().err
    )
    before = json.loads((tmp_path / "original" / "report.json").read_text())
    after = json.loads((tmp_path / "erased" / "report.json").read_text())
    assert before["per_concept"]["style"]["Watercolor"]["accuracy"] == 1.0
    assert after["per_concept"]["style"]["Watercolor"]["accuracy"] <= 0.5  # UA 0 -> at least 50 after 40 steps
    assert after["ua"] >= 0.5 and before["ua"] == 0.0


@pytest.mark.parametrize("method, extra", [("doco", ["--set", "warmup=1"]), ("concept_ablation", [])])
def test_kv_methods_run_two_steps_on_canvas_mini(tmp_path, capsys, method, extra):
    """`erase run doco|concept_ablation` works like `erase run salun`: a 2-step run on the shipped model writes a
    K/V-only patch that applies to a fresh load; `--set trainable=...` narrows the trained weights."""
    from erase.core.patch import ErasurePatch
    from worlds.canvas_mini import PIPELINE_DIR

    quick = [
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
        *extra,
    ]
    common = [
        "--model",
        str(PIPELINE_DIR),
        "--concept",
        "Watercolor",
        "--kind",
        "style",
        "--preset",
        "canvas-mini",
        "--quiet",
        *quick,
    ]
    assert main(["run", method, *common, "--out", str(tmp_path / "kv")]) == 0, capsys.readouterr().err
    names = ErasurePatch.from_pretrained(tmp_path / "kv").names()
    assert names and all(re.search(r"attn2\.to_[kv]\.weight$", n) for n in names), sorted(names)[:4]
    assert (
        main(
            ["run", method, *common, "--set", "trainable=^mid_block\\..*attn2\\.to_v", "--out", str(tmp_path / "mid")]
        )
        == 0
    ), capsys.readouterr().err
    config = json.loads((tmp_path / "mid" / "erasure_config.json").read_text())
    assert (
        config["info"]["trainable"]["group"] == "^mid_block\\..*attn2\\.to_v"
        and config["info"]["trainable"]["tensors"] == 1
    )
