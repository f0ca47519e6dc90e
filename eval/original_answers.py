"""The original model's answer set, generated once per (model, protocol) and cached for every patch evaluated later.

A cache entry is ``<cache>/answer-sets/<key>/``: ``images/`` and ``complete``, a JSON record (the protocol and
the SHA-256 of every image) written last, so an entry without it is unfinished. Every use checks the record:
an image changed or removed since it was cached is regenerated before use (said once on stderr), and scoring
checks each image's hash again as it reads it (``recorded_hashes``), so one changed while in use stops the
evaluation with one line instead of scoring other pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from erase.core.cache import entry_lock
from erase.core.data import cache_dir, model_identity
from erase.core.files import file_sha256, write_text_atomic
from erase.core.patch import applied_patches, patches_disabled

from .answer_set import answer_files, check_answer_set, generate_answer_set, image_hashes

COMPLETE = "complete"


def original_folder(pipe, protocol, cache: Path | None = None, answers=None) -> Path:
    """Where the unpatched ``pipe``'s answer set for ``protocol`` is cached (the model's
    identity and the whole protocol; for a latent-seeded protocol also what ``answers`` renders)."""
    record = {"model": model_identity(pipe), "protocol": protocol.to_dict()}
    if answers is not None:
        record["answers"] = answers.key
    key = json.dumps(record, sort_keys=True)
    return Path(cache or cache_dir()) / "answer-sets" / hashlib.sha256(key.encode()).hexdigest()[:24]


def recorded_hashes(images: str | Path) -> dict[str, str] | None:
    """File name -> SHA-256 recorded when the answer set in ``images`` was cached; None for a
    folder that is no cache entry."""
    try:
        record = json.loads((Path(images).parent / COMPLETE).read_text())
    except (OSError, ValueError):
        return None
    hashes = record.get("sha256") if isinstance(record, dict) else None
    return hashes if isinstance(hashes, dict) else None


def _record(folder: Path, protocol) -> None:
    write_text_atomic(
        folder / COMPLETE, json.dumps({"protocol": protocol.to_dict(), "sha256": image_hashes(folder / "images")})
    )


def _ready(folder: Path, protocol) -> bool:
    """True when the entry is complete and every image is as recorded; changed or missing images are removed
    (with the record) so that generation fills them in again. An entry cached before hashes were recorded is
    hashed now."""
    if not (folder / COMPLETE).exists():
        return False
    hashes = recorded_hashes(folder / "images")
    if hashes is None:
        try:
            _record(folder, protocol)
        except OSError:
            pass
        return True
    changed = [
        name
        for name, digest in hashes.items()
        if not (folder / "images" / name).is_file() or file_sha256(folder / "images" / name) != digest
    ]
    if not changed:
        return True
    print(
        f"erasekit: cached answer set {folder}: {len(changed)} image(s) changed or gone since they were cached "
        f"({changed[0]}...); regenerating them",
        file=sys.stderr,
    )
    for name in changed:
        (folder / "images" / name).unlink(missing_ok=True)
    (folder / COMPLETE).unlink(missing_ok=True)
    return False


def original_answer_set(
    pipe, protocol, *, batch_size: int = 64, progress: bool = True, cache: Path | None = None, answers=None
) -> Path:
    """The unpatched model's answer set for ``protocol`` (images folder), generated once and cached.

    Patches applied to ``pipe`` are taken off for the duration and put back bit-exactly; the cache key is
    the base model's identity and the whole protocol (seeds, sampler, steps, guidance, template, size).
    Generation is resumable; the folder counts as ready only once every image is there and recorded.
    ``answers`` (an ``eval.latent_answers.LatentAnswers``) renders a latent-seeded protocol's set instead.
    """
    with patches_disabled(pipe):  # the identity (and the images) of the model without its patches
        folder = original_folder(pipe, protocol, cache, answers)
        with entry_lock(folder):  # two processes that need one entry: the second waits, then uses it
            if not _ready(folder, protocol):
                if answers is None:
                    generate_answer_set(pipe, protocol, folder / "images", batch_size=batch_size, progress=progress)
                    check_answer_set(protocol, folder / "images")
                else:
                    answers.generate(folder / "images", progress=progress)
                    answers.check(folder / "images")
                _record(folder, protocol)
    return folder / "images"


def reuse_original(pipe, protocol, images: Path, cache: Path | None = None, answers=None) -> int:
    """Copy the cached answer set of the unpatched ``pipe`` into ``images`` (files not there yet); returns how many.

    Evaluating the same original model again (another target, another batch) then generates nothing. A copy
    whose bytes differ from the recorded hash is not kept (the evaluation generates that image itself).
    """
    if applied_patches(pipe):
        return 0
    cached = original_folder(pipe, protocol, cache, answers)
    if not _ready(cached, protocol):
        return 0
    hashes = recorded_hashes(cached / "images") or {}
    images.mkdir(parents=True, exist_ok=True)
    copied = 0
    for src in answer_files(cached / "images"):
        dst = images / src.name
        if dst.exists():
            continue
        tmp = images / f".{src.name}.tmp"
        shutil.copyfile(src, tmp)
        if file_sha256(tmp) != hashes.get(src.name):
            tmp.unlink()
            continue
        os.replace(tmp, dst)
        copied += 1
    return copied


def remember_original(pipe, protocol, images: Path, cache: Path | None = None, answers=None) -> None:
    """Copy an unpatched model's finished answer set into the cache (so patches evaluated later reuse it)."""
    folder = original_folder(pipe, protocol, cache, answers)
    if (folder / COMPLETE).exists():
        return
    tmp = folder.with_name(f".{folder.name}-{os.getpid()}.tmp")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(images, tmp / "images", ignore=shutil.ignore_patterns(".*"))
        _record(tmp, protocol)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError:  # an unwritable cache only costs a regeneration later
        shutil.rmtree(tmp, ignore_errors=True)
