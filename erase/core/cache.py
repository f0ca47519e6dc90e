"""Shared cache entries that several processes may build at once (an ``accelerate`` batch, a test run beside an
evaluation): one builder per entry, never a half-written file, never a corrupted entry used.

``cached_tensors(path, build)`` returns the tensors stored at ``path`` or builds them once:

* a lock per entry (``<entry>.lock``, an advisory ``flock``): a second process that needs the same entry waits for
  the first and then reads what it wrote, instead of building it again or renaming its own file over it;
* the entry is written to a temp name unique to the process and renamed into place;
* its size and SHA-256 go to ``<entry>.sha256`` after the rename; an entry whose record is missing or does not
  match (truncated, corrupted, or left by a crash before the record) is rebuilt, never used;
* a cache folder that cannot be written (read-only, vanished) is said once on stderr and the tensors are built
  without it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable

import torch

from .files import DiskFullError, write_bytes_atomic, write_text_atomic

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: entries are still verified, building is not serialised
    fcntl = None

_warned: set[str] = set()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verified_bytes(path: Path) -> bytes | None:
    """The entry's bytes, read once, if they match the size and SHA-256 recorded when it was written; else None."""
    try:
        record = json.loads(_record_path(path).read_text())
        data = path.read_bytes()
        return data if len(data) == record["size"] and hashlib.sha256(data).hexdigest() == record["sha256"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def _entry_lock(path: Path):
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def entry_lock(path: str | Path):
    """Hold ``path``'s entry lock (waiting for another holder); a cache folder where no lock can be made is said
    once and the work goes on unserialised, as it would without a cache."""
    path = Path(path)
    with ExitStack() as stack:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stack.enter_context(_entry_lock(path))
        except OSError as e:
            _warn_once(path.parent, e)
        yield


def _warn_once(folder: Path, error: Exception) -> None:
    if str(folder) not in _warned:
        _warned.add(str(folder))
        print(
            f"erasekit: cache folder {folder} is not usable ({getattr(error, 'strerror', None) or error}); going on "
            "without the cache (set ERASEKIT_CACHE to a writable folder to keep results between runs)",
            file=sys.stderr,
        )


def _load(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    write_bytes_atomic(path, data)
    write_text_atomic(_record_path(path), json.dumps({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}))


def cached_tensors(path: str | Path, build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The tensors of the cache entry ``path``, built by ``build()`` once across processes (see the module doc)."""
    path = Path(path)
    data = _verified_bytes(path)
    if data is not None:
        return _load(data)
    with entry_lock(path):  # no lock to be had (an unusable folder, said once): built here, and not kept
        data = _verified_bytes(path)
        if data is not None:  # built by another process while this one waited
            return _load(data)
        tensors = build()
        try:
            _write(path, tensors)
        except (OSError, DiskFullError) as e:  # an unwritable or full cache folder: the tensors are used without it
            _warn_once(path.parent, e)
        return tensors
