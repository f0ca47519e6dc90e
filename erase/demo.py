"""``make demo``: erase one style from the shipped canvas-mini model with SalUn and prove it.

    python -m erase.demo [--out demo-out] [--concept Watercolor] [--kind style]

1. evaluate the original model on the canvas-mini protocol,
2. erase the concept with SalUn (preset canvas-mini) into a patch,
3. evaluate the patched model on the same prompts and seeds,
4. write report.md / report.json (original vs erased, efficiency) and an original-vs-erased grid.

The demo owns its output folder: a rerun replaces what an earlier demo wrote there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

# The package imports sit inside the functions: the CLI imports this module to build ``erase demo``'s parser, and
# evaluation at import time would cost every ``erase`` command 3 s (torchmetrics).

MODEL_NAME = "canvas-mini"  # recorded as the model: the shipped pipeline by name, wherever the package lives


def _load_images(folder: Path, styles, objects, seed):
    from PIL import Image

    from eval.answer_set import image_name

    return [[np.asarray(Image.open(folder / image_name(s, o, seed)).convert("RGB")) for o in objects] for s in styles]


def _grid_rows(concept: str, kind: str, fidelity: dict) -> tuple[list[str], list[str]]:
    """Rows of the comparison grid: the target first (for a style), then the retained styles worst PSNR first,
    each labelled with its same-seed PSNR."""
    psnr = {c: v["psnr"] for c, v in fidelity["per_concept"]["style"].items()}
    retained = sorted(psnr, key=psnr.get)
    rows = ([concept] if kind == "style" else []) + retained
    labels = [f"{s} (erased)" if s == concept and kind == "style" else f"{s} {psnr[s]:.1f} dB" for s in rows]
    return rows, labels


def _fidelity_lines(original: dict, erased: dict) -> list[str]:
    """Per retained style: same-seed PSNR / perceptual distance, and the style judge's confidence before and after."""
    f = erased.get("retain_fidelity")
    if not f:
        return []
    before, after = original["per_concept"]["style"], erased["per_concept"]["style"]
    lines = [
        "## What else changed (same prompts, same seeds)",
        "",
        f"Mean over the {f['n']} retained images: PSNR {f['psnr']:.1f} dB, perceptual distance {f['perceptual']:.3f} "
        f"({f['perceptual_space']}). Accuracy can stay at 100% while these move (README: judge validation).",
        "",
        "| retained style | PSNR (dB) | perceptual | accuracy before / after | true-class prob before / after |",
        "|---|---|---|---|---|",
    ]
    rows = sorted(f["per_concept"]["style"].items(), key=lambda kv: kv[1]["psnr"])
    for s, v in rows:
        lines.append(
            f"| {s} | {v['psnr']:.1f} | {v['perceptual']:.3f} | "
            f"{100 * before[s]['accuracy']:.0f} / {100 * after[s]['accuracy']:.0f} | "
            f"{before[s]['true_prob']:.3f} / {after[s]['true_prob']:.3f} |"
        )
    return lines + [""]


def _row(name: str, r: dict) -> str:
    def pct(x):
        return f"{100 * x:.1f}"

    fid, fid_clip, clip = r.get("fid"), r.get("fid_clip"), r.get("clip_score")
    sim = r["targets"][0].get("concept_similarity", {})
    fidelity = r.get("retain_fidelity")
    kept = f"{fidelity['psnr']:.1f} dB" if fidelity else "(reference)"
    return (
        f"| {name} | {pct(r['ua'])} | {pct(r['ira'])} | {pct(r['cra'])} | {pct(r['style_accuracy'])} | "
        f"{pct(r['object_accuracy'])} | {fid['value']:.2f} | {fid_clip['value']:.3f} | {clip['value']:.2f} | "
        f"{sim.get('target_images', float('nan')):.3f} | {kept} |"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's options: ``python -m erase.demo`` and ``erase demo`` take the same ones."""
    p.add_argument(
        "--out", default="demo-out", help="output folder (the demo owns it: a rerun replaces what it wrote there)"
    )
    p.add_argument("--concept", default="Watercolor")
    p.add_argument("--kind", default="style", choices=["style", "object"])
    p.add_argument("--preset", default="canvas-mini")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: the CPUs this process may use)"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="erasekit demo: erase a canvas-mini concept with SalUn and measure it.")
    add_arguments(p)
    return run_demo(p.parse_args(argv))


def run_demo(args) -> int:
    """Evaluate the original, erase with SalUn, evaluate the erased model, write the report
    and the grid; 0 on success."""
    from erase.core.threads import default_threads

    torch.set_num_threads(args.threads or default_threads())

    from erase.api import erase_concept
    from erase.core.errors import EraseError
    from erase.core.request import EraseRequest
    from eval.grid import compare_grid, save_png
    from eval.protocols import load_protocol
    from eval.report import EvalOptions, evaluate
    from pipelines.stable_diffusion import apply_patch, load_pipeline
    from worlds.canvas_mini import PIPELINE_DIR

    out = Path(args.out)
    protocol = load_protocol("canvas-mini")
    try:
        request = EraseRequest.from_protocol(protocol, args.concept, args.kind)
    except EraseError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    pipe = load_pipeline(PIPELINE_DIR)
    targets = [(args.concept, args.kind)]
    print(f"[1/3] evaluating the original canvas-mini model ({len(protocol.answer_set())} images)")
    original = evaluate(pipe, protocol, targets, out / "original", model_id=MODEL_NAME, options=EvalOptions())

    print(f"[2/3] erasing {args.kind} {args.concept!r} with SalUn (preset {args.preset}; anchor {request.anchor!r})")
    patch = erase_concept(
        pipe, "salun", request, out / "patch", preset=args.preset, overwrite=True, model_id=MODEL_NAME
    )

    print("[3/3] evaluating the erased model on the same prompts and seeds")
    shutil.rmtree(out / "erased", ignore_errors=True)  # the demo's own earlier output
    apply_patch(pipe, patch)
    erased = evaluate(
        pipe, protocol, targets, out / "erased", model_id=MODEL_NAME, patch=str(out / "patch"), options=EvalOptions()
    )

    objects = protocol.objects[:5]
    seed = protocol.seeds[0]
    rows, labels = _grid_rows(args.concept, args.kind, erased["retain_fidelity"])
    grid = compare_grid(
        _load_images(out / "original" / "images", rows, objects, seed),
        _load_images(out / "erased" / "images", rows, objects, seed),
        labels,
        objects,
        scale=3,
    )
    save_png(grid, out / "original_vs_erased.png")

    eff = patch.config["efficiency"]
    unet_file = PIPELINE_DIR / "unet" / "diffusion_pytorch_model.safetensors"
    unet_bytes = unet_file.stat().st_size if unet_file.exists() else None
    summary = {
        "concept": args.concept,
        "kind": args.kind,
        "anchor": request.anchor,
        "original": {
            k: original[k]
            for k in (
                "ua",
                "ira",
                "cra",
                "style_accuracy",
                "object_accuracy",
                "fid",
                "fid_clip",
                "clip_score",
                "confidence",
            )
        },
        "erased": {
            k: erased[k]
            for k in (
                "ua",
                "ira",
                "cra",
                "style_accuracy",
                "object_accuracy",
                "fid",
                "fid_clip",
                "clip_score",
                "confidence",
                "retain_fidelity",
            )
        },
        "delta_points": {k: round(100 * (erased[k] - original[k]), 2) for k in ("ua", "ira", "cra")},
        "efficiency": {
            **eff,
            "unet_safetensors_bytes": unet_bytes,
            "patch_fraction_of_unet": round(eff["patch_bytes"] / unet_bytes, 4) if unet_bytes else None,
        },
        "mask_density_by_block": patch.config["info"]["mask"]["density_by_block"],
        "protocol": protocol.name,
        "deviations": original["deviations"],
        "demo_seconds": round(time.time() - t0, 1),
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"# erasekit demo: SalUn erases {args.kind} '{args.concept}' from canvas-mini",
        "",
        f"Protocol canvas-mini ({len(protocol.styles)} styles x {len(protocol.objects)} objects x "
        f"{len(protocol.seeds)} seeds, DDIM {protocol.steps} steps, guidance {protocol.guidance}); judged by the "
        f"shipped classifiers. Anchor: {request.anchor}. FID in the canvas-mini classifier feature space.",
        "",
        "| model | UA | IRA | CRA | style acc | object acc | FID | FID (CLIP) | CLIP score | "
        "CLIP sim. to concept | retained PSNR |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        _row("original", original),
        _row("erased", erased),
        "",
        f"Erasure took {eff['erase_seconds']:.0f} s (peak memory {eff['peak_memory_bytes'] / 2**30:.2f} GiB, "
        f"{eff['peak_memory_kind']}); patch {eff['patch_bytes'] / 1e6:.2f} MB"
        + (f" = {100 * eff['patch_bytes'] / unet_bytes:.0f}% of the UNet's safetensors." if unet_bytes else "."),
        "",
        *_fidelity_lines(original, erased),
        "![original vs erased](original_vs_erased.png)",
        "",
        "Rows: the erased style first, then the retained styles with the most changed first "
        "(same-seed PSNR in the label).",
        "",
        "Full reports: [original](original/report.md), [erased](erased/report.md).",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    print()
    print("\n".join(lines[4:8]))
    print(
        f"\nwrote {out / 'report.md'}, {out / 'report.json'}, {out / 'original_vs_erased.png'} "
        f"in {time.time() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
