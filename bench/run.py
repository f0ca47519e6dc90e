"""Benchmarks (not tests): print ratios and write JSON to runs/bench/.

    python -m bench.run [--only eval,classify,erase]

* eval:     full canvas-mini protocol (all prompts x 5 seeds) generated, classified and scored; images/s.
* classify: batched classification vs one image at a time (target: >= 20x), and the batched rate as a fraction of
            this machine's measured matmul peak (the roofline; target: >= 80%).
* classify_vit: the UnlearnCanvas judge's shape (ViT-L/16, random weights) batched vs one at a time (target on a
            GPU: >= 20x).
* erase:    one SalUn erasure with the canvas-mini preset: seconds, peak RSS, patch bytes vs the UNet.
* eval_fidelity: `erase eval --patch` of an erased model with the original's answer set already cached, with and
            without same-seed retain fidelity (target: at most 10% longer with it).
* eval_memory: peak RSS of the scoring phase of `erase eval` at 550 vs 5,170 canvas-mini-sized images
            (renderer PNGs as the answer set, 5 vs 47 seeds); streamed, it must not grow with the image count.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def bench_eval(out: Path) -> dict:
    from eval.protocols import load_protocol
    from eval.report import EvalOptions, evaluate
    from pipelines.stable_diffusion import load_pipeline
    from worlds.canvas_mini import PIPELINE_DIR

    pipe = load_pipeline(PIPELINE_DIR)
    protocol = load_protocol("canvas-mini")
    folder = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    t0 = time.time()
    report = evaluate(
        pipe,
        protocol,
        [("Watercolor", "style")],
        folder / "r",
        model_id=str(PIPELINE_DIR),
        options=EvalOptions(progress=False),
    )
    seconds = time.time() - t0
    shutil.rmtree(folder)
    n = len(protocol.answer_set())
    return {
        "images": n,
        "seconds": round(seconds, 1),
        "images_per_second": round(n / seconds, 2),
        "generate_seconds": report["seconds"]["generate"],
        "target_seconds": 180,
        "meets_target": seconds < 180,
    }


def bench_eval_fidelity(out: Path) -> dict:
    """Seconds of a patched evaluation (full protocol, FID included) with and without retain fidelity, the original's
    answer set cached beforehand; the patch is a small random K/V change, so every retained image differs."""
    from erase.core.components import named_parameters
    from erase.core.patch import ErasurePatch, apply_patch, fingerprint
    from eval.original_answers import original_answer_set
    from eval.protocols import load_protocol
    from eval.report import EvalOptions, evaluate
    from pipelines.stable_diffusion import load_pipeline
    from worlds.canvas_mini import PIPELINE_DIR

    pipe = load_pipeline(PIPELINE_DIR)
    protocol = load_protocol("canvas-mini")
    original_answer_set(pipe, protocol, progress=False)  # the cache a second patch of the same model finds
    params = named_parameters(pipe)
    names = [n for n in params if n.endswith("attn2.to_v.weight")]
    g = torch.Generator().manual_seed(0)
    base = {n: params[n].detach().clone() for n in names}
    tuned = {n: b + 0.05 * torch.randn(b.shape, generator=g) for n, b in base.items()}
    apply_patch(
        pipe,
        ErasurePatch.from_diff(
            base, tuned, {n: None for n in names}, {"method": "bench"}, fingerprint=fingerprint(pipe, names)
        ),
    )
    folder = Path(tempfile.mkdtemp(prefix="bench-fidelity-"))
    seconds = {}
    for fidelity in (False, True, False, True):  # alternated, best of two each
        t0 = time.time()
        r = evaluate(
            pipe,
            protocol,
            [("Watercolor", "style")],
            folder / f"{fidelity}-{len(seconds)}",
            model_id=str(PIPELINE_DIR),
            patch="bench",
            options=EvalOptions(progress=False, grid=False, fidelity=fidelity),
        )
        seconds.setdefault(fidelity, []).append(time.time() - t0)
        if fidelity:
            kept = r["retain_fidelity"]
    shutil.rmtree(folder)
    without, with_ = min(seconds[False]), min(seconds[True])
    return {
        "seconds_without": round(without, 1),
        "seconds_with": round(with_, 1),
        "overhead": round(with_ / without - 1, 3),
        "fidelity_seconds": r["seconds"]["fidelity"],
        "retained_psnr": round(kept["psnr"], 2),
        "target_overhead": 0.10,
        "meets_target": with_ <= 1.10 * without,
    }


def bench_classify(out: Path) -> dict:
    from eval.classifiers import batched_logits
    from worlds.canvas_mini import load_classifier
    from worlds.canvas_mini.data import render_set

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
    return {
        "images": len(x),
        "batched_seconds": round(t_batched, 3),
        "single_seconds": round(t_single, 3),
        "batched_seconds_without_bn_folding": round(t_plain, 3),
        "speedup": round(t_single / t_batched, 1),
        "target_speedup": 20,
        "meets_target": t_single / t_batched >= 20,
        "mflop_per_image": round(flops / len(x) / 1e6, 2),
        "batched_gflops": round(flops / t_batched / 1e9, 1),
        "matmul_peak_gflops": round(peak, 1),
        "speedup_bound_at_matmul_peak": round(bound, 1),
        # the batched rate against the roofline: how much of the bound the batched path reaches
        "fraction_of_matmul_peak": round(flops / t_batched / 1e9 / peak, 3),
        "target_fraction": 0.8,
        "meets_roofline_target": flops / t_batched / 1e9 / peak >= 0.8,
    }


def bench_classify_vit(out: Path) -> dict:
    """The UnlearnCanvas judge's shape (timm ViT-L/16 at 224 px, random weights, behind the same resize/normalise
    wrapper as real weights): batched vs one image at a time, on the GPU when there is one (target: >= 20x there)."""
    import timm

    from eval.classifiers import ResizeNormalize, batched_logits

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = (
        ResizeNormalize(timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=60)).eval().to(device)
    )
    n = 256 if device == "cuda" else 16  # canvas-size inputs, resized to 224 inside the wrapper as in evaluation
    x = torch.rand(n, 3, 32, 32)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def batched():
        r = batched_logits(model, x, batch_size=64)
        sync()
        return r

    def single():
        with torch.no_grad():
            r = torch.cat([model(x[i : i + 1].to(device)).float().cpu() for i in range(n)])
        sync()
        return r

    batched()  # warm-up
    t_batched, a = _best_of(batched, 3)
    t_single, b = _best_of(single, 2 if device == "cuda" else 1)
    assert torch.equal(a.argmax(1), b.argmax(1))
    return {
        "device": device,
        "images": n,
        "batched_seconds": round(t_batched, 3),
        "single_seconds": round(t_single, 3),
        "images_per_second_batched": round(n / t_batched, 1),
        "speedup": round(t_single / t_batched, 1),
        "target_speedup_on_gpu": 20,
        "meets_target": (t_single / t_batched >= 20) if device == "cuda" else None,
    }


def conv_linear_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-add FLOPs (2 per MAC) of the Conv2d and Linear layers for input x."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += 2 * out.numel() * m.in_features

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
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
    from erase.core.request import EraseRequest
    from eval.protocols import load_protocol
    from pipelines.stable_diffusion import load_pipeline
    from worlds.canvas_mini import PIPELINE_DIR

    pipe = load_pipeline(PIPELINE_DIR)
    folder = Path(tempfile.mkdtemp(prefix="bench-erase-"))
    request = EraseRequest.from_protocol(load_protocol("canvas-mini"), "Watercolor", "style")
    t0 = time.time()
    patch = erase_concept(pipe, "salun", request, folder, preset="canvas-mini", progress=False)
    seconds = time.time() - t0
    shutil.rmtree(folder)
    unet = (PIPELINE_DIR / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    eff = patch.config["efficiency"]
    return {
        "applied_patch_memory": applied_patch_memory(patch, PIPELINE_DIR),
        "seconds": round(seconds, 1),
        "peak_memory_bytes": eff["peak_memory_bytes"],
        "peak_memory_kind": eff["peak_memory_kind"],
        "patch_bytes": eff["patch_bytes"],
        "unet_bytes": unet,
        "patch_fraction_of_unet": round(eff["patch_bytes"] / unet, 3),
        "target_seconds": 180,
        "meets_target": seconds < 180 and eff["patch_bytes"] < unet / 2,
    }


def applied_patch_memory(patch, pipeline_dir) -> dict:
    """What an applied patch keeps in memory to be removable bit for bit, per load dtype: the bytes of the
    originals the old apply cloned (every touched tensor, whole) vs what apply keeps now."""
    from erase.core.components import named_parameters
    from erase.core.patch import apply_patch, remove_patch, restore_bytes
    from pipelines.stable_diffusion import load_pipeline

    out = {}
    for dtype in ("fp32", "fp16"):
        pipe = load_pipeline(pipeline_dir, dtype=dtype)
        params = named_parameters(pipe)
        before = {n: params[n].detach().clone() for n in patch.names()}
        apply_patch(pipe, patch)
        kept = restore_bytes(pipe)
        remove_patch(pipe)
        exact = all(torch.equal(before[n], params[n]) for n in patch.names())
        cloned = sum(params[n].numel() * params[n].element_size() for n in patch.names())
        out[dtype] = {
            "old_clone_bytes": cloned,
            "kept_bytes": kept,
            "ratio": round(kept / cloned, 4),
            "remove_bit_exact": exact,
        }
    return out


def bench_eval_memory(out: Path, seeds=(5, 47)) -> dict:
    """Peak RSS of the scoring phase (classify, FID with its reference, CLIP) at 550 vs 5,170 images.

    The answer set is written once as renderer PNGs (canvas-mini size, 47 seeds); each size is scored in a
    fresh process (so peaks do not mix) whose peak-RSS counter is reset just before scoring starts.
    """
    folder = Path(tempfile.mkdtemp(prefix="bench-evalmem-"))
    try:
        _write_renderer_answer_set(folder / "images", max(seeds))
        runs = [_scoring_peak_in_child(folder / "images", n) for n in seeds]
    finally:
        shutil.rmtree(folder)
    small, large = runs
    return {
        "images": [r["images"] for r in runs],
        "peak_rss_mb": [r["peak_rss_mb"] for r in runs],
        "rss_before_scoring_mb": [r["rss_before_mb"] for r in runs],
        "peak_ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "float32_answer_set_mb": [round(r["images"] * 3 * 32 * 32 * 4 / 2**20, 1) for r in runs],
        "score_seconds": [r["seconds"] for r in runs],
        "target_ratio": 1.05,
        "meets_target": large["peak_rss_mb"] / small["peak_rss_mb"] <= 1.05,
    }


def _write_renderer_answer_set(folder: Path, n_seeds: int) -> None:
    """Renderer images named as a canvas-mini answer set with seeds 0..n_seeds-1 (a stand-in for generations)."""
    from PIL import Image

    from eval.answer_set import image_name
    from eval.protocols import load_protocol
    from worlds.canvas_mini import render_array

    folder.mkdir(parents=True)
    for s, o, seed in load_protocol("canvas-mini").with_overrides(seeds=list(range(n_seeds))).answer_set():
        Image.fromarray(render_array(s, o, 1_000_000 + seed)).save(folder / image_name(s, o, seed))


def _scoring_peak_in_child(folder: Path, n_seeds: int) -> dict:
    code = f"import bench.run as b; b._score_and_report({str(folder)!r}, {n_seeds}, {torch.get_num_threads()})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"scoring child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _score_and_report(folder: str, n_seeds: int, threads: int) -> None:
    """Child process: load the judges, reset the peak-RSS counter, score the answer set, print one JSON line."""
    torch.set_num_threads(threads)
    os.environ["ERASEKIT_CACHE"] = tempfile.mkdtemp(
        prefix="bench-evalmem-cache-"
    )  # reference computed (streamed) every time
    from erase.core.memory import proc_status_bytes
    from eval.protocols import load_protocol
    from eval.report import EvalOptions
    from eval.scoring import prepare_judging, score_answer_set

    protocol = load_protocol("canvas-mini").with_overrides(seeds=list(range(n_seeds)))
    judging = prepare_judging(protocol, [("Watercolor", "style")], EvalOptions(progress=False))
    gc.collect()
    before = proc_status_bytes("VmRSS") / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
    t0 = time.time()
    score_answer_set(judging, folder, batch_size=64, progress=False)
    seconds = time.time() - t0
    shutil.rmtree(os.environ["ERASEKIT_CACHE"])
    print(
        json.dumps(
            {
                "images": len(protocol.answer_set()),
                "rss_before_mb": round(before, 1),
                "peak_rss_mb": round(proc_status_bytes("VmHWM") / 2**20, 1),
                "seconds": round(seconds, 1),
            }
        )
    )


BENCHES = {
    "eval": bench_eval,
    "classify": bench_classify,
    "classify_vit": bench_classify_vit,
    "erase": bench_erase,
    "eval_memory": bench_eval_memory,
    "eval_fidelity": bench_eval_fidelity,
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(BENCHES))
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument(
        "--results", default=None, help="also write the results here (default bench/results/run-<cpu|cuda>.json)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.only.split(","):
        results[name] = BENCHES[name](out)
        print(f"{name:9s} {json.dumps(results[name])}")
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    from erase.core.files import write_json_atomic

    device = "cuda" if torch.cuda.is_available() else "cpu"
    write_json_atomic(
        Path(args.results or Path(__file__).parent / "results" / f"run-{device}.json"),
        {"threads": args.threads, "torch": torch.__version__, "device": device, "results": results},
    )


if __name__ == "__main__":
    main()
