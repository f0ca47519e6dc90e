"""StyleGANPipeline: our folder format (config.json + generator.safetensors), seeds or latents in, images out."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from erase.core.errors import EraseError
from erase.core.files import check_writable, read_json_object

from .config import CONFIG_FILE, MODEL_TYPE, WEIGHTS_FILE, StyleGANConfig, StyleGANLoadError
from .networks import Generator

OUTPUT_TYPES = ("pil", "np", "pt")


def _list(items: list[str]) -> str:
    return ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")


def _mismatch(missing: list[str], unexpected: list[str], misshaped: list[str]) -> str:
    """'missing a, b; unexpected c; misshaped d [1] != [2]' for the non-empty lists ('' if everything fits)."""
    return "; ".join(
        f"{what} {_list(items)}"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped))
        if items
    )


def _load_into(generator: Generator, state: dict[str, torch.Tensor], source: str, fix: str) -> None:
    """load_state_dict with a one-line error naming what does not fit."""
    own = generator.state_dict()
    problems = _mismatch(
        [k for k in own if k not in state],
        [k for k in state if k not in own],
        [
            f"{k} {list(state[k].shape)} != {list(own[k].shape)}"
            for k in own
            if k in state and state[k].shape != own[k].shape
        ],
    )
    if problems:
        raise StyleGANLoadError(f"{source} does not fit its config: {problems}; {fix}")
    generator.load_state_dict(state)


class StyleGANPipeline:
    """A StyleGAN2 generator behind the model interface erasekit uses: ``components == {"generator": G}``,
    so patches and selections name its parameters ``generator.<name>``."""

    def __init__(self, generator: Generator, name_or_path: str | None = None):
        self.generator = generator
        self.name_or_path = name_or_path

    @property
    def components(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    @property
    def config(self) -> StyleGANConfig:
        return self.generator.config

    @property
    def device(self) -> torch.device:
        return self.generator.w_avg.device

    def to(self, device) -> "StyleGANPipeline":
        self.generator.to(device)
        return self

    # -- files ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> "StyleGANPipeline":
        """Load a folder written by ``save_pretrained``: ``config.json`` + ``generator.safetensors``."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        if folder.is_file():
            if folder.suffix in (".pt", ".pth"):
                raise StyleGANLoadError(
                    f"{folder} is a checkpoint file, not a StyleGAN folder; load a rosinality "
                    "checkpoint with load_rosinality"
                )
            raise StyleGANLoadError(
                f"{folder} is a file; pass the StyleGAN folder that holds {CONFIG_FILE} and {WEIGHTS_FILE}"
            )
        if not folder.is_dir():
            raise StyleGANLoadError(f"StyleGAN folder {folder} does not exist")
        cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not cfg_path.is_file():
            raise StyleGANLoadError(
                f"{folder} has no {CONFIG_FILE}; pass a folder written by StyleGANPipeline.save_pretrained "
                "(a rosinality .pt loads with load_rosinality)"
            )
        raw = read_json_object(
            cfg_path,
            holds="StyleGAN config fields",
            fix="re-save the model with save_pretrained",
            error=StyleGANLoadError,
        )
        try:
            config = StyleGANConfig.from_dict(raw)
        except EraseError as e:
            raise StyleGANLoadError(f"{cfg_path}: {e}") from e
        if not weights.is_file():
            others = sorted(p.name for p in folder.glob("*.pt*")) + sorted(p.name for p in folder.glob("*.bin"))
            hint = f" ({others[0]} is not read: only safetensors are)" if others else ""
            raise StyleGANLoadError(
                f"{folder} has no {WEIGHTS_FILE}{hint}; write the folder with StyleGANPipeline.save_pretrained"
            )
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as e:
            raise StyleGANLoadError(
                f"{weights} is corrupt ({str(e).splitlines()[0]}); re-save the model with save_pretrained"
            ) from e
        generator = Generator(config)
        _load_into(
            generator,
            state,
            str(weights),
            f"{CONFIG_FILE} and {WEIGHTS_FILE} come from different models; re-save them together with save_pretrained",
        )
        return cls(generator.eval(), name_or_path=str(folder)).to(device)

    def save_pretrained(
        self, folder: str | os.PathLike, overwrite: bool = False, dtype: torch.dtype | None = None
    ) -> Path:
        """Write ``config.json`` + ``generator.safetensors`` into a temp folder next to ``folder``, then rename it
        into place, so ``folder`` is never half-written. An existing non-empty ``folder`` is replaced only with
        ``overwrite=True`` (moved aside, then deleted once the new one is in place). ``dtype`` (e.g.
        ``torch.float16``) stores the floating-point weights in that precision, half the file; ``from_pretrained``
        casts them back to the generator's own dtype."""
        from safetensors.torch import save_file

        out = Path(
            os.path.abspath(check_writable("output folder", folder, folder=True))
        )  # "." and "x/" have a usable name
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise EraseError(f"{out} exists and is not empty; pass overwrite=True or choose another folder")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp, old = (out.with_name(f".{out.name}.{tag}-{os.getpid()}") for tag in ("tmp", "old"))
        for p in (tmp, old):
            shutil.rmtree(p, ignore_errors=True)
        try:
            tmp.mkdir()
            state = {
                k: v.detach().cpu().to(dtype if dtype is not None and v.is_floating_point() else v.dtype).contiguous()
                for k, v in self.generator.state_dict().items()
            }
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            (tmp / CONFIG_FILE).write_text(
                json.dumps({"model_type": MODEL_TYPE, **self.config.to_dict()}, indent=2) + "\n"
            )
            if out.exists():
                os.replace(out, old)
                try:
                    os.replace(tmp, out)
                except OSError:
                    os.replace(old, out)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    # -- sampling --------------------------------------------------------------------------
    def seed_latents(self, seeds) -> torch.Tensor:
        """z (N, z_dim) with z[i] drawn from ``torch.Generator().manual_seed(seeds[i])``: an image depends on its
        seed only, never on the batch it is generated in."""
        seeds = [seeds] if isinstance(seeds, int) else list(seeds)
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
                raise EraseError(f"seeds must be non-negative integers, got {s!r}")
        z_dim = self.config.z_dim
        if not seeds:
            return torch.zeros(0, z_dim)
        return torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])

    @torch.no_grad()
    def __call__(
        self,
        seeds=None,
        *,
        latents: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        noise_mode: str = "const",
        output_type: str = "pil",
        batch_size: int = 64,
    ):
        """Generate images for ``seeds`` (an int or a list of ints) or for ``latents``.

        ``latents`` is either z, shape (N, z_dim), mapped to w and used for every W+ row, or W+, shape
        (N, n_latent, style_dim), fed to synthesis as is. A 2-D tensor is always z, even when z_dim ==
        style_dim: to pass a single w, repeat it over the rows (``w[:, None].expand(-1, n_latent, -1)``).
        Truncation (w_avg + psi (w - w_avg)) applies to both. Only noise_mode "const" (and "none") is
        reproducible; "random" draws from the global RNG.

        Returns a list of PIL images ("pil"), a uint8 array (N, H, W, 3) ("np") or a float tensor
        (N, 3, H, W) in [0, 1] on the CPU ("pt").
        """
        if (seeds is None) == (latents is None):
            raise EraseError("pass either seeds or latents (exactly one of them)")
        if output_type not in OUTPUT_TYPES:
            raise EraseError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise EraseError(f"batch_size must be a positive integer, got {batch_size!r}")
        if (
            isinstance(truncation_psi, bool)
            or not isinstance(truncation_psi, (int, float))
            or not math.isfinite(truncation_psi)
        ):
            raise EraseError(f"truncation_psi must be a finite number, got {truncation_psi!r}")
        G, cfg = self.generator, self.config
        latents = self.seed_latents(seeds) if seeds is not None else torch.as_tensor(latents)
        if latents.ndim == 2 and latents.shape[1] == cfg.z_dim:
            is_z = True
        elif latents.ndim == 3 and tuple(latents.shape[1:]) == (cfg.n_latent, cfg.style_dim):
            is_z = False
        else:
            raise EraseError(
                f"latents must be z (N, {cfg.z_dim}) or W+ (N, {cfg.n_latent}, "
                f"{cfg.style_dim}), got {tuple(latents.shape)}"
            )
        images = []
        for chunk in latents.split(batch_size):
            chunk = chunk.to(self.device, G.w_avg.dtype)
            ws = G.mapping(chunk).unsqueeze(1).expand(-1, cfg.n_latent, -1) if is_z else chunk
            images.append(G.synthesis(G.truncate(ws, truncation_psi), noise_mode).float().cpu())
        img = torch.cat(images) if images else torch.zeros(0, 3, cfg.resolution, cfg.resolution)
        if output_type == "pt":
            return ((img + 1) / 2).clamp(0, 1)
        arr = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return arr
        from PIL import Image

        return [Image.fromarray(a) for a in arr]
