"""ErasurePatch: the artefact of an erasure, as small safetensors deltas + a JSON config.

Folder layout::

    erasure_patch.safetensors   deltas keyed by component-prefixed names (unet., text_encoder., generator.)
                                  NAME                  dense delta of a whole tensor
                                  NAME::mask, NAME::values   masked delta: packed bit mask (uint8) + the
                                                        values of the selected entries, in mask order
    erasure_config.json         request, method + config, base-model fingerprint, package version, metrics

The fingerprint is a SHA-256 of the base tensors the patch touches (names,
shapes and float32 bytes): a patch refuses a base model whose tensors differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import EraseError

PATCH_FILE = "erasure_patch.safetensors"
CONFIG_FILE = "erasure_config.json"
FORMAT = "erasekit-patch"
FORMAT_VERSION = 1


class PatchError(EraseError):
    """A patch is missing, corrupt, non-finite, or made for another base model."""


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _pack(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.detach().cpu().flatten().numpy().astype(np.uint8)))


def _unpack(bits: torch.Tensor, shape) -> torch.Tensor:
    n = int(np.prod(shape)) if len(shape) else 1
    return torch.from_numpy(np.unpackbits(bits.numpy())[:n].astype(bool)).view(*shape)


@dataclass
class ErasurePatch:
    """Deltas for some base tensors. ``masks[name]`` is None for dense deltas; masked deltas hold values only."""

    deltas: dict[str, torch.Tensor]  # dense: full-shape delta; masked: 1-D values in mask order
    masks: dict[str, torch.Tensor | None]
    config: dict = field(default_factory=dict)

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_diff(cls, base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], masks: dict[str, torch.Tensor | None],
                  config: dict | None = None, dtype: torch.dtype = torch.float32) -> "ErasurePatch":
        """Deltas tuned - base for the selected tensors (computed in float32, stored in ``dtype``)."""
        deltas, out_masks = {}, {}
        for name, mask in masks.items():
            d = tuned[name].detach().float().cpu() - base[name].detach().float().cpu()
            if mask is None:
                deltas[name] = d.to(dtype)
                out_masks[name] = None
            else:
                m = mask.detach().cpu().bool()
                deltas[name] = d[m].to(dtype)
                out_masks[name] = m
        cfg = dict(config or {})
        cfg.setdefault("format", FORMAT)
        cfg.setdefault("format_version", FORMAT_VERSION)
        cfg["base_fingerprint"] = fingerprint({n: base[n] for n in masks})
        cfg["shapes"] = {n: list(base[n].shape) for n in masks}
        cfg["stored_dtype"] = str(dtype).replace("torch.", "")
        cfg.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
        return cls(deltas, out_masks, cfg)

    # -- queries ---------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self.deltas)

    def dense_delta(self, name: str) -> torch.Tensor:
        """The full-shape float32 delta of one tensor."""
        mask = self.masks[name]
        if mask is None:
            return self.deltas[name].float()
        full = torch.zeros(mask.shape, dtype=torch.float32)
        full[mask] = self.deltas[name].float()
        return full

    def check_finite(self) -> None:
        bad = [n for n, d in self.deltas.items() if not torch.isfinite(d.float()).all()]
        if bad:
            raise PatchError(f"patch holds non-finite values in {len(bad)} tensor(s), e.g. {bad[0]}; refusing to apply it")

    def nbytes(self) -> int:
        return sum(d.numel() * d.element_size() for d in self.deltas.values()) + sum(
            (m.numel() + 7) // 8 for m in self.masks.values() if m is not None
        )

    # -- files ---------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the patch folder atomically (temp folder, then rename). Refuses an existing patch unless ``overwrite``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        if (folder / PATCH_FILE).exists() and not overwrite:
            raise PatchError(f"{folder} already holds a patch; pass --overwrite or choose another --out")
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".patch-{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors = {}
        for name, delta in self.deltas.items():
            if self.masks[name] is None:
                tensors[name] = delta.contiguous()
            else:
                tensors[f"{name}::mask"] = _pack(self.masks[name])
                tensors[f"{name}::values"] = delta.contiguous()
        save_file(tensors, str(tmp / PATCH_FILE), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        (tmp / CONFIG_FILE).write_text(json.dumps(self.config, indent=2, default=str))
        for f in (PATCH_FILE, CONFIG_FILE):
            os.replace(tmp / f, folder / f)
        tmp.rmdir()
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "ErasurePatch":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        if not folder.is_dir():
            raise PatchError(f"patch folder {folder} does not exist")
        for f in (PATCH_FILE, CONFIG_FILE):
            if not (folder / f).exists():
                raise PatchError(f"patch folder {folder} is missing {f}; is it an erasekit patch?")
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
            raw = load_file(str(folder / PATCH_FILE))
        except (json.JSONDecodeError, SafetensorError, OSError) as e:
            raise PatchError(f"patch in {folder} is corrupt: {str(e).splitlines()[0]}") from e
        if config.get("format") != FORMAT:
            raise PatchError(f"{folder / CONFIG_FILE} is not an erasekit patch config")
        shapes = config.get("shapes", {})
        deltas, masks = {}, {}
        for key, t in raw.items():
            if key.endswith("::values"):
                name = key[: -len("::values")]
                if f"{name}::mask" not in raw or name not in shapes:
                    raise PatchError(f"patch in {folder}: {name} has values but no mask/shape")
                masks[name] = _unpack(raw[f"{name}::mask"], shapes[name])
                if int(masks[name].sum()) != t.numel():
                    raise PatchError(f"patch in {folder}: {name} mask selects {int(masks[name].sum())} entries but holds {t.numel()} values")
                deltas[name] = t
            elif not key.endswith("::mask"):
                deltas[key], masks[key] = t, None
        return cls(deltas, masks, config)
