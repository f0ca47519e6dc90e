"""``erase export PATCH --format lora``: a patch as a diffusers LoRA, at the smallest ranks that keep its images.

The ranks come from one spectral tolerance for every tensor (``pipelines.lora.rank_for_energy``), searched from
coarse to exact: for each tolerance the LoRA is saved, loaded with diffusers' own ``load_lora_weights`` into the
base pipeline, and the protocol's retained prompts (every prompt without the erased concept, at the protocol's
first seeds) are generated and compared with the exact patch's images at the same seeds. The first tolerance
whose mean same-seed PSNR reaches the bar (40 dB by default) is written, with its ranks and measured PSNR; at
tolerance 0 the LoRA holds each delta at its full numerical rank.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

from eval.fidelity import psnr
from eval.generate import protocol_images, to_tensor
from pipelines.lora import check_loraable, rank_for_energy, save_lora, spectra
from pipelines.stable_diffusion import apply_patch, remove_patch

from .core.errors import EraseError
from .core.patch import ErasurePatch

TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 0.0)
ADAPTER = "erasekit_probe"


def retained_prompts(protocol, target: str, kind: str, seeds: int) -> tuple[list[str], list[int]]:
    axis = protocol.axis_names.index(kind)
    entries = [e for e in protocol.with_overrides(seeds=protocol.seeds[:seeds]).answer_set() if e[axis] != target]
    return [protocol.prompt(*e[:-1]) for e in entries], [e[-1] for e in entries]


def export_lora(
    pipe,
    patch: ErasurePatch,
    out: str | Path,
    protocol,
    *,
    target_psnr: float = 40.0,
    seeds: int = 1,
    progress: bool = True,
) -> dict:
    """Write ``patch`` as a LoRA folder ``out``; returns its record (ranks, tolerance, measured PSNR)."""

    from diffusers.utils import logging as diffusers_logging
    from tqdm.auto import tqdm

    if importlib.util.find_spec("peft") is None:
        raise EraseError(
            "LoRA export needs the peft package that diffusers loads LoRAs with: pip install 'erasekit[lora]'"
        )
    check_loraable(pipe, patch)
    request = patch.config.get("request") or {}
    target, kind = request.get("concept"), request.get("kind")
    if target is None or kind not in protocol.axis_names:
        raise EraseError(
            f"the patch's request ({kind} {target!r}) is not on protocol {protocol.name!r}; pass "
            "the protocol it was made for"
        )
    prompts, seed_list = retained_prompts(protocol, target, kind, seeds)
    apply_patch(pipe, patch)
    try:
        exact = to_tensor(protocol_images(pipe, protocol, prompts, seed_list))
    finally:
        remove_patch(pipe)
    spectrum = spectra(patch)
    tried, chosen = [], None
    for tolerance in tqdm(TOLERANCES, desc="erase export: rank search", disable=not progress):
        ranks = {n: rank_for_energy(s, tolerance) for n, s in spectrum.items()}
        if tried and ranks == tried[-1]["ranks"]:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            save_lora(pipe, patch, ranks, Path(tmp) / "lora")
            verbosity = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()  # "no LoRA keys for the text encoder" is expected for a UNet patch
            try:
                pipe.load_lora_weights(str(Path(tmp) / "lora"), adapter_name=ADAPTER)
            finally:
                diffusers_logging.set_verbosity(verbosity)
            try:
                images = to_tensor(protocol_images(pipe, protocol, prompts, seed_list))
            finally:
                pipe.unload_lora_weights()
        value = float(psnr(exact, images).mean())
        tried.append(
            {"tolerance": tolerance, "ranks": ranks, "psnr_db": round(value, 2), "total_rank": sum(ranks.values())}
        )
        if value >= target_psnr:
            chosen = tried[-1]
            break
    if chosen is None:
        raise EraseError(
            f"even at full rank the LoRA's images reach {tried[-1]['psnr_db']} dB against the exact patch's, "
            f"below the {target_psnr} dB bar; ship the patch itself"
        )
    full = {n: rank_for_energy(s, 0.0) for n, s in spectrum.items()}
    info = {
        "psnr_db": chosen["psnr_db"],
        "target_psnr_db": target_psnr,
        "tolerance": chosen["tolerance"],
        "exact": chosen["ranks"] == full,
        "measured_on": f"{len(prompts)} retained prompts of protocol {protocol.name} ({kind} {target} left out), "
        f"seeds {sorted(set(seed_list))}, same-seed PSNR against the exact patch",
        "search": [{k: v for k, v in t.items() if k != "ranks"} for t in tried],
    }
    save_lora(pipe, patch, chosen["ranks"], out, info)
    return {**info, "ranks": chosen["ranks"]}
