"""Bad input to `erase attack`: one stderr line naming the problem, exit 2, nothing written."""

from test_bad_input_eval import MODEL, refused

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


def test_unknown_attack(tmp_path, capfd):
    refused(
        attack_args(tmp_path / "out", "--attack", "gcg"),
        tmp_path,
        capfd,
        "unknown attack 'gcg'; known attacks: embedding",
    )


def test_unknown_attack_option(tmp_path, capfd):
    refused(
        attack_args(tmp_path / "out", "--set", "lr_max=3"),
        tmp_path,
        capfd,
        "unknown option(s) lr_max for attack unlearndiffatk",
    )


def test_attack_on_a_stylegan_generator(tmp_path, capfd):
    refused(
        attack_args(tmp_path / "out", model=str(GENERATOR_DIR)),
        tmp_path,
        capfd,
        "is a StyleGAN generator: it has no text encoder",
    )


def test_attack_with_a_patch_for_another_base_model(tmp_path, capfd):
    from conftest import build_tiny_pipe
    from test_salun import request

    from erase.api import erase_concept

    erase_concept(build_tiny_pipe(), "uce", request(), tmp_path / "other-patch", progress=False)
    line = refused(attack_args(tmp_path / "out", "--patch", str(tmp_path / "other-patch")), tmp_path, capfd, "patch")
    assert "another" in line or "made on" in line or "made for" in line, line


def test_prompts_zero(tmp_path, capfd):
    refused(attack_args(tmp_path / "out", "--prompts", "0"), tmp_path, capfd, "--prompts must be at least 1, got 0")


def test_target_not_in_the_protocol(tmp_path, capfd):
    refused(
        attack_args(tmp_path / "out", target="Van_Gogh"),
        tmp_path,
        capfd,
        "style 'Van_Gogh' is not in protocol 'canvas-mini'",
    )


def test_target_on_the_wrong_axis(tmp_path, capfd):
    refused(
        attack_args(tmp_path / "out", kind="object"),
        tmp_path,
        capfd,
        "object 'Watercolor' is not in protocol 'canvas-mini'",
    )


def test_an_occupied_output_folder_needs_resume(tmp_path, capfd):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    refused(attack_args(tmp_path / "out"), tmp_path, capfd, "holds files erase attack did not write (notes.txt)")


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


def test_eval_with_an_unknown_attack(tmp_path, capfd):
    from test_bad_input_eval import eval_args

    refused(eval_args(tmp_path / "out", "--attack", "gcg"), tmp_path, capfd, "unknown attack 'gcg'")


def test_eval_attack_options_without_an_attack(tmp_path, capfd):
    from test_bad_input_eval import eval_args

    refused(eval_args(tmp_path / "out", "--attack-prompts", "3"), tmp_path, capfd, "need --attack NAME")


def test_eval_with_an_attack_puts_its_success_rate_beside_ua(tmp_path, capfd):
    import json

    from test_bad_input_eval import eval_args

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
