"""The answer set of a latent-seeded protocol (a GAN: no prompt; seed k is the generator's z of seed k).

The world hands over a renderer for one target (``World.answers``): its ``variants`` (``plain``, then the
target asked for by an edit) and ``render(variant, seeds)`` -> float images (N, 3, H, W) in [0, 1]. The set is
every variant's render of every protocol seed, stored as float32 safetensors shards of ``SHARD`` seeds
(``<variant>_seeds<first>-<last>.safetensors``): the generator's own floats, so that a figure read back is the
figure of the render itself (a PNG's 8 bits moved faces-mini's palette drift by 0.05 points). Shards already on
disk are not rendered again, and each is written to a temp name and renamed, so an interrupted evaluation picks
up where it stopped and never reads half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from erase.core.files import writing

from .answer_set import AnswerSetError, progress_bar
from .protocols import Protocol

SHARD = 256


class LatentAnswers:
    """One target's answer set on a latent-seeded protocol: how to render it, where each shard lives, how to
    read a shard back."""

    def __init__(self, protocol: Protocol, renderer):
        self.protocol, self.renderer = protocol, renderer
        self.variants = tuple(renderer.variants)
        seeds = list(protocol.seeds)
        self.shards = [seeds[i : i + SHARD] for i in range(0, len(seeds), SHARD)]

    @property
    def key(self) -> dict:
        """What the images depend on besides the model and the protocol (the cache key of the original's set)."""
        return {"answers": "latent", "shard": SHARD, "variants": list(self.variants), "renderer": self.renderer.record}

    @staticmethod
    def shard_name(variant: str, seeds: list[int]) -> str:
        return f"{variant}_seeds{seeds[0]}-{seeds[-1]}.safetensors"

    def generate(self, folder: str | Path, *, progress: bool = True, **_) -> dict:
        """Render the shards missing from ``folder``; returns how many images were rendered and reused."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        jobs = [(v, s) for v in self.variants for s in self.shards]
        todo = [(v, s) for v, s in jobs if not (folder / self.shard_name(v, s)).exists()]
        total = sum(len(s) for _, s in jobs)
        left = sum(len(s) for _, s in todo)
        with progress_bar(total, "erase eval: rendering", initial=total - left, enabled=progress) as bar:
            for variant, seeds in todo:
                images = self.renderer.render(variant, seeds).float().contiguous()
                path = folder / self.shard_name(variant, seeds)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                with writing(path, cleanup=(tmp,), size=images.nbytes):
                    save_file({"images": images, "seeds": torch.tensor(seeds)}, str(tmp))
                os.replace(tmp, path)
                bar.update(len(seeds))
        return {"total": total, "generated": left, "reused": total - left}

    def read(self, folder: str | Path, variant: str, seeds: list[int]) -> torch.Tensor:
        path = Path(folder) / self.shard_name(variant, seeds)
        again = "delete it and run the same `erase eval` command again"
        try:
            tensors = load_file(str(path))
        except FileNotFoundError as e:
            raise AnswerSetError(
                f"answer-set shard {path} is missing; run the same `erase eval` command again to render it"
            ) from e
        except (SafetensorError, OSError) as e:
            raise AnswerSetError(f"answer-set shard {path} is unreadable ({e}); {again}") from e
        images, stored = tensors.get("images"), tensors.get("seeds")
        size = self.protocol.resolution
        if stored is None or stored.tolist() != list(seeds) or images is None or images.shape[1:] != (3, size, size):
            raise AnswerSetError(f"answer-set shard {path} holds other seeds or another image size; {again}")
        return images

    def check(self, folder: str | Path) -> None:
        """Raise before scoring starts if a shard is missing."""
        for variant in self.variants:
            for seeds in self.shards:
                if not (Path(folder) / self.shard_name(variant, seeds)).is_file():
                    raise AnswerSetError(
                        f"answer-set shard {Path(folder) / self.shard_name(variant, seeds)} is missing; run the same "
                        "`erase eval` command again to render it"
                    )
