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
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _load_images(folder: Path, protocol, objects, seed):
    from PIL import Image

    from eval.answer_set import image_name

    return [[np.asarray(Image.open(folder / image_name(s, o, seed)).convert("RGB")) for o in objects] for s in protocol.styles]


def _row(name: str, r: dict) -> str:
    def pct(x):
        return f"{100 * x:.1f}"

    fid = r.get("fid")
    clip = r.get("clip_score")
    sim = r["targets"][0].get("concept_similarity", {})
    return (f"| {name} | {pct(r['ua'])} | {pct(r['ira'])} | {pct(r['cra'])} | {pct(r['style_accuracy'])} | {pct(r['object_accuracy'])} | "
            f"{fid['value']:.2f} | {clip['value']:.2f} | {sim.get('target_images', float('nan')):.3f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="erasekit demo: erase a canvas-mini concept with SalUn and measure it.")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--concept", default="Watercolor")
    p.add_argument("--kind", default="style", choices=["style", "object"])
    p.add_argument("--preset", default="canvas-mini")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from erase.api import erase_concept
    from erase.errors import EraseError
    from erase.request import EraseRequest
    from eval.canvas_mini import PIPELINE_DIR
    from eval.grid import compare_grid, save_png
    from eval.protocols import load_protocol
    from eval.report import EvalOptions, evaluate
    from pipelines.stable_diffusion import apply_patch, load_pipeline

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
    original = evaluate(pipe, protocol, targets, out / "original", model_id=str(PIPELINE_DIR), options=EvalOptions())

    print(f"[2/3] erasing {args.kind} {args.concept!r} with SalUn (preset {args.preset}; anchor {request.anchor!r})")
    patch = erase_concept(pipe, "salun", request, out / "patch", preset=args.preset, overwrite=True, model_id=str(PIPELINE_DIR))

    print("[3/3] evaluating the erased model on the same prompts and seeds")
    shutil.rmtree(out / "erased", ignore_errors=True)  # the demo's own earlier output
    apply_patch(pipe, patch)
    erased = evaluate(pipe, protocol, targets, out / "erased", model_id=str(PIPELINE_DIR), patch=str(out / "patch"), options=EvalOptions())

    objects = protocol.objects[:5]
    seed = protocol.seeds[0]
    grid = compare_grid(_load_images(out / "original" / "images", protocol, objects, seed),
                        _load_images(out / "erased" / "images", protocol, objects, seed), protocol.styles, objects, scale=3)
    save_png(grid, out / "original_vs_erased.png")

    eff = patch.config["efficiency"]
    unet_file = PIPELINE_DIR / "unet" / "diffusion_pytorch_model.safetensors"
    unet_bytes = unet_file.stat().st_size if unet_file.exists() else None
    summary = {
        "concept": args.concept,
        "kind": args.kind,
        "anchor": request.anchor,
        "original": {k: original[k] for k in ("ua", "ira", "cra", "style_accuracy", "object_accuracy", "fid", "clip_score")},
        "erased": {k: erased[k] for k in ("ua", "ira", "cra", "style_accuracy", "object_accuracy", "fid", "clip_score")},
        "delta_points": {k: round(100 * (erased[k] - original[k]), 2) for k in ("ua", "ira", "cra")},
        "efficiency": {**eff, "unet_safetensors_bytes": unet_bytes,
                       "patch_fraction_of_unet": round(eff["patch_bytes"] / unet_bytes, 4) if unet_bytes else None},
        "mask_density_by_block": patch.config["info"]["mask"]["density_by_block"],
        "protocol": protocol.name,
        "deviations": original["deviations"],
        "demo_seconds": round(time.time() - t0, 1),
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"# erasekit demo: SalUn erases {args.kind} '{args.concept}' from canvas-mini",
        "",
        f"Protocol canvas-mini ({len(protocol.styles)} styles x {len(protocol.objects)} objects x {len(protocol.seeds)} seeds, "
        f"DDIM {protocol.steps} steps, guidance {protocol.guidance}); judged by the shipped classifiers. "
        f"Anchor: {request.anchor}. FID in the canvas-mini classifier feature space.",
        "",
        "| model | UA | IRA | CRA | style acc | object acc | FID | CLIP score | CLIP sim. to concept |",
        "|---|---|---|---|---|---|---|---|---|",
        _row("original", original),
        _row("erased", erased),
        "",
        f"Erasure took {eff['erase_seconds']:.0f} s (peak memory {eff['peak_memory_bytes'] / 2**30:.2f} GiB, {eff['peak_memory_kind']}); "
        f"patch {eff['patch_bytes'] / 1e6:.2f} MB" + (f" = {100 * eff['patch_bytes'] / unet_bytes:.0f}% of the UNet's safetensors." if unet_bytes else "."),
        "",
        "![original vs erased](original_vs_erased.png)",
        "",
        "Full reports: [original](original/report.md), [erased](erased/report.md).",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    print()
    print("\n".join(lines[4:8]))
    print(f"\nwrote {out / 'report.md'}, {out / 'report.json'}, {out / 'original_vs_erased.png'} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
