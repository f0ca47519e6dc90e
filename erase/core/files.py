"""Small file helpers every reader and writer shares: output-folder checks, JSON objects read with
clear errors, atomic writes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .errors import EraseError


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 16 MB blocks (patches and model files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def check_writable(option: str, path: str | Path, *, folder: bool) -> Path:
    """Raise unless ``path`` (a folder if ``folder``, else a file) can be created or written: nothing on its way
    is a file and its nearest existing ancestor is writable. Writes nothing."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise EraseError(f"{option} {path} is a file; give a folder path")
    if not folder and path.is_dir():
        raise EraseError(f"{option} {path} is a folder; give a file path")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise EraseError(f"{option} {path} lies under the file {parent}; choose another {option}")
            break
    target = path if folder and path.is_dir() else next(p for p in path.absolute().parents if p.exists())
    if not os.access(target, os.W_OK | os.X_OK):
        raise EraseError(f"{option} {path}: cannot write in {target} (permission denied); choose another {option}")
    return path


def read_json_object(path: str | Path, *, holds: str, fix: str, error: type[Exception] = EraseError) -> dict:
    """A JSON file that must hold an object (a preset, a model config): else ``error``
    saying what is wrong and ``fix``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON ({str(e).splitlines()[0]}); {fix}") from e
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object of {holds}, got a {type(data).__name__}; {fix}")
    return data


NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # full disk, file-size limit, quota


class DiskFullError(EraseError):
    """A write ran out of space; what was there before is intact and nothing half-written is left."""


def _size(n: int | None) -> str:
    return "" if n is None else f" ({n / 1e6:.1f} MB to write)" if n >= 1e5 else f" ({n} bytes to write)"


@contextmanager
def writing(path: str | Path, *, cleanup: tuple[str | Path, ...] = (), size: int | None = None):
    """Around a write to ``path``: whatever stops it (an error, Ctrl-C) removes the temporaries in ``cleanup``; out of
    space (a full disk, a quota, a file-size limit) it raises a one-line DiskFullError naming the path and what it
    needed."""
    try:
        yield
    except BaseException as e:  # OSError, a library's own error around one (safetensors: "(os error 28)"), Ctrl-C
        for t in cleanup:
            t = Path(t)
            shutil.rmtree(t, ignore_errors=True) if t.is_dir() else t.unlink(missing_ok=True)
        code = no_space_errno(e)
        if code is None:
            raise
        raise DiskFullError(
            f"no space left writing {path}{_size(size)}: {os.strerror(code).lower()}; free some space "
            "or write elsewhere (what was there before is intact)"
        ) from None


def no_space_errno(e: BaseException) -> int | None:
    """The errno of an out-of-space failure (an OSError, or an error whose message carries
    "(os error N)"), else None."""
    code = e.errno if isinstance(e, OSError) else None
    if code is None:
        found = re.search(r"\(os error (\d+)\)", str(e))
        code = int(found.group(1)) if found else None
    return code if code in NO_SPACE else None


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file next to ``path`` (a name unique to this process and call), then rename it over
    ``path``: never a half-written file, and out of space a DiskFullError with the temp file gone."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with writing(path, cleanup=(tmp,), size=len(data)):
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temp file next to ``path``, then rename it over ``path`` (never a half-written file)."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, data, **kw) -> None:
    """Write JSON to a temp file next to ``path``, then rename it over ``path``."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str, **kw))


_DEFERRED = (signal.SIGINT, signal.SIGTERM)
# called between the two renames of ``swap_dir`` (tests use it to signal from inside the swap; None in normal use)
swap_hook: Callable[[], None] | None = None


@contextmanager
def signals_deferred():
    """Hold SIGINT and SIGTERM until the block is done (the first one is delivered right after it): a Ctrl-C cannot
    land in the middle of a multi-step file operation. Python runs signal handlers in the main thread only, so the
    deferral is a handler there that records the signal (blocking the signal would not do: the kernel hands a
    process-directed signal to any thread that has it unblocked, torch's included). Elsewhere a no-op: no
    KeyboardInterrupt is raised in other threads."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.getsignal(s) for s in _DEFERRED}
    for s in _DEFERRED:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if received:
            signal.raise_signal(received[0])


def swap_dir(tmp: str | Path, final: str | Path) -> None:
    """Put the finished folder ``tmp`` in the place of ``final`` (which may not exist): ``final`` becomes
    ``final.old``, ``tmp`` becomes ``final``, then ``final.old`` goes. Signals wait until the swap is done, so a
    folder is never left with neither the old nor the new version in place; a crash (SIGKILL) between the renames
    leaves ``final.old``, which ``recover_swapped_dir`` puts back."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(final.name + ".old")
    with signals_deferred():
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        if swap_hook is not None:
            swap_hook()
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)


def recover_swapped_dir(final: str | Path) -> bool:
    """After a crash inside ``swap_dir``: if ``final`` is missing and ``final.old`` is there, put it back. True if
    ``final`` exists afterwards."""
    final = Path(final)
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.exists():
        old.rename(final)
    return final.exists()


@contextmanager
def hold_folder(folder: str | Path, command: str):
    """Hold ``folder`` for this process while ``command`` writes into it: a second process that wants the same
    folder is refused at once with one line naming the holder's pid. The lock is an advisory ``flock`` on
    ``.<folder name>.lock`` beside the folder, so it dies with its process: a lock left by a killed run is simply
    taken over. Where the platform has no ``flock`` the folder is not held (the rest still works)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = folder.with_name(f".{folder.name}.lock")
    while True:
        handle = open(lock, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise EraseError(
                f"{folder} is in use by {holder}; wait for it to finish or choose another output folder"
            ) from None
        # the holder before us may have removed the file between our open and our lock: lock the file that is there
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} ({command})")
        handle.flush()
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()
