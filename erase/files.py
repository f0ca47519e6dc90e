"""Small file helpers every writer shares: output-folder checks and atomic JSON writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import EraseError


def check_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Raise unless ``path`` is, or can be created as, a writable folder. Writes nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EraseError(f"{option} {path} is a file, not a folder; choose a folder path")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != path and not probe.is_dir():
        raise EraseError(f"{option} {path} lies under the file {probe}; choose a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise EraseError(f"{option} {path}: the folder {probe} is not writable; choose a folder you can write to")
    return path


def write_json_atomic(path: str | Path, data, **kw) -> None:
    """Write JSON to a temp file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str, **kw))
    os.replace(tmp, path)
