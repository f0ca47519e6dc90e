"""Every method's erasure at Stable Diffusion v1.5 scale: peak memory and time per step, random weights.

    python -m bench.sd15_shape [--methods all] [--resolution 512] [--steps 2] [--batch 1]
                               [--device cpu|cuda] [--dtype fp32]

The UNet, text encoder and VAE are built from SD v1.5's published configs, written in ``bench/configs/sd15/``
(859,520,964 / 123,060,480 / 83,653,863 parameters, checked by ``tests/test_sd15_shape.py``), with random weights:
the compute and memory of the real model without its weights. The tokenizer is canvas-mini's (its ids fit the
49,408-token embedding; prompts are padded to 77 tokens as SD's are). Each method runs its upstream SD preset
(``sd15`` or ``sd14``) for ``--steps`` steps with the data it samples cut to 1 image per prompt and
``--sample-steps`` sampler steps (sampling is not what is measured), in a process of its own so that its peak
RSS is its own. A process above ``--max-rss-gb`` is stopped and reported as such (the machine is not swapped
to death). ``--shape tiny`` is a width-reduced copy for the CPU test of this code path.

On CPU the peak RSS at fp32 compares the methods' optimiser, mask and frozen-copy state fairly; on a GPU the
peak allocated memory and the time per step at fp16 / bf16, with and without xformers, are what a user pays.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bench" / "configs" / "sd15"
SD15_PARAMETERS = {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}
PRESETS = ("sd15", "sd14")  # the first one a method ships is its upstream setting
# Published per-concept costs (UnlearnCanvas benchmark, SD v1.5, one A100; ../shared/reference/salun_esd_uce.md).
PUBLISHED = {
    "salun": {"seconds": 667, "gpu_gb": 30.8},
    "esd": {"seconds": 6163, "gpu_gb": 17.8},
    "uce": {"seconds": 434, "gpu_gb": 5.1},
    "concept_ablation": {"seconds": 734, "gpu_gb": 10.1},
}


def configs(shape: str) -> dict[str, dict]:
    """The component configs: SD v1.5's as published, or ``tiny`` (same layout, widths cut ~10x) for tests."""
    cfg = {
        name: json.loads((CONFIGS / f"{name}.json").read_text())
        for name in ("unet", "text_encoder", "vae", "scheduler")
    }
    if shape == "tiny":
        cfg["unet"].update(block_out_channels=[32, 64, 128, 128], cross_attention_dim=64, attention_head_dim=4)
        cfg["text_encoder"].update(
            hidden_size=64, intermediate_size=256, num_attention_heads=4, num_hidden_layers=2, projection_dim=64
        )
        cfg["vae"].update(block_out_channels=[32, 32, 64, 64], layers_per_block=1)
    elif shape != "sd15":
        raise SystemExit(f"unknown shape {shape!r}; choose sd15 or tiny")
    return cfg


def build_pipeline(shape: str = "sd15", seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A StableDiffusionPipeline of the given shape with random weights (deterministic by ``seed``)."""
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from worlds.canvas_mini import PIPELINE_DIR

    cfg = configs(shape)
    tokenizer = CLIPTokenizer.from_pretrained(
        str(Path(PIPELINE_DIR) / "tokenizer"), model_max_length=cfg["text_encoder"]["max_position_embeddings"]
    )
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(cfg["unet"])
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            **cfg["text_encoder"],
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL.from_config(cfg["vae"])
    scheduler = getattr(diffusers, cfg["scheduler"].pop("_class_name")).from_config(cfg["scheduler"])
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe.to(device, dtype)


def request():
    from erase.core.request import EraseRequest

    return EraseRequest(
        concept="Van Gogh",
        kind="style",
        anchor="a painting",
        forget_prompts=["A painting of a village in the style of Van Gogh"],
        anchor_prompts=["A painting of a village"],
        retain_prompts=["A photo of a dog on a beach"],
    )


def bench_overrides(method: str, steps: int, batch: int, sample_steps: int) -> dict:
    """Fixed steps, ``batch`` images per step, and the least sampling a method's data needs."""
    from erase.core.registry import get_method

    known = {f.name: f.default for f in fields(get_method(method).config_cls)}
    if known.get("steps") == 0:  # closed form (UCE): no training steps to fix
        return {}
    wanted = {
        "steps": steps,
        "batch_size": batch,
        "retain_batch_size": batch,
        "warmup": max(0, steps // 2),
        "data_steps": sample_steps,
        "sample_steps": sample_steps,
        "forget_seeds": 1,
        "retain_seeds": 1,
        "anchor_seeds": 1,
        "checkpoint_every": steps + 1,
    }
    return {k: v for k, v in wanted.items() if k in known}


def preset_of(method: str) -> str | None:
    from erase.api import list_presets

    shipped = list_presets(method)
    return next((p for p in PRESETS if p in shipped), None)


def run_one(
    method: str,
    *,
    shape: str,
    resolution: int,
    steps: int,
    batch: int,
    sample_steps: int,
    device: str,
    dtype: str,
    xformers: bool = False,
) -> dict:
    """One erasure in this process; returns time per step, peak memory and patch size."""
    from erase.api import erase_concept
    from erase.core.memory import peak_memory_bytes

    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    t0 = time.time()
    pipe = build_pipeline(shape, device=device, dtype=torch_dtype)
    if xformers:
        pipe.enable_xformers_memory_efficient_attention()
    pipe.unet.register_to_config(
        sample_size=resolution // pipe.vae_scale_factor
    )  # the size methods sample their data at
    build_seconds = time.time() - t0
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    preset = preset_of(method)
    overrides = bench_overrides(method, steps, batch, sample_steps)
    with tempfile.TemporaryDirectory(prefix="sd15-shape-") as tmp:
        patch = erase_concept(
            pipe,
            method,
            request(),
            Path(tmp) / "patch",
            preset=preset,
            overrides=overrides,
            progress=False,
            model_id=f"random-{shape}",
        )
    timing = patch.config.get("timing", {})
    train = timing.get("train_seconds")
    return {
        "method": method,
        "preset": preset,
        "overrides": overrides,
        "shape": shape,
        "resolution": resolution,
        "dtype": dtype,
        "device": device,
        "xformers": xformers,
        "build_seconds": round(build_seconds, 1),
        "setup_seconds": timing.get("setup_seconds"),
        "train_seconds": train,
        "seconds_per_step": round(train / steps, 3) if train is not None and steps else None,
        "erase_seconds": patch.config["efficiency"]["erase_seconds"],
        "peak_rss_bytes": peak_memory_bytes(torch.device("cpu"))[0],
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if device.startswith("cuda") else None,
        "patch_bytes": patch.nbytes(),
        "patched_values": int(sum(d.numel() for d in patch.deltas.values())),
    }


def run_isolated(method: str, args) -> dict:
    """``run_one`` in a child process, stopped when its RSS passes ``--max-rss-gb``."""
    from erase.core.memory import proc_status_bytes

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "bench.sd15_shape",
            "--one",
            method,
            "--result",
            str(result),
            "--shape",
            args.shape,
            "--resolution",
            str(args.resolution),
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
            "--sample-steps",
            str(args.sample_steps),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--threads",
            str(args.threads),
        ]
        if args.xformers:
            cmd.append("--xformers")
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0, peak, limit = time.time(), 0, int(args.max_rss_gb * 2**30)
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            peak = max(peak, proc_status_bytes("VmRSS", proc.pid))
            if peak > limit:
                proc.kill()
                proc.wait()
                return {
                    "method": method,
                    "status": f"stopped: RSS above {args.max_rss_gb:g} GB",
                    "peak_rss_bytes": peak,
                    "seconds": round(time.time() - t0, 1),
                }
            time.sleep(0.2)
        log = proc.stdout.read()
        if proc.returncode != 0 or not result.exists():
            return {
                "method": method,
                "status": f"failed (exit {proc.returncode})",
                "log_tail": log[-2000:],
                "seconds": round(time.time() - t0, 1),
            }
        return {**json.loads(result.read_text()), "status": "ok"}


def main(argv=None) -> int:
    from erase.core.registry import list_methods

    p = argparse.ArgumentParser(description="erasure cost of every method at SD v1.5 scale (random weights)")
    p.add_argument("--methods", default="all")
    p.add_argument("--shape", default="sd15", choices=["sd15", "tiny"])
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument(
        "--steps", type=int, default=2, help="training steps per method (fixed; the time per step is reported)"
    )
    p.add_argument("--batch", type=int, default=1, help="images per training step (forget and retain each)")
    p.add_argument(
        "--sample-steps", type=int, default=2, help="sampler steps of the data a method generates for itself"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--xformers", action="store_true")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--max-rss-gb", type=float, default=18.0, help="stop a method whose process grows past this")
    p.add_argument("--out", default=None, help="JSON results (default bench/results/sd15_shape-<device>-<dtype>.json)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one method in this process
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        r = run_one(
            args.one,
            shape=args.shape,
            resolution=args.resolution,
            steps=args.steps,
            batch=args.batch,
            sample_steps=args.sample_steps,
            device=args.device,
            dtype=args.dtype,
            xformers=args.xformers,
        )
        Path(args.result).write_text(json.dumps(r))
        return 0
    methods = list_methods("stable_diffusion") if args.methods == "all" else args.methods.split(",")
    rows = []
    for m in methods:
        r = run_isolated(m, args)
        rows.append({**r, "published": PUBLISHED.get(m)})
        gb = r.get("peak_rss_bytes", 0) / 2**30
        print(
            f"{m:18s} {r['status']:28s} peak RSS {gb:6.2f} GB  s/step {r.get('seconds_per_step')}  patch "
            f"{r.get('patch_bytes', 0) / 1e6:.1f} MB",
            flush=True,
        )
    out = Path(
        args.out
        or ROOT / "bench" / "results" / f"sd15_shape-{args.shape}-{args.device.split(':')[0]}-{args.dtype}.json"
    )
    from erase.core.files import write_json_atomic

    settings = {
        "shape": args.shape,
        "resolution": args.resolution,
        "steps": args.steps,
        "batch": args.batch,
        "sample_steps": args.sample_steps,
        "device": args.device,
        "dtype": args.dtype,
    }
    if out.exists():  # the same settings measured before: keep the rows of methods not re-run now
        prev = json.loads(out.read_text())
        if {k: prev.get(k) for k in settings} == settings:
            ran = {r["method"] for r in rows}
            rows = [
                r for r in prev["rows"] if r["method"] not in ran and r["method"] in list_methods("stable_diffusion")
            ] + rows
            rows.sort(key=lambda r: r["method"])
    write_json_atomic(
        out,
        {**settings, "max_rss_gb": args.max_rss_gb, "threads": args.threads, "torch": torch.__version__, "rows": rows},
    )
    print(f"results: {out}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
