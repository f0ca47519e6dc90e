"""Erasure acceptance runs on canvas-mini: erase several targets, evaluate each, compare to the original.

    python -m bench.acceptance --method salun --preset canvas-mini \
        --targets style:Watercolor,style:Pop_Art,style:Rust,object:Birds,object:Towers [--set retain_loss=diffusion]

Writes runs/acceptance/<name>/summary.json and prints UA / IRA / CRA per target with the change (in points)
against the original model, the time, peak memory and patch size of each erasure, and the retained concept
that suffered most (an average can hide one concept that lost half its accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from erase.core.locations import templates_dir

DEFAULT_TARGETS = "style:Watercolor,style:Pop_Art,style:Rust,object:Birds,object:Towers"


OOD_TEMPLATES = templates_dir() / "canvas-mini-ood.txt"


def ood_scores(
    pipe, protocol, targets: list[tuple[str, str]], out: Path, model_id: str, patch: str | None, seeds: int
) -> dict:
    """{(target, kind): UA / IRA / CRA averaged over the shipped paraphrase templates}
    (first ``seeds`` protocol seeds)."""
    from eval.protocols import load_templates
    from eval.report import EvalOptions, evaluate_templates

    sub = protocol.with_overrides(seeds=protocol.seeds[:seeds])
    opts = EvalOptions(progress=False, grid=False, fid=False)
    mean = evaluate_templates(
        pipe, sub, targets, out, load_templates(OOD_TEMPLATES, sub), model_id=model_id, patch=patch, options=opts
    )["mean"]
    return {(t["target"], t["kind"]): {k: t[k] for k in ("ua", "ira", "cra")} for t in mean["targets"]}


def run_acceptance(
    method: str,
    targets: list[tuple[str, str]],
    out: Path,
    preset: str | None,
    overrides: dict,
    seeds: int | None = None,
    progress: bool = False,
    ood_seeds: int = 0,
) -> dict:
    from erase.api import erase_concept
    from erase.core.request import EraseRequest
    from eval.protocols import load_protocol
    from eval.report import EvalOptions, evaluate
    from pipelines.stable_diffusion import apply_patch, load_pipeline, remove_patch
    from worlds.canvas_mini import PIPELINE_DIR

    protocol = load_protocol("canvas-mini")
    if seeds:
        protocol = protocol.with_overrides(seeds=protocol.seeds[:seeds])
    pipe = load_pipeline(PIPELINE_DIR)
    opts = EvalOptions(progress=progress, grid=False)
    base = evaluate(pipe, protocol, targets, out / "original", model_id=str(PIPELINE_DIR), options=opts)
    base_by = {(t["target"], t["kind"]): t for t in base["targets"]}
    base_ood = (
        ood_scores(pipe, protocol, targets, out / "original-ood", str(PIPELINE_DIR), None, ood_seeds)
        if ood_seeds
        else {}
    )
    rows = []
    for name, kind in targets:
        folder = out / f"{kind}-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        request = EraseRequest.from_protocol(protocol, name, kind)
        patch = erase_concept(
            pipe,
            method,
            request,
            folder / "patch",
            preset=preset,
            overrides=overrides,
            progress=progress,
            model_id=str(PIPELINE_DIR),
        )
        apply_patch(pipe, patch)
        r = evaluate(
            pipe,
            protocol,
            [(name, kind)],
            folder / "eval",
            model_id=str(PIPELINE_DIR),
            patch=str(folder / "patch"),
            options=opts,
        )
        ood = (
            ood_scores(
                pipe, protocol, [(name, kind)], folder / "ood", str(PIPELINE_DIR), str(folder / "patch"), ood_seeds
            )[(name, kind)]
            if ood_seeds
            else None
        )
        remove_patch(pipe)
        b = base_by[(name, kind)]
        eff = patch.config["efficiency"]
        kept = {c: v["accuracy"] for c, v in r["per_concept"][kind].items() if c not in (name, protocol.photo_class)}
        worst = min(kept, key=kept.get)
        rows.append(
            {
                "target": name,
                "kind": kind,
                "anchor": request.anchor,
                "ua": r["ua"],
                "ira": r["ira"],
                "cra": r["cra"],
                "base_ua": b["ua"],
                "base_ira": b["ira"],
                "base_cra": b["cra"],
                "d_ira_points": 100 * (r["ira"] - b["ira"]),
                "d_cra_points": 100 * (r["cra"] - b["cra"]),
                "worst_retained": {"concept": worst, "accuracy": kept[worst]},
                "retained_psnr": r["retain_fidelity"]["psnr"],
                "retained_perceptual": r["retain_fidelity"]["perceptual"],
                "retain_fidelity": {
                    k: r["retain_fidelity"][k] for k in ("in_domain", "cross_domain", "identical", "n")
                },
                "confidence": r["confidence"],
                "base_confidence": b["confidence"],
                "worst_fidelity": min(
                    (
                        {"concept": c, **v}
                        for cs in r["retain_fidelity"]["per_concept"].values()
                        for c, v in cs.items()
                    ),
                    key=lambda v: v["psnr"],
                ),
                "ood": ood,
                "base_ood": base_ood.get((name, kind)),
                "fid": r["fid"]["value"],
                "base_fid": b["fid"]["value"],
                "clip_score": r["clip_score"]["value"],
                "fid_clip": r["fid_clip"]["value"],
                "base_fid_clip": b["fid_clip"]["value"],
                "seconds": eff["erase_seconds"],
                "peak_memory_bytes": eff["peak_memory_bytes"],
                "patch_bytes": eff["patch_bytes"],
            }
        )
    summary = {
        "method": method,
        "preset": preset,
        "overrides": overrides,
        "protocol": protocol.to_dict(),
        "ood_seeds": ood_seeds,
        "rows": rows,
    }
    for kind in ("style", "object"):
        rs = [r for r in rows if r["kind"] == kind]
        if rs:
            summary[f"{kind}_mean"] = {
                k: sum(r[k] for r in rs) / len(rs)
                for k in ("ua", "ira", "cra", "d_ira_points", "d_cra_points", "retained_psnr", "retained_perceptual")
            }
            if ood_seeds:
                summary[f"{kind}_mean"]["ood_ua"] = sum(r["ood"]["ua"] for r in rs) / len(rs)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(s: dict) -> str:
    lines = [
        f"{s['method']} preset={s['preset']} overrides={s['overrides']}",
        f"{'target':>16s} {'kind':6s} {'UA':>6s} {'IRA':>6s} {'dIRA':>6s} {'CRA':>6s} {'dCRA':>6s} {'PSNR':>5s} "
        f"{'perc':>6s} {'FID':>7s} {'sec':>5s} {'MB':>5s}  worst kept (accuracy; PSNR)",
    ]
    for r in s["rows"]:
        lines.append(
            f"{r['target']:>16s} {r['kind']:6s} {100 * r['ua']:6.1f} {100 * r['ira']:6.1f} {r['d_ira_points']:+6.1f} "
            f"{100 * r['cra']:6.1f} {r['d_cra_points']:+6.1f} {r['retained_psnr']:5.1f} "
            f"{r['retained_perceptual']:6.3f} {r['fid']:7.2f} {r['seconds']:5.0f} {r['patch_bytes'] / 1e6:5.2f}  "
            f"{r['worst_retained']['concept']} {100 * r['worst_retained']['accuracy']:.0f}; "
            f"{r['worst_fidelity']['concept']} {r['worst_fidelity']['psnr']:.1f} dB"
        )
        if r.get("ood"):
            lines.append(
                f"{'':>16s} OOD (mean of the templates): UA {100 * r['ood']['ua']:.1f} IRA "
                f"{100 * r['ood']['ira']:.1f} CRA {100 * r['ood']['cra']:.1f} (original UA "
                f"{100 * r['base_ood']['ua']:.1f})"
            )
    for kind in ("style", "object"):
        m = s.get(f"{kind}_mean")
        if m:
            lines.append(
                f"{'mean ' + kind:>16s} {'':6s} {100 * m['ua']:6.1f} {100 * m['ira']:6.1f} {m['d_ira_points']:+6.1f} "
                f"{100 * m['cra']:6.1f} {m['d_cra_points']:+6.1f} {m['retained_psnr']:5.1f} "
                f"{m['retained_perceptual']:6.3f}" + (f"  OOD UA {100 * m['ood_ua']:.1f}" if "ood_ua" in m else "")
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    from erase.cli.erasing import _parse_set

    p = argparse.ArgumentParser(description="canvas-mini erasure acceptance runs")
    p.add_argument("--method", default="salun")
    p.add_argument("--preset", default="canvas-mini", help="a preset name, or 'none' for the method's defaults")
    p.add_argument("--targets", default=DEFAULT_TARGETS, help="comma-separated kind:name")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--seeds", type=int, default=None, help="fewer evaluation seeds (quick sweeps only)")
    p.add_argument(
        "--ood-seeds", type=int, default=0, help="also evaluate the shipped OOD templates with this many seeds"
    )
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    targets = [(t.split(":", 1)[1], t.split(":", 1)[0]) for t in args.targets.split(",")]
    overrides = _parse_set(args.set)
    tag = "-".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "default"
    out = Path(args.out or f"runs/acceptance/{args.method}-{args.preset}-{tag}")
    preset = None if args.preset.lower() == "none" else args.preset
    s = run_acceptance(args.method, targets, out, preset, overrides, args.seeds, ood_seeds=args.ood_seeds)
    print(format_summary(s))
    print(f"summary: {out / 'summary.json'}")


if __name__ == "__main__":
    main()
