"""What every subcommand shares: the command registry, the model options, loading, threads, protocols."""

from __future__ import annotations

import argparse

from ..core.errors import EraseError

COMMANDS: dict[str, tuple] = {}


def command(name: str, help: str):
    """Register a subcommand: the decorated function adds arguments and returns the runner."""

    def deco(fn):
        COMMANDS[name] = (help, fn)
        return fn

    return deco


class UsageError(EraseError):
    """Bad command-line input; printed as one line, exit code 2."""


def _threads(args) -> None:
    import torch

    from ..core.threads import default_threads, local_workers

    if args.threads is None:  # the ranks of a batch on this machine share its CPUs (torchrun sets LOCAL_WORLD_SIZE)
        workers = local_workers() if getattr(args, "command", None) == "batch" else 1
        args.threads = default_threads(workers)
    torch.set_num_threads(args.threads)


def _common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help=(
            "diffusers pipeline folder, shipped model name (canvas-mini, faces-mini), cached hub id "
            "(org/name) or single-file checkpoint"
        ),
    )
    p.add_argument(
        "--patch",
        default=None,
        help="erasure patch folder to apply before generating (erasure_patch.safetensors + erasure_config.json)",
    )
    p.add_argument("--scale", type=float, default=1.0, help="patch strength (0 = original model, 1 = as trained)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help=(
            "torch CPU threads (default: the CPUs this process may use, by affinity and cgroup quota, "
            "shared among a batch's processes)"
        ),
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["fp32", "fp16", "bf16"],
        help="model precision (fp16/bf16 on GPU; default fp32)",
    )
    p.add_argument(
        "--xformers", action="store_true", help="use xformers attention (GPU, when installed); default PyTorch SDPA"
    )


def default_device(args) -> str:
    """--device, or cuda when available, else cpu."""
    import torch

    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _load(args):
    from pipelines import load_model

    device = default_device(args)
    pipe = load_model(args.model, device=device, dtype=args.dtype, xformers=args.xformers)
    if args.patch:
        from erase.core.patch import ErasurePatch, apply_patch

        apply_patch(pipe, ErasurePatch.from_pretrained(args.patch), scale=args.scale)
    return pipe, device


def _protocol(args):
    from eval.protocols import load_protocol

    protocol = load_protocol(args.protocol)
    overrides = {}
    if args.seeds is not None:
        if args.seeds < 1:
            raise UsageError("--seeds must be at least 1")
        overrides["seeds"] = (
            protocol.seeds[: args.seeds] if args.seeds <= len(protocol.seeds) else list(range(args.seeds))
        )
    if args.steps is not None:
        overrides["steps"] = args.steps
    if getattr(args, "guidance", None) is not None:
        overrides["guidance"] = args.guidance
    return protocol.with_overrides(**overrides)
