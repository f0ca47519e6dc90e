"""The answer set of a protocol: one PNG per (concept of each axis, seed), generated in batches, resumable.

Images already on disk are not regenerated, so an interrupted evaluation picks
up where it stopped. Each PNG is written to a temp name and renamed, so a
killed run never leaves a half-written image behind. Generation uses the
protocol's sampler (``eval.samplers``), not whatever the pipeline carries.

Scoring reads the set back with ``iter_answer_set``: a few PNGs at a time as
uint8, so memory does not grow with the number of images (5,100 images at
512 px would be 16 GB as float32).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from erase.core.errors import EraseError
from erase.core.files import file_sha256, write_text_atomic, writing

from .generate import generate, protocol_settings
from .protocols import Protocol
from .samplers import protocol_scheduler


class AnswerSetError(EraseError):
    """An answer-set image is missing or unreadable."""


def image_name(*values) -> str:
    """File name of one answer-set image: ``image_name(style, obj, seed)`` -> ``Style_Object_seed0.png``."""
    *concepts, seed = values
    return "_".join(concepts) + f"_seed{seed}.png"


def progress_bar(total: int, desc: str, *, initial: int = 0, enabled: bool = True):
    """One tqdm bar on stderr with the job's real total (so it shows an ETA); silent when disabled."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="img",
        file=sys.stderr,
        disable=not enabled,
        mininterval=1,
        dynamic_ncols=True,
    )


def generate_answer_set(
    pipe,
    protocol: Protocol,
    folder: str | Path,
    *,
    batch_size: int = 64,
    progress: bool = True,
    entries: list[tuple] | None = None,
) -> dict:
    """Generate the missing images of ``protocol`` into ``folder`` with the protocol's sampler.

    ``entries`` restricts generation to part of the answer set (tuples as ``protocol.answer_set()`` gives them;
    seeds outside the protocol's are allowed); the folder's manifest is written only for the whole answer set.
    Returns counts and the sampler record: which scheduler the pipeline carried and which one was applied.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    whole = entries is None
    entries = protocol.answer_set() if whole else list(entries)
    todo = [e for e in entries if not (folder / image_name(*e)).exists()]
    with (
        protocol_scheduler(pipe, protocol.sampler) as sampler,
        progress_bar(
            len(entries), "erase eval: generating", initial=len(entries) - len(todo), enabled=progress
        ) as bar,
    ):
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            images = generate(
                pipe,
                [protocol.prompt(*e[:-1]) for e in chunk],
                [e[-1] for e in chunk],
                **protocol_settings(protocol),
                batch_size=batch_size,
                progress=False,
            )
            for e, img in zip(chunk, images):
                path = folder / image_name(*e)
                tmp = path.with_name(
                    f".{path.name}.{os.getpid()}.tmp"
                )  # unique: two processes may fill one cached set
                with writing(path, cleanup=(tmp,), size=img.nbytes):  # the images already cached stay usable
                    Image.fromarray(img).save(tmp, format="PNG")
                os.replace(tmp, path)
            bar.update(len(chunk))
    if whole:
        _write_manifest(protocol, folder)
    return {
        "total": len(entries),
        "generated": len(todo),
        "reused": len(entries) - len(todo),
        "sampler": {**sampler, "eta": protocol.eta},
    }


def _write_manifest(protocol: Protocol, folder: Path) -> None:
    names = protocol.axis_names
    prompted = protocol.template is not None
    manifest = [
        {
            "file": image_name(*e),
            **dict(zip(names, e[:-1])),
            "seed": e[-1],
            "prompt": protocol.prompt(*e[:-1]) if prompted else None,
        }
        for e in protocol.answer_set()
    ]
    write_text_atomic(folder / "manifest.jsonl", "".join(json.dumps(m) + "\n" for m in manifest))


@dataclass
class AnswerBatch:
    """A slice of the answer set: uint8 images (B, 3, H, W), label index per axis, prompts, answer-set entries."""

    images: torch.Tensor
    labels: dict[str, torch.Tensor]
    prompts: list[str] | None
    entries: list[tuple]

    def float_images(self) -> torch.Tensor:
        """This batch (and only it) as float in [0, 1]."""
        return self.images.float().div_(255.0)


def check_answer_set(protocol: Protocol, folder: str | Path) -> None:
    """Raise before scoring starts if any image of the answer set is missing."""
    folder = Path(folder)
    for e in protocol.answer_set():
        if not (folder / image_name(*e)).is_file():
            raise AnswerSetError(
                f"answer-set image {folder / image_name(*e)} is missing; run the same `erase eval` "
                "command again to generate it"
            )


def iter_answer_set(protocol: Protocol, folder: str | Path, batch_size: int = 64):
    """Yield the answer set in protocol order, ``batch_size`` PNGs at a time, as ``AnswerBatch`` of uint8 images."""
    folder = Path(folder)
    entries = protocol.answer_set()
    index = {a.name: {c: i for i, c in enumerate(a.concepts)} for a in protocol.axes}
    for i in range(0, len(entries), batch_size):
        chunk = entries[i : i + batch_size]
        arrays = [_read_png(folder / image_name(*e), protocol.resolution) for e in chunk]
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        labels = {a.name: torch.tensor([index[a.name][e[k]] for e in chunk]) for k, a in enumerate(protocol.axes)}
        prompts = [protocol.prompt(*e[:-1]) for e in chunk] if protocol.template is not None else None
        yield AnswerBatch(images, labels, prompts, chunk)


def _read_png(path: Path, resolution: int, sha256: str | None = None) -> np.ndarray:
    """One image as uint8 HxWx3; with ``sha256`` (a cached image's recorded hash) the bytes read are checked first."""
    try:
        data = path.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise AnswerSetError(
                f"cached answer-set image {path} changed after it was cached (its SHA-256 differs from the one "
                "recorded); run the same command again to rebuild the cached answer set"
            )
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError as e:
        raise AnswerSetError(
            f"answer-set image {path} is missing; run the same `erase eval` command again to generate it"
        ) from e
    except OSError as e:
        raise AnswerSetError(
            f"answer-set image {path} is unreadable ({e}); delete it and run the same `erase eval` command again"
        ) from e
    if arr.shape != (resolution, resolution, 3):
        raise AnswerSetError(
            f"answer-set image {path} is {arr.shape[1]}x{arr.shape[0]}, not the protocol's {resolution} px; "
            "delete it and run the same `erase eval` command again"
        )
    return arr


def read_images(
    folder: str | Path, entries: list[tuple], resolution: int, hashes: dict[str, str] | None = None
) -> list[np.ndarray]:
    """uint8 HxWx3 arrays of some answer-set entries; ``hashes`` (file name -> SHA-256, a cached set's
    record) checks each one read."""
    hashes = hashes or {}
    return [_read_png(Path(folder) / image_name(*e), resolution, hashes.get(image_name(*e))) for e in entries]


ANSWER_FILES = ("*.png", "*.safetensors")  # a prompted protocol's images; a latent-seeded one's float shards


def answer_files(folder: str | Path) -> list[Path]:
    """The answer-set files in ``folder`` (no manifest, no temp file)."""
    return sorted(p for pattern in ANSWER_FILES for p in Path(folder).glob(pattern))


def image_hashes(folder: str | Path) -> dict[str, str]:
    """File name -> SHA-256 of every answer-set file in ``folder`` (recorded when an answer set is cached)."""
    return {p.name: file_sha256(p) for p in answer_files(folder)}
