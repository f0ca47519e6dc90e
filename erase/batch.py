"""Batch erasing: one patch per concept of a list (or one joint patch), crash-safe, resumable, shardable.

    erase batch --model PATH --method salun --concepts styles.txt --kind style --out DIR [--eval] [--resume]

Layout of DIR::

    batch.json           what the batch is (model identity, method, preset, options, kind, concepts, protocol)
    manifest.jsonl       one line per finished or failed job: concept, status, patch, sha256, metrics, seconds
    <concept>/           the job's patch folder (erasure_patch.safetensors + erasure_config.json + log)
    <concept>/job.json   the job's own record, written atomically once its patch is saved (and evaluated)

A job counts as done only when its ``job.json`` exists and the patch file's SHA-256 matches it, so a job
killed at any point is redone (or continued from its checkpoint) on ``--resume``, never taken as finished.
``manifest.jsonl`` is rebuilt from the ``job.json`` files after each job, under a file lock and written to a
temp file then renamed, so several processes (accelerate launch or torchrun with N processes: each takes every N-th
concept) keep one consistent manifest. A lock file per process rank refuses a second batch writing the same
folder at the same time.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .api import erase_concept
from .core.errors import EraseError
from .core.files import file_sha256, write_json_atomic
from .core.request import EraseRequest

BATCH_FILE = "batch.json"
MANIFEST = "manifest.jsonl"
JOB_FILE = "job.json"


class BatchError(EraseError):
    """The batch cannot run as asked (concepts file, output folder, another batch's manifest)."""


# -- input ---------------------------------------------------------------------------------------------
def read_concepts(path: str | Path, known: list[str] | None, kind: str) -> list[str]:
    """Concepts, one per line; blank lines and ``#`` comments ignored. Duplicates, an empty list and (when
    ``known`` is given) concepts the protocol does not have are refused before any work starts."""
    p = Path(path)
    if not p.is_file():
        raise BatchError(f"--concepts {p} is not a file; pass a text file with one concept per line")
    concepts = [line.split("#", 1)[0].strip() for line in p.read_text().splitlines()]
    concepts = [c for c in concepts if c]
    if not concepts:
        raise BatchError(f"--concepts {p} lists no concept (only blank lines or comments); put one {kind} per line")
    seen, dups = set(), []
    for c in concepts:
        if c in seen:
            dups.append(c)
        seen.add(c)
    if dups:
        raise BatchError(f"--concepts {p} lists {dups[0]!r} more than once; keep one line per concept")
    if known is not None:
        unknown = [c for c in concepts if c not in known]
        if unknown:
            raise BatchError(
                f"--concepts {p}: {unknown[0]!r} is not a {kind} of the protocol (known: {', '.join(known)})"
            )
    bad = [c for c in concepts if "/" in c or c.startswith(".")]
    if bad:
        raise BatchError(f"concept {bad[0]!r} cannot name a folder; rename it in --concepts")
    return concepts


def shard(concepts: list[str], rank: int, world: int) -> list[str]:
    """The concepts process ``rank`` of ``world`` erases: every world-th, starting at rank."""
    return concepts[rank::world]


def process_rank() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (accelerate / torchrun set RANK and WORLD_SIZE)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# -- the output folder -------------------------------------------------------------------------------------
def claim_folder(out: Path, identity: dict, *, resume: bool, rank: int, wait_seconds: float = 300) -> None:
    """Rank 0 refuses an existing folder without --resume and a folder of another batch, then writes batch.json
    with its launcher's pid; other ranks wait for the batch.json of their own launch and check it is the same batch."""
    existing = out / BATCH_FILE
    if out.exists() and not out.is_dir():
        raise BatchError(f"--out {out} is a file; give a folder path")
    launcher = os.getppid()  # the ranks of one accelerate / torchrun launch share their parent
    if rank > 0:
        deadline = time.time() + wait_seconds
        while True:
            prev = _read_batch(existing)
            if prev is not None and prev.get("launcher") == launcher:
                break
            if time.time() > deadline:
                raise BatchError(
                    f"rank 0 of this launch did not claim {out} within {wait_seconds:.0f} s (see its error)"
                )
            time.sleep(0.2)
        _check_same(out, prev, identity)
        return
    if existing.exists():
        prev = _read_batch(existing)
        if prev is None:
            raise BatchError(f"{existing} is unreadable; it is not a batch this tool wrote: choose another --out")
        if not resume:
            raise BatchError(f"{out} holds a batch already; pass --resume to continue it, or choose another --out")
        _check_same(out, prev, identity)
    elif out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".lock")):
        raise BatchError(f"{out} exists and is not a batch folder; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(existing, {**identity, "launcher": launcher})


def _read_batch(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _check_same(out: Path, prev: dict, identity: dict) -> None:
    diff = [
        k
        for k in sorted(set(prev) | set(identity))
        if k not in ("concepts", "launcher") and prev.get(k) != identity.get(k)
    ]
    if diff:
        raise BatchError(
            f"{out} holds a batch made with another {' / '.join(diff[:3])}; --resume continues the same batch only: "
            "choose another --out"
        )


@contextmanager
def rank_lock(out: Path, rank: int):
    """Hold ``out/.lock-rank<r>`` for the duration; another live process holding it is refused."""
    path = out / f".lock-rank{rank}"
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BatchError(
            f"another erase batch is writing {out} (lock {path.name} is held); wait for it or choose another --out"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def job_record(out: Path, concept: str, *, rehash: bool = True) -> dict | None:
    """The job's record if it finished and its patch still verifies, else None (to be redone). With ``rehash``
    the patch's SHA-256 is recomputed; without, a patch whose size and modification time are those recorded when it
    was written is trusted (the manifest is rebuilt after every job: re-hashing every finished patch each time is
    quadratic I/O at SD scale), and only a patch whose size or time differ is hashed again."""
    folder = out / concept
    try:
        record = json.loads((folder / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None
    if record.get("status") != "done":
        return record
    patch = folder / "erasure_patch.safetensors"
    if not patch.is_file():
        return None
    st = patch.stat()
    if not rehash and record.get("size") == st.st_size and record.get("mtime_ns") == st.st_mtime_ns:
        return record
    return record if file_sha256(patch) == record.get("sha256") else None


def write_manifest(out: Path, concepts: list[str], *, rehash: bool = False) -> list[dict]:
    """Rebuild manifest.jsonl from the jobs' records (protocol order), under a lock, atomically; patches are
    re-hashed only where their size or time changed (``job_record``), or all with ``rehash``."""
    fd = os.open(out / ".manifest.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        records = [r for r in (job_record(out, c, rehash=rehash) for c in concepts) if r is not None]
        tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        os.replace(tmp, out / MANIFEST)
        return records
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_manifest(out: Path) -> list[dict]:
    path = out / MANIFEST
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# -- the jobs ------------------------------------------------------------------------------------------------
def run_jobs(
    pipe,
    *,
    method: str,
    preset: str | None,
    overrides: dict,
    requests: dict,
    out: Path,
    concepts: list[str],
    model_id: str,
    evaluate_fn=None,
    progress: bool = True,
    log=print,
) -> list[dict]:
    """Erase every concept of ``requests`` (concept -> EraseRequest) that is not done yet; returns the manifest."""
    for k, concept in enumerate(requests, 1):
        if (job_record(out, concept) or {}).get("status") == "done":
            log(f"[{k}/{len(requests)}] {concept}: done already (patch verified), skipped")
            continue
        folder = out / concept
        stale = folder / JOB_FILE
        if stale.exists():  # a record whose patch no longer verifies: redo the job from scratch
            stale.unlink()
            (folder / "erasure_patch.safetensors").unlink(missing_ok=True)
        log(f"[{k}/{len(requests)}] erasing {concept} with {method}")
        t0 = time.time()
        patch = erase_concept(
            pipe,
            method,
            requests[concept],
            folder,
            preset=preset,
            overrides=overrides,
            resume=True,
            progress=progress,
            model_id=model_id,
        )
        patch_file = folder / "erasure_patch.safetensors"
        st = patch_file.stat()
        record = {
            "concept": concept,
            "status": "done",
            "patch": concept,
            "sha256": file_sha256(patch_file),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "seconds": round(time.time() - t0, 1),
            "erase_seconds": patch.config.get("efficiency", {}).get("erase_seconds"),
            "patch_bytes": patch.nbytes(),
        }
        if evaluate_fn is not None:
            record["metrics"] = evaluate_fn(concept, patch, folder)
        write_json_atomic(folder / JOB_FILE, record)
        write_manifest(out, concepts)
    return write_manifest(out, concepts)


def joint_request(requests: list, kind: str):
    """One request erasing every concept at once: all forget / anchor prompt pairs, retain
    prompts naming none of them."""
    names = [r.concept for r in requests]
    forget = [p for r in requests for p in r.forget_prompts]
    anchors = [p for r in requests for p in r.anchor_prompts]
    retain = [p for p in requests[0].retain_prompts if all(p in r.retain_prompts for r in requests[1:])]
    return EraseRequest(
        "+".join(names), kind, requests[0].anchor, forget, anchors, retain, requests[0].seed, requests[0].protocol
    )
