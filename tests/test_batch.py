"""`erase batch` on the shipped canvas-mini model with UCE (closed-form: seconds per concept): the concepts file,
the manifest, resume that keeps verified jobs and redoes broken ones, byte-identical patches with `erase run`,
the lock, joint erasure, evaluation summary and model cards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from erase.batch import BatchError, rank_lock, read_concepts, shard
from erase.cli import main

ROOT = Path(__file__).resolve().parents[1]
STYLES = ["Photo", "Watercolor", "Pop_Art", "Rust"]


def model():
    from worlds.canvas_mini import PIPELINE_DIR

    return str(PIPELINE_DIR)


def batch_args(concepts: Path, out: Path, *extra, method="uce"):
    return [
        "batch",
        "--model",
        model(),
        "--method",
        method,
        "--concepts",
        str(concepts),
        "--kind",
        "style",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def refused(argv, capsys, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and match in err, err


@pytest.fixture
def concepts(tmp_path):
    f = tmp_path / "styles.txt"
    f.write_text("# two styles\nWatercolor\n\nPop_Art   # the fragile one\n")
    return f


def test_read_concepts(tmp_path, concepts):
    assert read_concepts(concepts, STYLES, "style") == ["Watercolor", "Pop_Art"]
    for text, match in [
        ("Watercolor\nWatercolor\n", "more than once"),
        ("\n# nothing\n\n", "lists no concept"),
        ("Watercolor\nVan_Gogh\n", "'Van_Gogh' is not a style"),
    ]:
        (tmp_path / "c.txt").write_text(text)
        with pytest.raises(BatchError, match=match):
            read_concepts(tmp_path / "c.txt", STYLES, "style")


def test_shards_partition_the_concepts():
    concepts = [f"c{i}" for i in range(7)]
    parts = [shard(concepts, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(concepts) and parts[0] == ["c0", "c3", "c6"]


def test_batch_resume_and_byte_identity_with_erase_run(tmp_path, concepts, capsys):
    out = tmp_path / "out"
    assert main(batch_args(concepts, out)) == 0, capsys.readouterr().err
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["concept"] for m in manifest] == ["Watercolor", "Pop_Art"] and all(
        m["status"] == "done" for m in manifest
    )
    # the same job through `erase run` gives the same bytes
    assert (
        main(
            [
                "run",
                "uce",
                "--model",
                model(),
                "--concept",
                "Pop_Art",
                "--kind",
                "style",
                "--out",
                str(tmp_path / "single"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (tmp_path / "single" / "erasure_patch.safetensors").read_bytes() == (
        out / "Pop_Art" / "erasure_patch.safetensors"
    ).read_bytes()
    # an existing batch is refused without --resume; nothing changes
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
    refused(batch_args(concepts, out), capsys, "holds a batch already; pass --resume")
    # --resume keeps verified jobs and redoes a broken one
    stamp = (out / "Watercolor" / "erasure_patch.safetensors").stat().st_mtime_ns
    (out / "Pop_Art" / "erasure_patch.safetensors").write_bytes(b"broken")
    assert main(batch_args(concepts, out, "--resume")) == 0, capsys.readouterr().err
    assert (out / "Watercolor" / "erasure_patch.safetensors").stat().st_mtime_ns == stamp
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
    for p in before:
        if p.name == "erasure_patch.safetensors":
            assert after[p] == before[p], p  # the redone job gives the same bytes

    def timeless(data: bytes) -> list[dict]:
        # times aside: durations and the patch file's modification time (recorded so the manifest need not re-hash it)
        return [
            {k: v for k, v in json.loads(line).items() if "seconds" not in k and k != "mtime_ns"}
            for line in data.decode().splitlines()
        ]

    assert timeless(after[out / "manifest.jsonl"]) == timeless(before[out / "manifest.jsonl"])
    # a batch made with another method is not resumed
    refused(batch_args(concepts, out, "--resume", method="esd"), capsys, "holds a batch made with another")


def test_bad_input_writes_nothing(tmp_path, concepts, capsys):
    out = tmp_path / "out"
    (tmp_path / "dups.txt").write_text("Watercolor\nWatercolor\n")
    refused(batch_args(tmp_path / "dups.txt", out), capsys, "more than once")
    refused(batch_args(tmp_path / "missing.txt", out), capsys, "is not a file")
    refused(batch_args(concepts, out, "--set", "lam=-1"), capsys, "lam")
    assert not out.exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    refused(batch_args(concepts, tmp_path / "mine"), capsys, "is not a batch folder")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_a_second_batch_on_the_same_folder_is_refused(tmp_path, concepts, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with rank_lock(out, 0):
        refused(batch_args(concepts, out), capsys, "another erase batch is writing")


def test_joint_patch_and_model_card(tmp_path, concepts, capsys):
    out = tmp_path / "out"
    assert main(batch_args(concepts, out, "--joint", "--save-pipelines")) == 0, capsys.readouterr().err
    config = json.loads((out / "joint" / "erasure_config.json").read_text())
    assert config["request"]["concept"] == "Watercolor+Pop_Art" and len(config["request"]["forget_prompts"]) == 20
    assert not any("Watercolor" in p or "Pop_Art" in p for p in config["request"]["retain_prompts"])
    card = (out / "joint" / "pipeline" / "README.md").read_text()
    assert (
        card.startswith("---\nlibrary_name: diffusers\n")
        and 'erased_concepts: ["Watercolor+Pop_Art"]' in card
        and "- uce" in card
    )
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.from_pretrained(str(out / "joint" / "pipeline"))  # a plain diffusers folder


def test_eval_summary_and_heatmap(tmp_path, concepts, capsys):
    out = tmp_path / "out"
    assert main(batch_args(concepts, out, "--eval", "--eval-seeds", "1")) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert [r["concept"] for r in summary["rows"]] == ["Watercolor", "Pop_Art"]
    m = summary["rows"][0]["metrics"]
    assert {"ua", "ira", "cra", "worst_kept", "retained_psnr", "fid", "accuracy"} <= set(m) and m[
        "retained_psnr"
    ] < 100
    assert (out / "heatmap.png").stat().st_size > 1000 and "| Watercolor |" in (out / "summary.md").read_text()


def test_eval_with_an_attack_puts_its_success_rate_in_the_summary_and_heatmap(tmp_path, concepts, capsys):
    out = tmp_path / "out"
    argv = batch_args(
        concepts,
        out,
        "--eval",
        "--eval-seeds",
        "1",
        "--attack",
        "embedding",
        "--attack-prompts",
        "1",
        "--attack-set",
        "blocks=1",
        "--attack-set",
        "iters=2",
    )
    assert main(argv) == 0, capsys.readouterr().err
    rows = json.loads((out / "summary.json").read_text())["rows"]
    for r in rows:
        a = r["metrics"]["attack"]
        assert a["name"] == "embedding" and a["prompts"] == 1 and 0 <= a["asr"] <= 1
        assert (out / r["concept"] / "eval" / f"attack-embedding-style-{r['concept']}" / "attack.json").is_file()
    assert "ASR (embedding, confirmed)" in (out / "summary.md").read_text()


def test_attack_without_eval_is_refused(tmp_path, concepts, capsys):
    refused(batch_args(concepts, tmp_path / "out", "--attack", "embedding"), capsys, "--attack needs --eval")


def test_eval_on_a_latent_seeded_protocol_is_refused_before_anything_is_written(tmp_path, capsys):
    """A batch sums up UA / IRA / CRA; faces-mini's reports have none, so --eval is refused, naming erase eval."""
    from worlds.faces_mini.assets import GENERATOR_DIR

    names = tmp_path / "attributes.txt"
    names.write_text("eyeglasses\n")
    argv = batch_args(names, tmp_path / "out", "--eval", "--protocol", "faces-mini", method="text_to_unlearn")
    argv[argv.index("--model") + 1], argv[argv.index("--kind") + 1] = str(GENERATOR_DIR), "attribute"
    refused(argv, capsys, "evaluate each patch with erase eval --protocol faces-mini")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_two_processes_give_the_same_patches_as_one(tmp_path, concepts):
    """`accelerate launch --multi_gpu --num_processes 2 -m erase batch` on CPU (two gloo
    processes, each half the concepts)."""
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert main(batch_args(concepts, one)) == 0
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "erase",
        *batch_args(concepts, two),
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    for c in ("Watercolor", "Pop_Art"):
        assert (one / c / "erasure_patch.safetensors").read_bytes() == (
            two / c / "erasure_patch.safetensors"
        ).read_bytes(), c
    assert [json.loads(x)["sha256"] for x in (one / "manifest.jsonl").read_text().splitlines()] == [
        json.loads(x)["sha256"] for x in (two / "manifest.jsonl").read_text().splitlines()
    ]


@pytest.mark.slow
def test_killed_three_times_then_resumed_matches_an_uninterrupted_batch(tmp_path):
    """A 4-style Concept Ablation batch (short runs with checkpoints), SIGKILLed three times and resumed each time,
    ends with the same manifest (times aside) and byte-identical patches as a batch that ran straight through. Each
    kill comes on an event, never after a delay: the k-th job's checkpoint reaching a random step (10 or 20 of 30)."""
    import random
    import signal
    import time

    styles = ["Watercolor", "Pop_Art", "Rust", "Mosaic"]
    concepts = tmp_path / "styles.txt"
    concepts.write_text("".join(s + "\n" for s in styles))
    quick = [
        "--preset",
        "canvas-mini",
        "--steps",
        "30",
        "--set",
        "checkpoint_every=10",
        "--set",
        "anchor_seeds=1",
        "--set",
        "data_steps=5",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cli(out, *extra):
        return [
            sys.executable,
            "-m",
            "erase",
            *batch_args(concepts, out, *quick, *extra, method="concept_ablation"),
            "--threads",
            "1",
        ]

    def step_of(job):
        try:
            return json.loads((killed / styles[job] / "checkpoint" / "meta.json").read_text())["step"]
        except (OSError, ValueError, KeyError):
            return 0

    straight = tmp_path / "straight"
    subprocess.run(cli(straight), env=env, check=True, capture_output=True, timeout=900)
    killed = tmp_path / "killed"
    rng = random.Random(0)
    for job in range(3):
        step = rng.choice([10, 20])
        proc = subprocess.Popen(
            cli(killed, *(["--resume"] if job else [])), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        while step_of(job) < step:  # the event: job `job` has checkpointed at `step`
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = (killed / "manifest.jsonl").read_text().count("\n") if (killed / "manifest.jsonl").exists() else 0
        assert done == job and not (killed / styles[job] / "erasure_patch.safetensors").exists()
    subprocess.run(cli(killed, "--resume"), env=env, check=True, capture_output=True, timeout=900)

    def timeless(folder):
        return [
            {k: v for k, v in json.loads(line).items() if "seconds" not in k and k != "mtime_ns"}
            for line in (folder / "manifest.jsonl").read_text().splitlines()
        ]

    assert timeless(killed) == timeless(straight) and len(timeless(straight)) == 4
    for c in ("Watercolor", "Pop_Art", "Rust", "Mosaic"):
        assert (killed / c / "erasure_patch.safetensors").read_bytes() == (
            straight / c / "erasure_patch.safetensors"
        ).read_bytes(), c
