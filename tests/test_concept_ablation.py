"""Concept Ablation on a tiny random pipeline: plumbing, the K/V-only selection, the retain term."""

import pytest
import torch
from test_salun import request

from erase.api import erase_concept, resolve_config
from erase.core.errors import EraseError
from pipelines.stable_diffusion import named_parameters

TINY = {
    "steps": 2,
    "anchor_seeds": 1,
    "retain_seeds": 1,
    "data_steps": 2,
    "batch_size": 2,
    "retain_batch_size": 2,
    "lr": 1e-3,
}


@pytest.mark.parametrize("alpha, retain", [(0.0, "diffusion"), (5.0, "distill")])
def test_two_steps_touch_only_cross_attention_kv(tiny_pipe, tmp_path, alpha, retain):
    before = {n: p.detach().clone() for n, p in named_parameters(tiny_pipe).items()}
    patch = erase_concept(
        tiny_pipe,
        "concept_ablation",
        request(),
        tmp_path,
        overrides={**TINY, "alpha": alpha, "retain_loss": retain, "target": "frozen"},
        progress=False,
    )
    assert all(torch.equal(before[n], p) for n, p in named_parameters(tiny_pipe).items())  # left unpatched
    kv = sorted(n for n in before if ".attn2.to_k." in n or ".attn2.to_v." in n)
    assert patch.names() == kv and all(patch.masks[n] is None for n in kv)
    assert all(float(patch.deltas[n].abs().max()) > 0 for n in kv)  # every K/V tensor moved
    assert patch.config["info"]["data"] == {"anchor_images": 2, "retain_images": 2 if alpha else 0}


def test_full_unet_group(tiny_pipe, tmp_path):
    patch = erase_concept(
        tiny_pipe,
        "concept_ablation",
        request(),
        tmp_path,
        overrides={**TINY, "parameter_group": "unet"},
        progress=False,
    )
    assert len(patch.names()) == sum(1 for n in named_parameters(tiny_pipe) if n.startswith("unet."))


def test_config_errors():
    with pytest.raises(EraseError, match="parameter_group"):
        resolve_config("concept_ablation", None, {"parameter_group": "attn9"})
    with pytest.raises(EraseError, match="unknown target 'live'"):
        resolve_config("concept_ablation", None, {"target": "live"})
    assert resolve_config("concept_ablation", "sd14").lr == pytest.approx(1.6e-5)
