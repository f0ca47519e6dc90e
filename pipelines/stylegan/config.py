"""Configuration of a StyleGAN2 (rosinality's channel table by default) and the loading error."""

from __future__ import annotations

import math
from dataclasses import InitVar, asdict, dataclass, fields

from erase.core.errors import EraseError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "generator.safetensors"
MODEL_TYPE = "stylegan2"
SQRT2 = math.sqrt(2.0)


class StyleGANLoadError(EraseError):
    """A StyleGAN folder or checkpoint that cannot be loaded, or loaded safely."""


def rosinality_channels(channel_multiplier: int = 2) -> dict[int, int]:
    """Rosinality's width per resolution (config-f with channel_multiplier=2)."""
    cm = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}


@dataclass
class StyleGANConfig:
    """Architecture of a StyleGAN2 generator (and of its discriminator). JSON-serialisable via ``to_dict``.

    ``channels`` maps each resolution 4, 8, ..., ``resolution`` to its width; left out, it is rosinality's
    table for ``channel_multiplier`` (an init-only argument, not stored). ``z_dim`` defaults to ``style_dim``
    as in rosinality, whose mapping network keeps one width throughout.
    """

    resolution: int
    style_dim: int = 512
    n_mlp: int = 8
    z_dim: int | None = None
    lr_mlp: float = 0.01
    channels: dict[int, int] | None = None
    blur_kernel: tuple[int, ...] = (1, 3, 3, 1)
    channel_multiplier: InitVar[int] = 2

    def __post_init__(self, channel_multiplier: int):
        res = self.resolution
        if not isinstance(res, int) or res < 4 or res & (res - 1):
            raise EraseError(f"StyleGAN resolution must be a power of two >= 4, got {res!r}")
        if not isinstance(self.style_dim, int) or self.style_dim < 1:
            raise EraseError(f"StyleGAN style_dim must be a positive integer, got {self.style_dim!r}")
        if not isinstance(self.n_mlp, int) or self.n_mlp < 0:
            raise EraseError(f"StyleGAN n_mlp must be a non-negative integer, got {self.n_mlp!r}")
        if self.z_dim is None:
            self.z_dim = self.style_dim
        if self.n_mlp == 0 and self.z_dim != self.style_dim:
            raise EraseError(
                "StyleGAN without mapping layers (n_mlp=0) needs z_dim == style_dim, got "
                f"{self.z_dim} and {self.style_dim}"
            )
        table = (
            rosinality_channels(channel_multiplier)
            if self.channels is None
            else {int(k): v for k, v in self.channels.items()}
        )
        missing = [r for r in self.resolutions if r not in table]
        if missing:
            raise EraseError(
                f"StyleGAN channels lack the resolution(s) {missing}; give a width for each of {self.resolutions}"
            )
        bad = {r: table[r] for r in self.resolutions if not isinstance(table[r], int) or table[r] < 1}
        if bad:
            raise EraseError(f"StyleGAN channels must be positive integers, got {bad}")
        self.channels = {r: table[r] for r in self.resolutions}  # canonical: exactly the resolutions used
        self.blur_kernel = tuple(int(k) for k in self.blur_kernel)

    @property
    def resolutions(self) -> list[int]:
        return [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def n_latent(self) -> int:
        return 2 * int(math.log2(self.resolution)) - 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = {str(k): v for k, v in self.channels.items()}
        d["blur_kernel"] = list(self.blur_kernel)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StyleGANConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"model_type"})
        if unknown:
            raise EraseError(f"unknown StyleGAN config field(s) {unknown}; known: {sorted(known)}")
        if d.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise EraseError(f"config model_type is {d['model_type']!r}, not {MODEL_TYPE!r}")
        try:
            return cls(**{k: v for k, v in d.items() if k in known})
        except (TypeError, ValueError, AttributeError) as e:
            if isinstance(e, EraseError):
                raise
            raise EraseError(f"invalid StyleGAN config: {str(e).splitlines()[0]}") from e
