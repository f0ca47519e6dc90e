"""Base-model fingerprints of a patch: for every tensor it touches, shape, dtype, SHA-256 and a few probe values;
probes of the other tensors of the components it touches; a cheap identity of the other components. See
``erase.core.patch`` (which checks them against a model's unpatched weights) for how they are used."""

from __future__ import annotations

import hashlib
import json
import zlib

import torch

from .components import component_of, model_components

FINGERPRINT_VERSION = 2
N_PROBES = 8
RTOL = 2.0**-7  # bf16 keeps 8 significant bits: rounding moves a value by at most 2^-8 of it


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (bf16 read as int16)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def _probe_positions(name: str, numel: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randint(0, numel, (min(N_PROBES, numel),), generator=g)


def tensor_record(name: str, t: torch.Tensor, exact: bool = True) -> dict:
    """Shape, dtype, probe values, mean and mean magnitude and, if ``exact``, the SHA-256 of one tensor.

    The means are summed in float64 and kept to 12 significant digits, so that they do not depend on the order of
    the reduction (the thread count): a float32 mean of the same weights differs in its last bits between 1 and 2
    threads, and every identity built from these records (caches, run identities) would differ with it."""
    flat = t.detach().reshape(-1)
    rec = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
    if flat.numel():
        f = flat.float()
        rec["probe"] = f[_probe_positions(name, flat.numel()).to(f.device)].tolist()
        d = flat.double()
        rec["mean"], rec["absmean"] = (float(f"{float(v):.12g}") for v in (d.mean(), d.abs().mean()))
    if exact:
        rec["sha256"] = tensor_sha256(t)
    return rec


def _close(a: float, b: float, scale: float) -> bool:
    return abs(a - b) <= RTOL * (abs(b) + scale) + 1e-7


def record_mismatch(expected: dict, found: dict) -> str | None:
    """Why ``found`` is not the tensor ``expected`` describes (None if it is, up to dtype rounding)."""
    if expected["shape"] != found["shape"]:
        return f"shape {found['shape']} != {expected['shape']}"
    if expected.get("sha256") and found.get("sha256") and expected["dtype"] == found["dtype"]:
        return None if expected["sha256"] == found["sha256"] else "values differ"
    if "probe" not in expected:
        return None
    scale = expected["absmean"]
    pairs = list(zip(found["probe"], expected["probe"])) + [
        (found["mean"], expected["mean"]),
        (found["absmean"], expected["absmean"]),
    ]
    return None if all(_close(a, b, scale) for a, b in pairs) else "values differ beyond dtype rounding"


def fingerprint_of(model, params: dict[str, torch.Tensor], touched: list[str]) -> dict:
    """The base-model fingerprint a patch touching ``touched`` records, from the model's unpatched ``params``."""
    touched_comps = {component_of(n) for n in touched}
    out = {
        "version": FINGERPRINT_VERSION,
        "touched": {n: tensor_record(n, params[n]) for n in touched},
        "components": {},
    }
    for comp, module in model_components(model).items():
        names = sorted(f"{comp}.{n}" for n, _ in module.named_parameters())
        ident = {
            "n_tensors": len(names),
            "layout": hashlib.sha256(json.dumps([(n, list(params[n].shape)) for n in names]).encode()).hexdigest(),
        }
        probed = (
            names
            if comp in touched_comps
            else [names[i] for i in sorted({0, len(names) // 2, len(names) - 1}) if names]
        )
        ident["probes"] = {n: tensor_record(n, params[n], exact=False) for n in probed if n not in out["touched"]}
        out["components"][comp] = ident
    return out
