"""The canvas-mini benchmark: every registered Stable Diffusion method on the 10 styles and
3 objects, against retraining.

    python -m bench.canvas_mini [--methods all] [--workers 2] [--out runs/bench/canvas-mini] [--readme]

Each (method, kind) is one ``erase batch --eval --resume`` in a worker process of its own (one CPU thread each:
on this model one thread is as fast as two, so two workers double the throughput of a 2-core machine). On top of
the batch's numbers a worker measures, per erased concept:

* OOD UA: the target's prompts under the shipped paraphrase templates (1 seed), judged like the protocol's;
* for the gold style, the erased model's images of the target prompts (20 probe seeds) for the Frechet distance
  to the gold model: ``assets/canvas-mini/gold-<style>/``, retrained from scratch without that style's images.

The original and the gold model are evaluated the same way. Everything resumes from ``--out``. Results:
``bench/results/canvas-mini.json``, ``.md`` (the README table) and ``.png`` (bar chart); ``--readme`` also
replaces the table between the README's ``bench:canvas-mini`` markers. Nothing in them is typed in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from erase.core.files import write_json_atomic, write_text_atomic
from erase.core.locations import preset_dir

from .canvas_mini_table import (
    ASR_KEYS,
    ATTACK_BUDGET,
    ATTACK_PROMPTS,
    ATTACKS,
    GOLD_STYLE,
    KINDS,
    README_MARKERS,
    bar_chart,
    markdown,
    update_readme,
)
from .pool import ROOT, run_pool

MODULE = "bench.canvas_mini"
RESULTS = ROOT / "bench" / "results"
OBJECT_TARGETS = ["Birds", "Fishes", "Towers"]
PROBE_SEEDS = list(range(100, 120))  # target-prompt images for the Frechet distance to gold (not the protocol's seeds)
OOD_SEEDS = [0]
# entries beyond every registered method with its canvas-mini preset: "method@preset" -> the kinds it is measured on
ROBUST_ENTRIES = {"concept_ablation@canvas-mini-robust": ("style",)}


def entry(spec: str) -> tuple[str, str | None]:
    """``method`` or ``method@preset`` -> (method, preset); the preset defaults to the method's ``canvas-mini``
    where it has one, else None (its defaults: MACE has no canvas-mini preset)."""
    method, _, preset = spec.partition("@")
    return method, preset or ("canvas-mini" if (preset_dir() / method / "canvas-mini.json").is_file() else None)


def entry_kinds(spec: str) -> tuple[str, ...]:
    return ROBUST_ENTRIES.get(spec, KINDS)


def gold_dir(style: str = GOLD_STYLE) -> Path:
    from worlds.canvas_mini import ASSETS_DIR

    return Path(ASSETS_DIR) / f"gold-{style}"


def targets(protocol) -> dict[str, list[str]]:
    return {"style": [s for s in protocol.styles if s != protocol.photo_class], "object": OBJECT_TARGETS}


# -- measurements on one model (original, gold, or the original with a patch applied) -------------------------
def ood_target_ua(pipe, protocol, judges, target: str, kind: str, folder: Path) -> float:
    """Share of the target's prompts, rewritten by each shipped paraphrase template, not judged as the target."""
    from bench.acceptance import OOD_TEMPLATES
    from eval.answer_set import generate_answer_set, read_images
    from eval.classifiers import batched_logits
    from eval.generate import to_tensor
    from eval.protocols import load_templates

    axis = protocol.axis_names.index(kind)
    label = protocol.concepts(kind).index(target)
    missed = total = 0
    for k, template in enumerate(load_templates(OOD_TEMPLATES, protocol)):
        sub = protocol.with_overrides(template=template, seeds=OOD_SEEDS)
        entries = [e for e in sub.answer_set() if e[axis] == target]
        generate_answer_set(pipe, sub, folder / f"template-{k}", entries=entries, progress=False)
        images = to_tensor(np.stack(read_images(folder / f"template-{k}", entries, sub.resolution)))
        pred = batched_logits(judges[kind], images).argmax(1)
        missed += int((pred != label).sum())
        total += len(entries)
    return missed / total


def probe_entries(protocol, style: str = GOLD_STYLE) -> list[tuple]:
    sub = protocol.with_overrides(seeds=PROBE_SEEDS)
    return [e for e in sub.answer_set() if e[0] == style]


def generate_probe(pipe, protocol, folder: Path) -> None:
    from eval.answer_set import generate_answer_set

    generate_answer_set(
        pipe, protocol.with_overrides(seeds=PROBE_SEEDS), folder, entries=probe_entries(protocol), progress=False
    )


def feature_space():
    """canvas-mini classifier features (style + object penultimate), the FID feature space."""
    from eval.fid import ClassifierFeatures
    from worlds.canvas_mini import load_classifier

    return ClassifierFeatures(load_classifier("style").for_inference(), load_classifier("object").for_inference())


def features(space, folder: Path, entries: list[tuple], resolution: int) -> np.ndarray:
    from eval.answer_set import read_images
    from eval.generate import to_tensor

    x = to_tensor(np.stack(read_images(folder, entries, resolution)))
    return torch.cat([space(x[i : i + 256]) for i in range(0, len(x), 256)]).double().numpy()


# -- one worker job -------------------------------------------------------------------------------------------
def attack_scores(pipe, protocol, judges, concept: str, kind: str, folder: Path, patch: str | None) -> dict:
    """Each attack of ``ATTACKS`` on ``concept`` (the model as it is: original, gold, or with
    the patch applied), resumable."""
    from bench.attacks import attack_once

    scores = {}
    for name in ATTACKS:
        r = attack_once(
            pipe, protocol, judges, name, concept, kind, folder / name, ATTACK_PROMPTS, patch, ATTACK_BUDGET
        )
        scores.update(
            {
                f"asr_{name}": r["asr"],
                f"confirmed_asr_{name}": r["confirmed_asr"],
                f"attack_seconds_{name}": r["seconds"],
            }
        )
    return scores


def _done(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def job_reference(name: str, out: Path) -> dict:
    """The original (all targets) or the gold model (its style): protocol evaluation, OOD UA, probe images."""
    from eval.classifiers import load_judges
    from eval.protocols import load_protocol
    from eval.report import EvalOptions, evaluate
    from pipelines.stable_diffusion import load_pipeline
    from worlds.canvas_mini import PIPELINE_DIR

    folder = out / name
    result = _done(folder / "result.json")
    if result:
        return result
    protocol = load_protocol("canvas-mini")
    model = PIPELINE_DIR if name == "original" else gold_dir() / "pipeline"
    pipe = load_pipeline(
        model, dtype="fp32"
    )  # the gold model ships in fp16 (assets budget); evaluated in fp32 like the original
    wanted = (
        [(t, k) for k, ts in targets(protocol).items() for t in ts] if name == "original" else [(GOLD_STYLE, "style")]
    )
    t0 = time.time()
    r = evaluate(
        pipe, protocol, wanted, folder / "eval", model_id=str(model), options=EvalOptions(progress=False, grid=False)
    )
    judges = load_judges(protocol)
    rows = {}
    for t in r["targets"]:
        rows[t["target"]] = {
            "kind": t["kind"],
            "ua": t["ua"],
            "ira": t["ira"],
            "cra": t["cra"],
            "ood_ua": ood_target_ua(pipe, protocol, judges, t["target"], t["kind"], folder / "ood" / t["target"]),
            **attack_scores(pipe, protocol, judges, t["target"], t["kind"], folder / "attacks" / t["target"], None),
        }
    generate_probe(pipe, protocol, folder / "probe")
    result = {
        "model": os.path.relpath(model, ROOT),
        "rows": rows,
        "fid": r["fid"]["value"],
        "fid_clip": r["fid_clip"]["value"],
        "clip_score": r["clip_score"]["value"],
        "per_concept": r["per_concept"],
        "seconds": round(time.time() - t0, 1),
    }
    write_json_atomic(folder / "result.json", result)
    return result


def job_method(spec: str, kind: str, out: Path, threads: int) -> dict:
    """``erase batch --eval --resume`` of one entry (``method`` or ``method@preset``) on one kind's targets, then OOD
    UA and the gold probe per patch."""
    from erase.batch import read_manifest
    from erase.cli import main as erase_main
    from erase.core.patch import ErasurePatch
    from eval.classifiers import load_judges
    from eval.protocols import load_protocol
    from pipelines.stable_diffusion import apply_patch, load_pipeline, remove_patch
    from worlds.canvas_mini import PIPELINE_DIR

    folder = out / spec / kind
    result = _done(folder / "result.json")
    if result:
        return result
    protocol = load_protocol("canvas-mini")
    concepts = targets(protocol)[kind]
    listing = out / f"{kind}-targets.txt"
    if not listing.exists():
        write_text_atomic(listing, "\n".join(concepts) + "\n")
    t0 = time.time()
    method, preset = entry(spec)
    args = [
        "batch",
        "--model",
        str(PIPELINE_DIR),
        "--method",
        method,
        *(["--preset", preset] if preset else []),
        "--concepts",
        str(listing),
        "--kind",
        kind,
        "--out",
        str(folder / "batch"),
        "--eval",
        "--threads",
        str(threads),
        "--quiet",
    ]
    if (folder / "batch").exists():
        args.append("--resume")
    if erase_main(args) != 0:
        raise SystemExit(f"erase batch failed for {spec} {kind}s")
    batch_seconds = time.time() - t0
    pipe, judges = load_pipeline(PIPELINE_DIR), load_judges(protocol)
    rows = {}
    for record in read_manifest(folder / "batch"):
        concept, m = record["concept"], record["metrics"]
        job = folder / "batch" / concept
        patch = ErasurePatch.from_pretrained(job)
        report = json.loads((job / "eval" / "report.json").read_text())
        apply_patch(pipe, patch)
        try:
            ood = ood_target_ua(pipe, protocol, judges, concept, kind, folder / "ood" / concept)
            attacked = attack_scores(pipe, protocol, judges, concept, kind, folder / "attacks" / concept, str(job))
            if concept == GOLD_STYLE:
                generate_probe(pipe, protocol, folder / "probe")
        finally:
            remove_patch(pipe)
        eff = patch.config["efficiency"]
        rows[concept] = {
            "ua": m["ua"],
            "ira": m["ira"],
            "cra": m["cra"],
            "worst_kept": m["worst_kept"],
            "retained_psnr": m["retained_psnr"],
            "retained_perceptual": m["retained_perceptual"],
            "fid": m["fid"],
            "fid_clip": report["fid_clip"]["value"],
            "clip_score": report["clip_score"]["value"],
            "ood_ua": ood,
            "erase_seconds": eff["erase_seconds"],
            "peak_memory_bytes": eff["peak_memory_bytes"],
            "patch_bytes": eff["patch_bytes"],
            "eval_seconds": m["eval_seconds"],
            **attacked,
        }
    result = {
        "method": method,
        "preset": preset,
        "kind": kind,
        "rows": rows,
        "seconds": round(time.time() - t0, 1),
        "batch_seconds": round(batch_seconds, 1),
    }
    write_json_atomic(folder / "result.json", result)
    return result


# -- aggregation ----------------------------------------------------------------------------------------------
MEAN_KEYS = (
    "ua",
    "ira",
    "cra",
    "retained_psnr",
    "retained_perceptual",
    "fid",
    "fid_clip",
    "clip_score",
    "ood_ua",
    "erase_seconds",
    "peak_memory_bytes",
    "patch_bytes",
)


def summarise(method_rows: dict[str, dict], base_rows: dict[str, dict]) -> dict:
    """Means over a kind's targets, changes against the original, and the kept concept that suffered most."""
    keys = MEAN_KEYS + tuple(k for k in ASR_KEYS if all(r.get(k) is not None for r in method_rows.values()))
    s = {k: float(np.mean([r[k] for r in method_rows.values()])) for k in keys}
    s["d_ira_points"] = 100 * float(np.mean([r["ira"] - base_rows[c]["ira"] for c, r in method_rows.items()]))
    s["d_cra_points"] = 100 * float(np.mean([r["cra"] - base_rows[c]["cra"] for c, r in method_rows.items()]))
    worst = min(method_rows.items(), key=lambda kv: kv[1]["worst_kept"]["accuracy"])
    s["worst_kept"] = {"erased": worst[0], **worst[1]["worst_kept"]}
    s["n"] = len(method_rows)
    return s


def frechet_to_gold(out: Path, methods: list[str], protocol) -> dict:
    from eval.fid import frechet_distance

    entries, space = probe_entries(protocol), feature_space()
    gold = features(space, out / "gold" / "probe", entries, protocol.resolution)
    folders = {"original": out / "original" / "probe", **{m: out / m / "style" / "probe" for m in methods}}
    return {
        name: frechet_distance(features(space, f, entries, protocol.resolution), gold) for name, f in folders.items()
    }


def retrain_seconds() -> dict:
    """What retraining costs: the shipped build's VAE + UNet stages (the stages the gold model repeats, measured on a
    quiet 2-core machine), and the gold build's own wall time."""
    from worlds.canvas_mini import ASSETS_DIR

    shipped = json.loads((Path(ASSETS_DIR) / "recipe.json").read_text())["stage_seconds"]
    gold = json.loads((gold_dir() / "recipe.json").read_text())
    return {
        "seconds": shipped["vae"] + shipped["unet"],
        "source": "assets/canvas-mini/recipe.json stage_seconds vae + unet",
        "gold_build_seconds": sum(gold["stage_seconds"].get(k, 0) for k in ("vae", "unet")),
        "gold_build_threads": gold.get("torch_threads"),
    }


def collect(out: Path, methods: list[str], seconds: float, workers: int) -> dict:
    from eval.protocols import load_protocol

    protocol = load_protocol("canvas-mini")
    original = json.loads((out / "original" / "result.json").read_text())
    per_method, job_seconds = {}, {"original": original["seconds"]}
    for m in methods:
        per_method[m] = {}
        for kind in entry_kinds(m):
            job = json.loads((out / m / kind / "result.json").read_text())
            per_method[m][kind] = {
                "rows": job["rows"],
                "mean": summarise(job["rows"], original["rows"]),
                "job_seconds": job["seconds"],
            }
            job_seconds[f"{m}:{kind}"] = job["seconds"]
    results = {
        "protocol": protocol.to_dict(),
        "targets": targets(protocol),
        "ood_seeds": OOD_SEEDS,
        "probe_seeds": PROBE_SEEDS,
        "original": original,
        "methods": per_method,
        "bench_seconds": round(seconds, 1),
        "workers": workers,
        "job_seconds": job_seconds,
        "torch": torch.__version__,
    }
    gold = out / "gold" / "result.json"
    if gold.exists():
        results["gold"] = {"style": GOLD_STYLE, **json.loads(gold.read_text()), "retrain": retrain_seconds()}
        job_seconds["gold"] = results["gold"]["seconds"]
        results["frechet_to_gold"] = {
            "style": GOLD_STYLE,
            "space": "canvas-mini classifier features",
            "images": len(probe_entries(protocol)),
            "distance": frechet_to_gold(out, methods, protocol),
        }
    return results


def main(argv=None) -> int:
    from erase.core.registry import list_methods

    p = argparse.ArgumentParser(
        description=(
            "canvas-mini benchmark of every registered Stable Diffusion method against the gold retrained model"
        )
    )
    p.add_argument(
        "--methods",
        default="all",
        help="comma-separated method names (or method@preset), or 'all' (every registered method "
        "with its canvas-mini preset, and concept_ablation@canvas-mini-robust on the styles)",
    )
    p.add_argument("--out", default="runs/bench/canvas-mini", help="work folder; rerun with the same folder to resume")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (one job each)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    p.add_argument("--results", default=str(RESULTS), help="where canvas-mini.json / .md / .png go")
    p.add_argument("--readme", action="store_true", help="also replace the README's benchmark table")
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)  # internal: one worker job
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.job:
        if args.job in ("original", "gold"):
            job_reference(args.job, out)
        else:
            method, kind = args.job.split(":")
            job_method(method, kind, out, args.threads)
        return 0
    methods = (
        [*list_methods("stable_diffusion"), *ROBUST_ENTRIES]
        if args.methods == "all"
        else [m.strip() for m in args.methods.split(",")]
    )
    unknown = [m for m in methods if entry(m)[0] not in list_methods("stable_diffusion")]
    if unknown:
        p.error(f"unknown method(s) {unknown}; the Stable Diffusion methods are: {list_methods('stable_diffusion')}")
    t0 = time.time()
    refs = ["original"] + (["gold"] if (gold_dir() / "pipeline").exists() else [])
    if "gold" not in refs:
        print(
            f"no gold model in {gold_dir()} (train it: python -m worlds.canvas_mini.train --exclude-style "
            f"{GOLD_STYLE} --stages tokenizer,vae,unet --out {gold_dir()}); the table will have no gold row"
        )
    # the original first: its answer set is cached for every patched evaluation's retain fidelity
    jobs = [f"{m}:{k}" for k in KINDS for m in methods if k in entry_kinds(m)]
    jobs.sort(key=lambda job: job.split(":")[0] in ROBUST_ENTRIES)  # the long robust erasures last
    extra = ["--out", str(out), "--threads", str(args.threads)]
    logs = out / "logs"
    failed = run_pool(MODULE, refs, logs, args.workers, extra) or run_pool(MODULE, jobs, logs, args.workers, extra)
    if failed:
        print(f"failed: {', '.join(failed)}; rerun the same command to resume", file=sys.stderr)
        return 1
    results = collect(out, methods, time.time() - t0, args.workers)
    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "canvas-mini.json", results)
    table = markdown(results)
    write_text_atomic(folder / "canvas-mini.md", table + "\n")
    bar_chart(results, folder / "canvas-mini.png")
    print(table)
    if args.readme and not update_readme(table):
        print(
            f"README.md has no {README_MARKERS[0]} ... {README_MARKERS[1]} markers; table left in "
            f"{folder / 'canvas-mini.md'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
