"""One output folder, one run: ``run.json`` names the run (model, patch and its SHA-256, protocol, and whatever
else makes two runs the same); another run's folder, or a folder of files no run wrote, is refused, so a
result is never overwritten by a different experiment. Shared by ``erase eval`` and ``erase attack``."""

from __future__ import annotations

import json
import os
import platform
from functools import lru_cache
from pathlib import Path

import torch

from erase import __version__
from erase.core.errors import EraseError
from erase.core.files import file_sha256

from .protocols import Protocol


class OutputFolderError(EraseError):
    """The output folder belongs to another run."""


def check_output_folder(
    out_dir: Path, identity: dict, command: str = "erase eval", resume: bool | None = None
) -> None:
    """Raise unless ``out_dir`` is new, empty, or holds this very run (same run.json): another run's results
    and files ``command`` did not write (a user's grid.png, notes) are never overwritten. ``resume=False`` (the
    CLI without --resume) refuses this very run's folder too, saying how to go on; ``None`` (the Python API)
    continues it. A latent protocol's run includes its renderer (``answers``: the evaluation's edit), which a check
    made before the renderer is set up (the CLI's) leaves out and the claim itself compares."""
    run_file = out_dir / "run.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputFolderError(
            f"--out {out_dir} is a file; {command} writes a folder there: choose a new --out folder"
        )
    if run_file.exists():
        try:
            existing = json.loads(run_file.read_text())
        except (json.JSONDecodeError, OSError):
            existing = None
        if isinstance(existing, dict) and "answers" not in identity:  # a check before the renderer is set up
            existing = {k: v for k, v in existing.items() if k != "answers"}
        if _normalised(existing) != _normalised(identity):
            raise OutputFolderError(f"output folder {out_dir} holds another run's results; choose a new --out folder")
        if resume is False:
            state, way = (
                ("finished", "score its images again")
                if (out_dir / "report.json").exists()
                else ("interrupted", "finish it (the images already there are kept)")
            )
            raise OutputFolderError(
                f"output folder {out_dir} holds an {state} {command} of this run; pass --resume to {way}, "
                "or choose a new --out folder"
            )
    elif (out_dir / "report.json").exists():
        raise OutputFolderError(f"output folder {out_dir} holds a report from another run; choose a new --out folder")
    elif out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if not _is_own_temp(p.name))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise OutputFolderError(
                f"output folder {out_dir} holds files {command} did not write ({shown}); "
                "choose a new --out folder or an empty one"
            )


def _is_own_temp(name: str) -> bool:
    """The temp files an interrupted evaluation can leave (e.g. .run.json.tmp): safe to write over."""
    return name.startswith(".") and name.endswith(".tmp")


def _normalised(identity) -> object:
    """A run identity with its protocol in today's shape, so folders written before axes existed still match."""
    if not isinstance(identity, dict) or not isinstance(identity.get("protocol"), dict):
        return identity
    try:
        return {**identity, "protocol": Protocol.from_dict(identity["protocol"]).to_dict()}
    except EraseError:
        return identity


def claim_output_folder(out_dir: Path, identity: dict, command: str = "erase eval") -> None:
    """Refuse a folder of another run; otherwise (re)claim it by writing run.json."""
    check_output_folder(out_dir, identity, command)
    if (out_dir / "run.json").exists():
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".run.json.tmp"
    tmp.write_text(json.dumps(identity, indent=2))
    os.replace(tmp, out_dir / "run.json")


def run_identity(model_id: str, patch: str | None, protocol: Protocol) -> dict:
    return {"model": str(model_id), "patch": patch, "patch_sha256": _patch_sha(patch), "protocol": protocol.to_dict()}


def _patch_sha(patch: str | None) -> str | None:
    """Hash of the patch file, so a folder evaluated with one patch is never reused for another."""
    if patch is None:
        return None
    f = Path(patch) / "erasure_patch.safetensors"
    if not f.exists():
        return None
    st = f.stat()
    return _file_sha256(str(f.resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=16)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    """SHA-256 of a file, computed once per (path, modification time, size): the CLI pre-check and the run share it."""
    return file_sha256(path)


def versions() -> dict:
    """The versions of what made a report (imported here: diffusers and transformers take seconds to import)."""
    import diffusers
    import torchmetrics
    import transformers

    return {
        "erasekit": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torchmetrics": torchmetrics.__version__,
        "python": platform.python_version(),
    }
