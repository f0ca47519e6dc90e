"""Every diffusion method's patch as a diffusers LoRA: ranks and same-seed PSNR against the exact patch.

    python -m bench.lora_export [--styles Watercolor,Neon_Lines,Pop_Art] [--patches runs/bench/canvas-mini]

For each method (its ``canvas-mini`` preset) and style, the patch ``PATCHES/<method>/style/batch/<style>`` that
``make bench`` wrote is used (made with ``erase run`` into ``runs/lora-export/`` when missing), exported with
``erase.export.export_lora`` (the code behind ``erase export --format lora``: rank search judged by images loaded
through diffusers' ``load_lora_weights``, bar 40 dB on the retained prompts at seed 0). Writes
bench/results/lora-export.json and .md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from erase.core.files import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
STYLES = ("Watercolor", "Neon_Lines", "Pop_Art")


def patch_folder(method: str, style: str, patches: Path, work: Path) -> Path:
    from erase.cli import main as erase_main

    made = patches / method / "style" / "batch" / style
    if (made / "erasure_patch.safetensors").is_file():
        return made
    out = work / f"{method}-{style}"
    if not (out / "erasure_patch.safetensors").is_file():
        if (
            erase_main(
                [
                    "run",
                    method,
                    "--model",
                    "canvas-mini",
                    "--concept",
                    style,
                    "--kind",
                    "style",
                    "--preset",
                    "canvas-mini",
                    "--out",
                    str(out),
                    "--threads",
                    "1",
                    "--quiet",
                ]
                + (["--resume"] if out.exists() else [])
            )
            != 0
        ):
            raise SystemExit(f"erase run {method} {style} failed")
    return out


def main(argv=None) -> int:
    import torch

    from erase.core.patch import ErasurePatch
    from erase.core.registry import list_methods
    from erase.export import export_lora
    from eval.protocols import load_protocol
    from pipelines.stable_diffusion import load_pipeline

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--styles", default=",".join(STYLES))
    p.add_argument("--methods", default="all")
    p.add_argument(
        "--patches", default="runs/bench/canvas-mini", help="make bench's work folder (its patches are reused)"
    )
    p.add_argument("--work", default="runs/lora-export")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = list_methods("stable_diffusion") if args.methods == "all" else args.methods.split(",")
    protocol, pipe = load_protocol("canvas-mini"), load_pipeline("canvas-mini")
    work = Path(args.work)
    rows = []
    for method in methods:
        for style in args.styles.split(","):
            folder = patch_folder(method, style, Path(args.patches), work)
            out = work / "lora" / f"{method}-{style}"
            record = out / "erasekit_lora.json"
            t0 = time.time()
            if not record.is_file():
                export_lora(pipe, ErasurePatch.from_pretrained(folder), out, protocol, progress=False)
            r = json.loads(record.read_text())
            rows.append(
                {
                    "method": method,
                    "style": style,
                    "psnr_db": r["psnr_db"],
                    "tolerance": r["tolerance"],
                    "exact": r["exact"],
                    "tensors": len(r["ranks"]),
                    "rank_min": min(r["ranks"].values()),
                    "rank_max": max(r["ranks"].values()),
                    "lora_bytes": (out / "pytorch_lora_weights.safetensors").stat().st_size,
                    "seconds": round(time.time() - t0, 1),
                    "search": r["search"],
                }
            )
            print(
                f"{method:18s} {style:14s} {r['psnr_db']:6.1f} dB  ranks "
                f"{rows[-1]['rank_min']}-{rows[-1]['rank_max']}",
                flush=True,
            )
    lines = [
        "| method | style | same-seed PSNR vs the patch | tolerance | "
        "ranks (min-max over tensors) | tensors | LoRA size |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['style']} | {r['psnr_db']:.1f} dB | "
            f"{'exact' if r['exact'] else format(r['tolerance'], 'g')} | {r['rank_min']}-{r['rank_max']} | "
            f"{r['tensors']} | {r['lora_bytes'] / 1e6:.2f} MB |"
        )
    lines += [
        "",
        "Each method's canvas-mini patch, exported with `erase export --format lora` (bar 40 dB): the retained "
        "prompts of canvas-mini at seed 0 (100 images), generated with the LoRA loaded by diffusers' "
        "load_lora_weights and with the exact patch.",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        RESULTS / "lora-export.json", {"rows": rows, "styles": args.styles.split(","), "torch": torch.__version__}
    )
    write_text_atomic(RESULTS / "lora-export.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
