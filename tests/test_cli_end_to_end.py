"""`erase run` then `erase eval --patch` through the CLI on the shipped canvas-mini model: the target's accuracy falls."""

import json

from erase.cli import main


def test_run_then_eval_patch_erases_the_target(tmp_path, capsys):
    from eval.canvas_mini import PIPELINE_DIR

    model, patch = str(PIPELINE_DIR), tmp_path / "patch"
    quick = ["--set", "forget_seeds=1", "--set", "retain_seeds=1", "--set", "data_steps=10", "--set", "lr=0.002", "--set", "checkpoint_every=1000"]
    assert main(["run", "salun", "--model", model, "--concept", "Watercolor", "--kind", "style", "--preset", "canvas-mini", "--steps", "40",
                 *quick, "--out", str(patch), "--quiet"]) == 0, capsys.readouterr().err
    common = ["--target", "Watercolor", "--kind", "style", "--seeds", "1", "--steps", "20", "--no-fid", "--quiet"]
    assert main(["eval", "--model", model, "--out", str(tmp_path / "original"), *common]) == 0, capsys.readouterr().err
    assert main(["eval", "--model", model, "--patch", str(patch), "--out", str(tmp_path / "erased"), *common]) == 0, capsys.readouterr().err
    before = json.loads((tmp_path / "original" / "report.json").read_text())
    after = json.loads((tmp_path / "erased" / "report.json").read_text())
    assert before["per_concept"]["style"]["Watercolor"]["accuracy"] == 1.0
    assert after["per_concept"]["style"]["Watercolor"]["accuracy"] <= 0.5  # UA 0 -> at least 50 after 40 steps
    assert after["ua"] >= 0.5 and before["ua"] == 0.0
