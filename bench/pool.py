"""Worker processes for the benchmarks: ``python -m MODULE --job JOB ...`` subprocesses, a fixed number at a time.

Each job runs in a process of its own, its log in ``logs/JOB.log``;
a job that fails is reported with its log and the others go on, so a rerun of the same bench resumes the rest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_pool(module: str, jobs: list[str], logs: Path, workers: int, args: list[str] = ()) -> list[str]:
    """Run ``python -m module --job JOB *args`` for every job, ``workers`` at a time, in ``jobs``' order; returns
    the jobs that failed."""
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, failed = list(jobs), {}, []
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    while pending or running:
        while pending and len(running) < workers:
            job = pending.pop(0)
            log = open(logs / f"{job.replace(':', '-').replace('@', '-')}.log", "w")
            cmd = [sys.executable, "-m", module, "--job", job, *args]
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            running[job] = (proc, log, time.time())
            print(f"  started {job}", flush=True)
        time.sleep(2)
        for job, (proc, log, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[job]
            ok = proc.returncode == 0
            print(
                f"  {'finished' if ok else 'FAILED'} {job} in {time.time() - t0:.0f} s"
                + ("" if ok else f" (log: {log.name})"),
                flush=True,
            )
            if not ok:
                failed.append(job)
    return failed
