"""Memory a run used: the peak the patch reports, and Linux's per-process counters the benches read."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes, what they measure): CUDA's max allocated on a GPU, else this process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda max allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024), "peak RSS of the process"


def proc_status_bytes(field: str, pid: int | str = "self") -> int:
    """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``, ...) in bytes; 0 for another process that is
    gone or exiting (a zombie has no memory fields)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        if pid == "self":
            raise RuntimeError("/proc/self/status is unreadable (this measurement needs Linux)") from None
        return 0
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    if pid != "self":
        return 0
    raise RuntimeError(f"/proc/{pid}/status has no {field} (this measurement needs Linux)")
