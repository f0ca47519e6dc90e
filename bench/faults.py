"""Issue 26's measurements: a long batch killed and resumed, the manifest's cost at SD scale, concurrent ranks.

    python -m bench.faults [--out bench/results/faults.json] [--skip-concurrency]

* **kill / resume**: a batch of 20 UCE erasures (the canvas-mini model, the first 20 style names of the
  UnlearnCanvas protocol: canvas-mini has 10 styles per axis), SIGKILLed 5 times, each time once the manifest
  has reached a random count of finished jobs (an event, not a delay), resumed each time and at the end; its
  patches and manifest (times aside) against a batch that ran straight through.
* **manifest writing per job**, at SD scale (20 patches of 60 MB, about a full-UNet-cross-attention patch of SD
  v1.x): re-hashing every finished patch after every job (``rehash=True``, what the manifest did before) against
  trusting size and modification time (now); warm page cache, so disk reads would only widen the gap.
* **concurrent ranks**: N Concept Ablation erasures (canvas-mini preset) as one ``erase batch`` process, one job
  after another, against ``accelerate launch --num_processes N`` (N ranks side by side, threads divided among them);
  N = 2 and 3 on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
STYLES = ["Watercolor", "Pop_Art", "Rust", "Mosaic", "Crayon", "Ink_Art"]


def erase_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "erase", *map(str, args)]


def manifest_lines(out: Path) -> int:
    try:
        return (out / "manifest.jsonl").read_text().count("\n")
    except OSError:
        return 0


def timeless_manifest(out: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if "seconds" not in k and k != "mtime_ns"}
        for line in (out / "manifest.jsonl").read_text().splitlines()
    ]


def kill_resume(root: Path, kills: int = 5, seed: int = 0) -> dict:
    from eval.protocols import load_protocol

    root.mkdir(parents=True, exist_ok=True)
    concepts = root / "concepts.txt"
    names = load_protocol("unlearncanvas").concepts("style")[:20]
    concepts.write_text("".join(n + "\n" for n in names))

    def batch(out, *extra):
        return erase_cmd(
            "batch",
            "--model",
            "canvas-mini",
            "--method",
            "uce",
            "--protocol",
            "unlearncanvas",
            "--concepts",
            concepts,
            "--kind",
            "style",
            "--out",
            out,
            "--threads",
            "1",
            "--quiet",
            *extra,
        )

    straight, killed = root / "straight", root / "killed"
    t0 = time.time()
    subprocess.run(batch(straight), env=ENV, check=True, capture_output=True)
    straight_seconds = time.time() - t0
    rng = random.Random(seed)
    at = sorted(rng.sample(range(1, len(names)), kills))  # kill once this many jobs are in the manifest
    events = []
    for k, jobs in enumerate(at):
        proc = subprocess.Popen(
            batch(killed, *(["--resume"] if k else [])), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while manifest_lines(killed) < jobs and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        events.append(
            {
                "kill": k + 1,
                "waited_for_jobs": jobs,
                "jobs_in_manifest_after_kill": manifest_lines(killed),
                "exit": proc.returncode,
            }
        )
    subprocess.run(batch(killed, "--resume"), env=ENV, check=True, capture_output=True)
    same_patches = all(
        (killed / n / "erasure_patch.safetensors").read_bytes()
        == (straight / n / "erasure_patch.safetensors").read_bytes()
        for n in names
    )
    return {
        "jobs": len(names),
        "method": "uce",
        "model": "canvas-mini",
        "concepts": "unlearncanvas styles 1-20",
        "kills": events,
        "straight_seconds": round(straight_seconds, 1),
        "patches_byte_identical": same_patches,
        "manifest_identical_times_aside": timeless_manifest(killed) == timeless_manifest(straight),
    }


def manifest_timing(root: Path, jobs: int = 20, megabytes: int = 60) -> dict:
    from erase.batch import JOB_FILE, write_manifest
    from erase.core.files import file_sha256, write_json_atomic

    out = root / "manifest"
    names = [f"concept_{i:02d}" for i in range(jobs)]
    per_job = {"rehash_every_patch": [], "size_and_mtime": []}
    for i, name in enumerate(names):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        patch = folder / "erasure_patch.safetensors"
        patch.write_bytes(os.urandom(megabytes << 20))
        st = patch.stat()
        write_json_atomic(
            folder / JOB_FILE,
            {
                "concept": name,
                "status": "done",
                "patch": name,
                "sha256": file_sha256(patch),
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
            },
        )
        for key, rehash in (("rehash_every_patch", True), ("size_and_mtime", False)):
            t0 = time.perf_counter()
            records = write_manifest(out, names[: i + 1], rehash=rehash)
            per_job[key].append(time.perf_counter() - t0)
            assert len(records) == i + 1
    return {
        "jobs": jobs,
        "patch_megabytes": megabytes,
        **{
            key: {
                "mean_seconds_per_job": round(sum(v) / len(v), 4),
                "last_job_seconds": round(v[-1], 4),
                "total_seconds": round(sum(v), 3),
            }
            for key, v in per_job.items()
        },
    }


def concurrency(root: Path, n: int) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    concepts = root / f"concepts-{n}.txt"
    concepts.write_text("".join(s + "\n" for s in STYLES[:n]))
    common = [
        "--method",
        "concept_ablation",
        "--preset",
        "canvas-mini",
        "--concepts",
        concepts,
        "--kind",
        "style",
        "--quiet",
    ]
    t0 = time.time()
    subprocess.run(
        erase_cmd("batch", "--model", "canvas-mini", *common, "--out", root / f"seq-{n}"),
        env=ENV,
        check=True,
        capture_output=True,
    )
    sequential = time.time() - t0
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--multi_gpu",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "erase",
        "batch",
        "--model",
        "canvas-mini",
        *map(str, common),
        "--out",
        str(root / f"par-{n}"),
    ]
    t0 = time.time()
    subprocess.run(launch, env=ENV, check=True, capture_output=True)
    side_by_side = time.time() - t0
    return {
        "erasures": n,
        "sequential_seconds": round(sequential, 1),
        "side_by_side_seconds": round(side_by_side, 1),
        "ratio": round(side_by_side / sequential, 2),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results/faults.json")
    p.add_argument("--work", default="runs/bench/faults", help="scratch folder (removed first)")
    p.add_argument("--skip-concurrency", action="store_true")
    p.add_argument(
        "--only-concurrency", action="store_true", help="measure the concurrent ranks only (merged into --out)"
    )
    args = p.parse_args(argv)

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result = {"cpus": len(os.sched_getaffinity(0))}
    if args.only_concurrency and Path(args.out).is_file():
        result = {**json.loads(Path(args.out).read_text()), **result}
    if not args.only_concurrency:
        result["kill_resume"] = kill_resume(work / "kill")
        print(json.dumps(result["kill_resume"], indent=1))
        result["manifest_per_job"] = manifest_timing(work)
        shutil.rmtree(work / "manifest", ignore_errors=True)
        print(json.dumps(result["manifest_per_job"], indent=1))
    if not args.skip_concurrency:
        result["concurrency"] = [concurrency(work / "threads", n) for n in (2, 3)]
        print(json.dumps(result["concurrency"], indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
