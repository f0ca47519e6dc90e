"""Checks of command-line values that run before anything is loaded or written.

Each check raises ``UsageError`` (an ``EraseError``: one line on stderr, exit
code 2) whose message names the option, the problem and the fix.
``validate_common_args`` covers the options every model subcommand shares
(``--threads``, ``--device``, ``--scale``, ``--patch``); the others are small
helpers the subcommands call for their own options.
"""

from __future__ import annotations

import math
from pathlib import Path

from .common import UsageError

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def validate_common_args(args) -> None:
    """Refuse bad --threads, --device, --scale and --patch values (attributes absent from ``args`` are skipped)."""
    if getattr(args, "threads", None) is not None:
        check_positive("--threads", args.threads)
    if getattr(args, "device", None) is not None:
        check_device(args.device)
    if getattr(args, "scale", None) is not None and not math.isfinite(args.scale):
        raise UsageError(
            f"--scale must be a finite number, got {args.scale}; 1 applies the patch as trained, "
            "0 leaves the model unchanged"
        )
    if getattr(args, "patch", None):
        check_patch_folder(args.patch)


def check_positive(option: str, value: int) -> None:
    if value is None or value < 1:
        raise UsageError(f"{option} must be at least 1, got {value}")


def check_finite(option: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise UsageError(f"{option} must be a finite number, got {value}")


def check_device(spec: str) -> None:
    """A device torch knows and this machine has: cpu, cuda, cuda:N, mps (xpu where torch supports it)."""
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {spec!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type not in DEVICE_TYPES:
        raise UsageError(f"--device {spec!r} is not supported; use cpu, cuda, cuda:N or mps")
    if device.type == "cpu":
        return
    backend = {"cuda": torch.cuda, "mps": getattr(torch.backends, "mps", None), "xpu": getattr(torch, "xpu", None)}[
        device.type
    ]
    if backend is None or not backend.is_available():
        raise UsageError(f"--device {spec}: no {device.type} device is available on this machine; use --device cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise UsageError(f"--device {spec}: this machine has {count} {device.type} device(s) (indices 0-{count - 1})")


def check_patch_folder(patch: str) -> None:
    """--patch names a patch *folder* holding erasure_patch.safetensors and erasure_config.json."""
    path = Path(patch)
    if path.is_file():
        raise UsageError(f"--patch expects the patch folder, got the file {path}; pass its folder {path.parent}")
    if not path.is_dir():
        raise UsageError(f"--patch folder {path} does not exist; pass the folder `erase run` wrote the patch into")
    missing = [f for f in ("erasure_patch.safetensors", "erasure_config.json") if not (path / f).is_file()]
    if missing:
        raise UsageError(
            f"--patch folder {path} has no {' or '.join(missing)}; pass the folder `erase run` wrote the patch into"
        )
