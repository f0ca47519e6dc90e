"""ErasurePatch: the artefact of an erasure, as small safetensors deltas + a JSON config, and its apply / remove.

Folder layout::

    erasure_patch.safetensors   deltas keyed by component-prefixed names (unet., text_encoder., generator.)
                                  NAME                  dense delta of a whole tensor
                                  NAME::mask, NAME::values   masked delta: packed bit mask (uint8) + the
                                                        values of the selected entries, in mask order
    erasure_config.json         request, method + config, base-model fingerprint, package version, metrics,
                                and the SHA-256 of the safetensors file (a half-written pair is refused)

This module is the bottom layer: it works on any model whose modules ``erase.core.components`` can list
(a diffusers pipeline, our StyleGAN pipeline, a plain ``nn.Module``); ``pipelines/`` re-exports it.

**Fingerprint.** A patch records, for every tensor it touches, the tensor's shape, dtype, SHA-256 and a
few probe values (fixed positions, the mean and the mean magnitude), plus probes of every other tensor of
the components it touches and a cheap identity (names, shapes, three probed tensors) of the other
components. Applying checks the SHA-256 when the model is loaded in the dtype the patch was made on,
and otherwise compares the probes in float32 within the rounding of the coarser dtype (2^-7 relative),
so a patch made on the float32 model applies to the same model loaded in fp16 or bf16, and a
different base model is refused.

**Apply / remove without copies.** ``apply_patch`` adds ``scale x delta`` to the touched entries and
keeps, per tensor, only the entries where subtracting the same delta would not give back the original
bits (usually none); ``remove_patch`` subtracts and restores those, so removal is bit-exact while an
applied patch costs no copy of the weights it touches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .components import component_of, model_components, named_parameters
from .errors import EraseError
from .files import file_sha256, writing
from .fingerprint import FINGERPRINT_VERSION, fingerprint_of, record_mismatch, tensor_record, tensor_sha256

PATCH_FILE = "erasure_patch.safetensors"
CONFIG_FILE = "erasure_config.json"
FORMAT = "erasekit-patch"
FORMAT_VERSION = 2
_STATE_ATTR = "_erasekit_patch_state"


class PatchError(EraseError):
    """A patch is missing, corrupt, non-finite, or made for another base model."""


def fingerprint(model, touched: list[str]) -> dict:
    """The base-model fingerprint of a patch touching ``touched`` (``erase.core.fingerprint``), of the unpatched
    weights."""
    return fingerprint_of(model, _base_params(model), touched)


def check_fingerprint(model, expected: dict) -> None:
    """Raise PatchError unless ``model`` (its unpatched weights) is the base the fingerprint describes."""
    if not isinstance(expected, dict) or expected.get("version") != FINGERPRINT_VERSION:
        raise PatchError(
            "patch has no usable base-model fingerprint (made by an older erasekit?); apply it "
            "with verify=False to force it"
        )
    params = _base_params(model)
    hint = "load the base model it was made on, or apply with verify=False to force it"
    for name, rec in expected["touched"].items():
        if name not in params:
            raise PatchError(f"patch touches {name}, which this model lacks; it was made for another architecture")
        why = record_mismatch(
            rec,
            tensor_record(name, params[name], exact=rec.get("dtype") == str(params[name].dtype).replace("torch.", "")),
        )
        if why:
            raise PatchError(f"patch was made on a different base model ({name}: {why}); {hint}")
    comps = model_components(model)
    for comp, ident in expected["components"].items():
        if comp not in comps:
            raise PatchError(f"patch was made on a model with a component {comp!r} this model lacks; {hint}")
        names = sorted(f"{comp}.{n}" for n, _ in comps[comp].named_parameters())
        layout = hashlib.sha256(json.dumps([(n, list(params[n].shape)) for n in names]).encode()).hexdigest()
        if layout != ident["layout"]:
            raise PatchError(f"patch was made on a model whose {comp} has another layout; {hint}")
        for name, rec in ident["probes"].items():
            why = record_mismatch(rec, tensor_record(name, params[name], exact=False))
            if why:
                raise PatchError(f"patch was made on a different base model ({name}: {why}); {hint}")


# ---------------------------------------------------------------------------------------------
# the patch


def _pack(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.detach().cpu().flatten().numpy().astype(np.uint8)))


def _unpack(bits: torch.Tensor, shape) -> torch.Tensor:
    n = int(np.prod(shape)) if len(shape) else 1
    unpacked = np.unpackbits(bits.numpy())
    if len(unpacked) < n:
        raise PatchError(f"mask holds {len(unpacked)} bits for a tensor of {n} entries")
    return torch.from_numpy(unpacked[:n].astype(bool)).view(*shape)


def _canonical_header(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys sorted: safetensors writes metadata from a hash map,
    in an order that changes from process to process, and the same patch must be the same bytes (batch jobs,
    reruns). Same length (padded with spaces, as the format allows), so no tensor offset moves."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) > n:  # cannot happen (same content), but never corrupt a file over it
            return
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


@dataclass
class ErasurePatch:
    """Deltas for some base tensors. ``masks[name]`` is None for dense deltas; masked deltas hold values only."""

    deltas: dict[str, torch.Tensor]  # dense: full-shape delta; masked: 1-D values in mask order
    masks: dict[str, torch.Tensor | None]
    config: dict = field(default_factory=dict)

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_diff(
        cls,
        base: dict[str, torch.Tensor],
        tuned: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor | None],
        config: dict | None = None,
        dtype: torch.dtype = torch.float32,
        fingerprint: dict | None = None,
    ) -> "ErasurePatch":
        """Deltas tuned - base for the selected tensors (computed in float32, stored in ``dtype``).

        Refuses a tuned tensor that differs from its base outside its mask: a method whose mask was
        not applied must fail loudly, not ship a tidy patch that silently drops part of what it learned.
        """
        deltas, out_masks = {}, {}
        for name, mask in masks.items():
            b, t = base[name].detach(), tuned[name].detach()
            if mask is None:
                deltas[name] = (t.float().cpu() - b.float().cpu()).to(dtype)
                out_masks[name] = None
                continue
            m = mask.detach().to(b.device).bool()
            off = (t != b) & ~m
            if bool(off.any()):
                raise PatchError(
                    f"{name} changed at {int(off.sum())} entries outside its mask: the method did not "
                    "apply its parameter selection (mask gradients after backward), so the patch would "
                    "not reproduce the trained model"
                )
            deltas[name] = (t[m].float() - b[m].float()).cpu().to(dtype)
            out_masks[name] = m.cpu()
        cfg = dict(config or {})
        cfg.setdefault("format", FORMAT)
        cfg.setdefault("format_version", FORMAT_VERSION)
        if fingerprint is not None:
            cfg["base_fingerprint"] = fingerprint
        cfg["shapes"] = {n: list(base[n].shape) for n in masks}
        cfg["stored_dtype"] = str(dtype).replace("torch.", "")
        cfg.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
        return cls(deltas, out_masks, cfg)

    # -- queries ---------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self.deltas)

    def components(self) -> list[str]:
        return sorted({component_of(n) for n in self.deltas})

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
            raise PatchError(
                f"patch holds non-finite values in {len(bad)} tensor(s), e.g. {bad[0]}; refusing to apply it"
            )

    def nbytes(self) -> int:
        return sum(d.numel() * d.element_size() for d in self.deltas.values()) + sum(
            (m.numel() + 7) // 8 for m in self.masks.values() if m is not None
        )

    def content_id(self) -> str:
        """SHA-256 of the deltas and masks (identifies a patch independently of its files)."""
        h = hashlib.sha256()
        for n in self.names():
            h.update(n.encode())
            h.update(tensor_sha256(self.deltas[n]).encode())
            if self.masks[n] is not None:
                h.update(_pack(self.masks[n]).numpy().tobytes())
        return h.hexdigest()

    # -- files ---------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the patch folder (temp files, then rename). Refuses an existing patch unless ``overwrite``."""
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
        with writing(folder / PATCH_FILE, cleanup=(tmp,), size=self.nbytes()):
            save_file(
                tensors, str(tmp / PATCH_FILE), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)}
            )
            _canonical_header(tmp / PATCH_FILE)
            self.config["patch_sha256"] = file_sha256(tmp / PATCH_FILE)
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config, indent=2, default=str))
        # the config names the tensors file's hash, so a kill between the two renames leaves a pair that is refused
        for f in (PATCH_FILE, CONFIG_FILE):
            os.replace(tmp / f, folder / f)
        tmp.rmdir()
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "ErasurePatch":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        if folder.is_file():
            hint = (
                f"pass the folder {folder.parent}"
                if folder.name in (PATCH_FILE, CONFIG_FILE)
                else "pass the folder that holds it"
            )
            raise PatchError(f"{folder} is a file; a patch is a folder with {PATCH_FILE} and {CONFIG_FILE}: {hint}")
        if not folder.is_dir():
            raise PatchError(f"patch folder {folder} does not exist")
        for f in (PATCH_FILE, CONFIG_FILE):
            if not (folder / f).exists():
                raise PatchError(f"patch folder {folder} is missing {f}; is it an erasekit patch?")
        try:
            config = json.loads((folder / CONFIG_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            raise PatchError(f"patch config {folder / CONFIG_FILE} is corrupt: {str(e).splitlines()[0]}") from e
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise PatchError(
                f"{folder / CONFIG_FILE} is not an erasekit patch config (a JSON object with format {FORMAT!r})"
            )
        sha = config.get("patch_sha256")
        if sha is not None and file_sha256(folder / PATCH_FILE) != sha:
            raise PatchError(
                f"{folder / PATCH_FILE} does not match its config (truncated, edited or "
                "half-written); re-create the patch"
            )
        try:
            raw = load_file(str(folder / PATCH_FILE))
        except (SafetensorError, OSError, ValueError) as e:
            raise PatchError(f"patch in {folder} is corrupt: {str(e).splitlines()[0]}") from e
        shapes = config.get("shapes")
        if not isinstance(shapes, dict) or not all(
            isinstance(s, list) and all(isinstance(d, int) and d >= 0 for d in s) for s in shapes.values()
        ):
            raise PatchError(
                f"{folder / CONFIG_FILE} has no valid 'shapes' (name -> list of sizes); the patch is corrupt"
            )
        deltas, masks = {}, {}
        for key, t in raw.items():
            if key.endswith("::values"):
                name = key[: -len("::values")]
                if f"{name}::mask" not in raw or name not in shapes:
                    raise PatchError(f"patch in {folder}: {name} has values but no mask/shape")
                masks[name] = _unpack(raw[f"{name}::mask"], shapes[name])
                if int(masks[name].sum()) != t.numel():
                    raise PatchError(
                        f"patch in {folder}: {name} mask selects {int(masks[name].sum())} entries "
                        f"but holds {t.numel()} values"
                    )
                deltas[name] = t
            elif not key.endswith("::mask"):
                if key not in shapes or list(t.shape) != shapes[key]:
                    raise PatchError(
                        f"patch in {folder}: {key} has shape {list(t.shape)} but the config says {shapes.get(key)}"
                    )
                deltas[key], masks[key] = t, None
        return cls(deltas, masks, config)


# ---------------------------------------------------------------------------------------------
# apply / remove on any model


def _state(model) -> dict:
    if not hasattr(model, _STATE_ATTR):
        setattr(model, _STATE_ATTR, {"applied": [], "base_records": {}})
    return getattr(model, _STATE_ATTR)


def _base_params(model) -> dict[str, torch.Tensor]:
    params = {n: p.data for n, p in named_parameters(model).items()}
    applied = _state(model)["applied"]
    if not applied:
        return params
    touched = {n for a in applied for n in a["restore"]}
    out = dict(params)
    for n in touched:
        out[n] = _unpatched_value(model, n)
    return out


def _unpatched_value(model, name: str) -> torch.Tensor:
    """A copy of one tensor with every applied patch undone (in reverse order, exactly as remove does)."""
    value = named_parameters(model)[name].data.clone()
    for entry in reversed(_state(model)["applied"]):
        if name in entry["restore"]:
            _undo(value, entry["patch"], name, entry["scale"], entry["restore"][name])
    return value


def _positions(p: torch.Tensor, mask: torch.Tensor | None):
    return slice(None) if mask is None else mask.to(p.device)


def _undo(
    p: torch.Tensor, patch: ErasurePatch, name: str, scale: float, inexact: tuple[torch.Tensor | None, torch.Tensor]
) -> None:
    mask = patch.masks[name]
    delta = patch.deltas[name].to(p.device, torch.float32) * scale
    pos = _positions(p, mask)
    cur = p[pos].reshape(-1) if mask is None else p[pos]
    restored = (cur.float() - delta.reshape(-1)).to(p.dtype)
    idx, vals = inexact
    if idx is None:
        restored = vals.to(p.device)
    elif idx.numel():
        restored[idx.to(p.device, torch.long)] = vals.to(p.device)
    if mask is None:
        p.copy_(restored.view_as(p))
    else:
        p[pos] = restored


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise PatchError(f"patch scale must be a finite number, got {scale!r}")
    return float(scale)


def _default_name(state: dict) -> str:
    taken = {a["name"] for a in state["applied"]}
    return next(f"default_{i}" for i in range(len(taken) + 1) if f"default_{i}" not in taken)


@torch.no_grad()
def apply_patch(
    model, patch: ErasurePatch, scale: float = 1.0, verify: bool = True, adapter_name: str | None = None
) -> str:
    """Add ``scale`` x the patch's deltas to the model's weights; returns the name it is applied under.

    Patches compose, each under a name like a diffusers adapter (``adapter_name``, default ``default_0``,
    ``default_1``, ...): ``remove_patch(model, name)`` takes one off, ``set_patch_scale(model, {name: s})``
    changes its strength, ``applied_patches(model)`` lists them. Refuses a non-finite scale or delta, a patch
    or a name already applied, and (with ``verify``) a base model whose weights are not the ones the patch was
    made on (see the module docstring).
    """
    scale = _check_scale(scale)
    params = named_parameters(model)
    missing = [n for n in patch.names() if n not in params]
    if missing:
        raise PatchError(
            f"patch touches {len(missing)} tensor(s) this model lacks (e.g. {missing[0]}); it was "
            "made for another architecture"
        )
    for n in patch.names():
        if list(params[n].shape) != list(
            patch.masks[n].shape if patch.masks[n] is not None else patch.deltas[n].shape
        ):
            raise PatchError(
                f"patch delta for {n} has another shape than the model's tensor; it was made for another architecture"
            )
    patch.check_finite()
    state = _state(model)
    if adapter_name is not None and (not isinstance(adapter_name, str) or not adapter_name.strip()):
        raise PatchError(f"adapter_name must be a non-empty string, got {adapter_name!r}")
    if adapter_name is not None and any(a["name"] == adapter_name for a in state["applied"]):
        raise PatchError(
            f"a patch named {adapter_name!r} is already applied; remove_patch(model, {adapter_name!r}) "
            "first or choose another name"
        )
    cid = patch.content_id()
    if any(a["content_id"] == cid for a in state["applied"]):
        raise PatchError(
            "this patch is already applied to the model; remove_patch first, or change its "
            "strength with set_patch_scale"
        )
    if verify:
        check_fingerprint(model, patch.config.get("base_fingerprint"))
    name = adapter_name or _default_name(state)
    state["applied"].append(
        {
            "name": name,
            "config": patch.config,
            "scale": scale,
            "patch": patch,
            "content_id": cid,
            "restore": _add(params, patch, scale),
        }
    )
    return name


def _add(params: dict, patch: ErasurePatch, scale: float) -> dict:
    """Add the scaled deltas in place; returns what ``_undo`` needs to take them off bit-exactly."""
    restore = {}
    for name in patch.names():
        p = params[name].data
        mask = patch.masks[name]
        pos = _positions(p, mask)
        old = p[pos].reshape(-1).clone() if mask is None else p[pos]
        delta = patch.deltas[name].to(p.device, torch.float32).reshape(-1) * scale
        new = (old.float() + delta).to(p.dtype)
        back = (new.float() - delta).to(p.dtype)
        bad = (_bits(back) != _bits(old)).nonzero().flatten()
        if bad.numel() * (4 + old.element_size()) < old.numel() * old.element_size():
            # the only originals kept: where subtracting the delta again would not give the original bits
            restore[name] = (bad.to(torch.int32 if old.numel() < 2**31 else torch.int64).cpu(), old[bad].cpu())
        else:  # most entries inexact: keep the touched entries' originals (never more than those)
            restore[name] = (None, old.cpu())
        if mask is None:
            p.copy_(new.view_as(p))
        else:
            p[pos] = new
    return restore


def _names(state: dict) -> list[str]:
    return [a["name"] for a in state["applied"]]


@torch.no_grad()
def remove_patch(model, adapter_name: str | None = None) -> None:
    """Undo every applied patch (newest first, bit for bit), or only the one named ``adapter_name``.

    Removing one patch leaves the model bit-identical to the others applied in their order without it: the
    newer ones are taken off, the named one undone, and the newer ones put back.
    """
    state = _state(model)
    params = named_parameters(model)
    if adapter_name is None:
        keep, cut = [], 0
    else:
        names = _names(state)
        if adapter_name not in names:
            raise PatchError(f"no patch named {adapter_name!r} is applied; applied: {', '.join(names) or 'none'}")
        cut = names.index(adapter_name)
        keep = state["applied"][cut + 1 :]
    for entry in reversed(state["applied"][cut:]):
        for name, inexact in entry["restore"].items():
            _undo(params[name].data, entry["patch"], name, entry["scale"], inexact)
    del state["applied"][cut:]
    for entry in keep:
        state["applied"].append({**entry, "restore": _add(params, entry["patch"], entry["scale"])})


def set_patch_scale(model, scale: float | dict[str, float]) -> None:
    """Re-apply the applied patches with new scales: one number for all, or ``{name: scale}`` for some (like
    diffusers' ``set_adapters`` weights); the order of application is kept."""
    state = _state(model)
    if not state["applied"]:
        raise PatchError("no patch is applied to this model")
    names = _names(state)
    if isinstance(scale, dict):
        unknown = [n for n in scale if n not in names]
        if unknown:
            raise PatchError(f"no patch named {unknown[0]!r} is applied; applied: {', '.join(names)}")
        scales = {n: _check_scale(s) for n, s in scale.items()}
    else:
        scales = dict.fromkeys(names, _check_scale(scale))
    applied = [(a["patch"], scales.get(a["name"], a["scale"]), a["name"]) for a in state["applied"]]
    remove_patch(model)
    for patch, s, name in applied:
        apply_patch(model, patch, scale=s, verify=False, adapter_name=name)


@contextlib.contextmanager
def patches_disabled(model):
    """Run a block on the base weights: every applied patch is removed (bit-exactly) and put back after it."""
    applied = [(a["patch"], a["scale"], a["name"]) for a in _state(model)["applied"]]
    remove_patch(model)
    try:
        yield model
    finally:
        for patch, scale, name in applied:
            apply_patch(model, patch, scale=scale, verify=False, adapter_name=name)


def applied_patches(model) -> list[dict]:
    """The applied patches in the order they were applied: name, scale and config."""
    return [{"name": a["name"], "scale": a["scale"], "config": a["config"]} for a in _state(model)["applied"]]


def restore_bytes(model) -> int:
    """Bytes an applied patch keeps to make removal exact (the originals of inexact entries only)."""
    return sum(
        (0 if i is None else i.numel() * i.element_size()) + v.numel() * v.element_size()
        for a in _state(model)["applied"]
        for i, v in a["restore"].values()
    )
