"""Attack success on canvas-mini: the original model and every diffusion method's erasure under each attack.

    python -m bench.attacks --targets style:Watercolor --attacks unlearndiffatk,embedding --prompts 10

For each target, each method erases it with its ``canvas-mini`` preset (patches kept under ``--out``), then each
attack runs on the erased model (and on the original) with the attack's default budget on the first N prompts
of the target (seed-major: every object at seed 0 first). Every job is resumable: a finished attack or patch
is reused, an interrupted attack continues from its checkpoint. Writes bench/results/attacks.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = "assets/canvas-mini/pipeline"  # as the user types it: run.json keeps paths relative to the repository
METHODS = ["uce", "rece", "concept_ablation", "doco", "esd", "salun"]


def erase_once(pipe, protocol, method: str, target: str, kind: str, folder: Path, preset: str = "canvas-mini"):
    from erase.api import erase_concept
    from erase.core.patch import ErasurePatch
    from erase.core.request import EraseRequest
    from worlds.canvas_mini import PIPELINE_DIR

    if (folder / "erasure_patch.safetensors").is_file():
        return ErasurePatch.from_pretrained(folder)
    request = EraseRequest.from_protocol(protocol, target, kind)
    return erase_concept(
        pipe,
        method,
        request,
        folder,
        preset=preset,
        progress=False,
        model_id=str(PIPELINE_DIR),
        resume=folder.exists(),
    )


def attack_once(
    pipe,
    protocol,
    judges,
    attack: str,
    target: str,
    kind: str,
    folder: Path,
    prompts: int,
    patch: str | None,
    overrides: dict | None = None,
) -> dict:
    from eval.attacks import make_attack
    from eval.attacks.run import AttackOptions, attack_identity, attack_task, run_attack

    options = AttackOptions(prompts=prompts, progress=False)
    task = attack_task(protocol, target, kind, judges, options)
    made = make_attack(attack, overrides)
    identity = attack_identity(MODEL, patch, protocol, target, kind, made, options)
    return run_attack(pipe, task, made, folder, identity=identity, resume=True, options=options)


def row(method: str, target: str, kind: str, r: dict) -> dict:
    keep = (
        "attack",
        "prompts",
        "pre_attack_rate",
        "asr",
        "confirmed_asr",
        "new_successes",
        "attacked_prompts",
        "queries_to_success",
        "steps_to_success",
        "seconds",
        "seconds_per_prompt",
        "budget",
    )
    return {
        "method": method,
        "target": target,
        "kind": kind,
        **{k: r[k] for k in keep},
        "mean_queries": r["judge_queries"]["mean_per_attacked_prompt"],
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| method | target | attack | prompts | pre-attack | ASR | confirmed ASR | queries to success | s / prompt |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        q = "-" if r["queries_to_success"] is None else f"{r['queries_to_success']:.1f}"
        c = "-" if r["confirmed_asr"] is None else f"{100 * r['confirmed_asr']:.0f}%"
        lines.append(
            f"| {r['method']} | {r['target']} | {r['attack']} | {r['prompts']} | {100 * r['pre_attack_rate']:.0f}% | "
            f"{100 * r['asr']:.0f}% | {c} | {q} | {r['seconds_per_prompt']:.1f} |"
        )
    b = rows[0]["budget"] if rows else {}
    lines += [
        "",
        f"Budget per prompt (default): {b.get('blocks')} timesteps x {b.get('steps_per_block')} Adam steps, one "
        f"judged generation after each timestep (at most {b.get('max_judge_queries')} judge queries), plus one "
        "pre-attack generation. ASR is best-of-the-queries at the prompt's own seed (upstream's rule); confirmed ASR "
        "counts a success only when its prompt is judged as the target on at least half of 4 fresh seeds.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="style:Watercolor")
    p.add_argument("--attacks", default="unlearndiffatk,embedding")
    p.add_argument("--methods", default=",".join(["original", *METHODS]))
    p.add_argument("--prompts", type=int, default=10)
    p.add_argument("--out", default="runs/bench-attacks")
    p.add_argument("--results", default=str(ROOT / "bench" / "results" / "attacks"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from erase.core.patch import apply_patch, remove_patch
    from eval.classifiers import load_judges
    from eval.protocols import load_protocol
    from pipelines.stable_diffusion import load_pipeline
    from worlds.canvas_mini import PIPELINE_DIR

    protocol = load_protocol("canvas-mini")
    judges = load_judges(protocol)
    pipe = load_pipeline(PIPELINE_DIR)
    pipe.set_progress_bar_config(disable=True)
    out = Path(args.out)
    rows, started = [], time.time()
    for spec in args.targets.split(","):
        kind, target = spec.split(":")
        for method in args.methods.split(","):
            patch = None
            if method != "original":
                folder = out / "patches" / f"{method}-{kind}-{target}"
                apply_patch(pipe, erase_once(pipe, protocol, method, target, kind, folder))
                patch = str(folder)
            try:
                for attack in args.attacks.split(","):
                    r = attack_once(
                        pipe,
                        protocol,
                        judges,
                        attack,
                        target,
                        kind,
                        out / f"{method}-{kind}-{target}-{attack}",
                        args.prompts,
                        patch,
                    )
                    rows.append(row(method, target, kind, r))
                    print(
                        f"{method:>16s} {target} {attack:>15s}: pre {100 * r['pre_attack_rate']:5.1f}%  ASR "
                        f"{100 * r['asr']:5.1f}%  confirmed {100 * (r['confirmed_asr'] or 0):5.1f}%  "
                        f"{r['seconds_per_prompt']:.1f} s/prompt",
                        flush=True,
                    )
            finally:
                remove_patch(pipe)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    (results.with_suffix(".json")).write_text(
        json.dumps({"rows": rows, "wall_seconds": round(time.time() - started, 1), "threads": args.threads}, indent=2)
    )
    (results.with_suffix(".md")).write_text(markdown(rows))
    picture = out / "uce-style-Watercolor-embedding" / "grid.png"  # the README's picture of successful attacks
    if picture.is_file():
        shutil.copyfile(picture, results.parent / "attack-uce-embedding.png")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
