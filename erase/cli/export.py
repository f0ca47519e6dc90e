"""``erase export``: a patch in another format (a diffusers LoRA), measured against the exact patch."""

from __future__ import annotations

from pathlib import Path

from .common import UsageError, _threads, command

FORMATS = ("lora",)


@command(
    "export", "write a patch as a diffusers LoRA (pipe.load_lora_weights), at the smallest ranks that keep its images"
)
def _export(p):
    p.add_argument("patch", help="patch folder (erasure_patch.safetensors + erasure_config.json)")
    p.add_argument("--format", default="lora", choices=FORMATS, help="output format (lora: diffusers / peft LoRA)")
    p.add_argument(
        "--out", required=True, help="new folder for the LoRA (pytorch_lora_weights.safetensors + erasekit_lora.json)"
    )
    p.add_argument(
        "--model", default=None, help="the base pipeline (default: the one the patch records, e.g. canvas-mini)"
    )
    p.add_argument(
        "--protocol", default=None, help="protocol whose retained prompts measure the LoRA (default: the patch's)"
    )
    p.add_argument(
        "--psnr",
        type=float,
        default=40.0,
        help="same-seed PSNR (dB) the LoRA's images must reach against the exact patch's",
    )
    p.add_argument("--seeds", type=int, default=1, help="protocol seeds per retained prompt for the measurement")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: the CPUs this process may use)"
    )
    p.add_argument("--quiet", action="store_true")

    def run(args):
        from eval.protocols import load_protocol
        from pipelines.stable_diffusion import load_pipeline

        from ..core.locations import resolve_model
        from ..core.patch import ErasurePatch
        from ..export import export_lora

        out = Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"--out {out} exists and is not an empty folder; choose a new folder")
        if args.seeds < 1:
            raise UsageError(f"--seeds must be at least 1, got {args.seeds}")
        if not args.psnr > 0:
            raise UsageError(f"--psnr must be a positive number of dB, got {args.psnr}")
        if not (Path(args.patch) / "erasure_patch.safetensors").is_file():
            raise UsageError(
                f"{args.patch} holds no erasure_patch.safetensors; pass a patch folder written by erase run"
            )
        patch = ErasurePatch.from_pretrained(args.patch)
        model = args.model or patch.config.get("base_model")
        if not model:
            raise UsageError("the patch does not record its base model; pass --model")
        protocol_name = args.protocol or (patch.config.get("request") or {}).get("protocol")
        if not protocol_name:
            raise UsageError("the patch does not record its protocol; pass --protocol")
        protocol = load_protocol(protocol_name)
        _threads(args)
        pipe = load_pipeline(resolve_model(model))
        r = export_lora(pipe, patch, out, protocol, target_psnr=args.psnr, seeds=args.seeds, progress=not args.quiet)
        print(
            f"LoRA: {out} (ranks {min(r['ranks'].values())}-{max(r['ranks'].values())} over {len(r['ranks'])} "
            f"tensors, {'exact' if r['exact'] else 'tolerance ' + format(r['tolerance'], 'g')}; same-seed PSNR "
            f"{r['psnr_db']:.1f} dB against the patch, bar {args.psnr:g} dB)"
        )

    return run
