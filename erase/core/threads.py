"""How many CPU threads torch should use: the CPUs this process may actually run on, shared among its workers.

``os.cpu_count()`` counts the machine; a container's CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``)
and the process's affinity mask say what it may use. ``default_threads(workers)`` divides those among the
processes of one batch (``accelerate`` / ``torchrun`` ranks on one machine), at least one each; ``--threads``
overrides it. The ranks of such a batch also tell OpenMP's idle threads to sleep instead of spinning
(``OMP_WAIT_POLICY=PASSIVE`` unless the user set it; see ``sleep_when_idle`` for the measurement).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpus(root: Path = CGROUP) -> float | None:
    """CPUs the cgroup quota allows (v2 ``cpu.max`` "quota period", v1 cfs quota / period);
    None when unlimited or unknown."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota, period = (root / "cpu" / f"cpu.cfs_{k}_us" for k in ("quota", "period"))
        if quota.is_file() and period.is_file():
            q = int(quota.read_text())
            return None if q <= 0 else q / int(period.read_text())
    except (OSError, ValueError):
        return None
    return None


def usable_cpus(root: Path = CGROUP) -> int:
    """The CPUs this process may run on: its affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    quota = cgroup_cpus(root)
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


def default_threads(workers: int = 1) -> int:
    """Threads per process when ``workers`` processes share the usable CPUs."""
    return max(1, usable_cpus() // max(1, workers))


def local_workers() -> int:
    """Processes of this launch on this machine (torchrun's LOCAL_WORLD_SIZE, else WORLD_SIZE; 1 alone)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))


def sleep_when_idle() -> None:
    """When several processes of one launch share the CPUs, OpenMP threads sleep between parallel regions instead of
    spinning (unless the user chose a policy). Measured on 2 cores (two Concept Ablation erasures of canvas-mini):
    one after the other 50.8 s with OpenMP's default, 101.7 s with PASSIVE; side by side 132.2 s with the default,
    33.5 s with PASSIVE. So a lone process keeps the default, and processes that share the cores sleep."""
    if local_workers() > 1:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
