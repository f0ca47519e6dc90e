"""Benchmarks (not tests): print ratios and write JSON to runs/bench/.

    python -m bench.run [--only eval,classify,erase]

* eval:     full canvas-mini protocol (all prompts x 5 seeds) generated, classified and scored; images/s.
* classify: batched classification vs one image at a time (target: >= 20x).
* erase:    one SalUn erasure with the canvas-mini preset: seconds, peak RSS, patch bytes vs the UNet.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch


def bench_eval(out: Path) -> dict:
    from eval.canvas_mini import PIPELINE_DIR
    from eval.protocols import load_protocol
    from eval.report import EvalOptions, evaluate
    from pipelines.stable_diffusion import load_pipeline

    pipe = load_pipeline(PIPELINE_DIR)
    protocol = load_protocol("canvas-mini")
    folder = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    t0 = time.time()
    report = evaluate(pipe, protocol, [("Watercolor", "style")], folder / "r", model_id=str(PIPELINE_DIR), options=EvalOptions(progress=False))
    seconds = time.time() - t0
    shutil.rmtree(folder)
    n = len(protocol.answer_set())
    return {"images": n, "seconds": round(seconds, 1), "images_per_second": round(n / seconds, 2),
            "generate_seconds": report["seconds"]["generate"], "target_seconds": 180, "meets_target": seconds < 180}


def bench_classify(out: Path) -> dict:
    from eval.canvas_mini import load_classifier
    from eval.canvas_mini.data import render_set
    from eval.classifiers import batched_logits

    plain = load_classifier("style")
    clf = plain.for_inference()  # what evaluation uses (BatchNorm folded, channels-last); both sides use it
    x = render_set("check", 5).float_images()  # 550 images
    batched_logits(clf, x[:64])  # warm-up

    def one_at_a_time():
        with torch.no_grad():
            return torch.cat([clf(x[i : i + 1]) for i in range(len(x))])

    t_batched, batched = _best_of(lambda: batched_logits(clf, x), 3)
    t_plain, plain_logits = _best_of(lambda: batched_logits(plain, x), 3)
    t_single, single = _best_of(one_at_a_time, 2)
    assert torch.equal(batched.argmax(1), single.argmax(1))
    assert torch.equal(batched.argmax(1), plain_logits.argmax(1))
    # Roofline: the batched run cannot beat (total FLOPs / this machine's dense-matmul peak), which bounds the ratio.
    flops = conv_linear_flops(clf, x[:1]) * len(x)
    peak = matmul_gflops()
    bound = t_single / (flops / (peak * 1e9))
    return {"images": len(x), "batched_seconds": round(t_batched, 3), "single_seconds": round(t_single, 3),
            "batched_seconds_without_bn_folding": round(t_plain, 3),
            "speedup": round(t_single / t_batched, 1), "target_speedup": 20, "meets_target": t_single / t_batched >= 20,
            "mflop_per_image": round(flops / len(x) / 1e6, 2), "batched_gflops": round(flops / t_batched / 1e9, 1),
            "matmul_peak_gflops": round(peak, 1), "speedup_bound_at_matmul_peak": round(bound, 1)}


def conv_linear_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-add FLOPs (2 per MAC) of the Conv2d and Linear layers for input x."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += 2 * out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """Best-of-reps fp32 GFLOP/s of one large square matmul: a practical compute peak for this machine."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best, _ = _best_of(lambda: a @ b, reps)
    return 2 * n**3 / best / 1e9


def _best_of(fn, reps: int):
    """(fastest wall time of ``reps`` calls, the last call's result)."""
    best, result = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench_erase(out: Path) -> dict:
    from erase.api import erase_concept
    from erase.request import EraseRequest
    from eval.canvas_mini import PIPELINE_DIR
    from eval.protocols import load_protocol
    from pipelines.stable_diffusion import load_pipeline

    pipe = load_pipeline(PIPELINE_DIR)
    folder = Path(tempfile.mkdtemp(prefix="bench-erase-"))
    request = EraseRequest.from_protocol(load_protocol("canvas-mini"), "Watercolor", "style")
    t0 = time.time()
    patch = erase_concept(pipe, "salun", request, folder, preset="canvas-mini", progress=False)
    seconds = time.time() - t0
    shutil.rmtree(folder)
    unet = (PIPELINE_DIR / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    eff = patch.config["efficiency"]
    return {"seconds": round(seconds, 1), "peak_memory_bytes": eff["peak_memory_bytes"], "peak_memory_kind": eff["peak_memory_kind"],
            "patch_bytes": eff["patch_bytes"], "unet_bytes": unet, "patch_fraction_of_unet": round(eff["patch_bytes"] / unet, 3),
            "target_seconds": 180, "meets_target": seconds < 180 and eff["patch_bytes"] < unet / 2}


BENCHES = {"eval": bench_eval, "classify": bench_classify, "erase": bench_erase}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(BENCHES))
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.only.split(","):
        results[name] = BENCHES[name](out)
        print(f"{name:9s} {json.dumps(results[name])}")
    (out / "bench.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
