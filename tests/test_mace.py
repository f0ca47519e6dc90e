"""MACE: the fusion solve against its own objective and each LoRA's effect, the CFR solve a stationary point of its
objective, concept grouping of a joint request, and a tiny joint run whose LoRAs silence the concepts' attention."""

import numpy as np
import pytest
import torch

from erase.api import erase_concept, resolve_config
from erase.core.errors import EraseError
from erase.core.request import EraseRequest
from erase.methods.mace import concept_groups, fuse_solve
from erase.methods.uce import uce_solve

QUICK = {"patch_dtype": "float32", "lora_steps": 20, "lora_lr": 0.1, "lora_images": 2, "data_steps": 2}


def _request():
    styles = ("Watercolor", "Mosaic")
    return EraseRequest(
        concept="+".join(styles),
        kind="style",
        anchor="Photo",
        forget_prompts=[
            f"{s} {o}" for s in styles for o in ("birds", "cats")
        ],  # short: the tiny tokenizer keeps 16 tokens
        anchor_prompts=[f"Photo {o}" for _ in styles for o in ("birds", "cats")],
        retain_prompts=["Ink Art birds", "Rust cats"],
    )


def test_fusion_is_the_minimum_of_its_objective_and_keeps_each_lora_on_its_own_tokens():
    torch.manual_seed(0)
    d_out, d = 6, 16
    w_base = torch.randn(d_out, d, dtype=torch.float64)
    rows = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[
        0
    ].T  # orthonormal rows: the concepts' tokens are independent
    c1, c2, keep = rows[:2], rows[2:4], rows[4:10]
    w1 = w_base + torch.randn(d_out, 1, dtype=torch.float64) @ torch.randn(1, d, dtype=torch.float64)  # rank-1 LoRAs
    w2 = w_base + torch.randn(d_out, 1, dtype=torch.float64) @ torch.randn(1, d, dtype=torch.float64)
    fused = fuse_solve(w_base, [(w1, c1), (w2, c2)], keep, keep_weight=3.0, lam=1e-9)
    w = fused.clone().requires_grad_(True)
    objective = (
        (((w - w1) @ c1.T) ** 2).sum()
        + (((w - w2) @ c2.T) ** 2).sum()
        + 3.0 * (((w - w_base) @ keep.T) ** 2).sum()
        + 1e-9 * ((w - w_base) ** 2).sum()
    )
    (grad,) = torch.autograd.grad(objective, w)
    assert grad.abs().max() < 1e-8
    for w_i, c_i in ((w1, c1), (w2, c2)):  # each LoRA's effect on its own concept's tokens, both at once
        assert torch.allclose(fused @ c_i.T, w_i @ c_i.T, atol=1e-6)
    assert torch.allclose(fused @ keep.T, w_base @ keep.T, atol=1e-6)  # the retained tokens keep their keys
    # the two LoRAs simply added would not: each one's update leaks into the other's tokens
    summed = w1 + w2 - w_base
    assert not torch.allclose(summed @ c1.T, w1 @ c1.T, atol=1e-3)


def test_cfr_with_maces_weights_is_a_stationary_point_of_its_objective():
    torch.manual_seed(1)
    cfg = resolve_config("mace", None, {})
    w_old = torch.randn(5, 8, dtype=torch.float64)
    ce, ct, ck = (
        torch.randn(3, 8, dtype=torch.float64),
        torch.randn(3, 8, dtype=torch.float64),
        torch.randn(6, 8, dtype=torch.float64),
    )
    kw = torch.full((6,), cfg.preserve_scale, dtype=torch.float64)
    w = uce_solve(w_old, ce, ct, ck, kw, cfg.lam, cfg.erase_scale).clone().requires_grad_(True)
    objective = (
        cfg.erase_scale * ((w @ ce.T - w_old @ ct.T) ** 2).sum()
        + (kw * ((w @ ck.T - w_old @ ck.T) ** 2)).sum()
        + cfg.lam * ((w - w_old) ** 2).sum()
    )
    (grad,) = torch.autograd.grad(objective, w)
    assert grad.abs().max() < 1e-8


def test_a_joint_request_is_grouped_by_the_tokens_each_concept_changes(tiny_pipe):
    req = _request()
    groups = concept_groups(tiny_pipe, req.forget_prompts, req.anchor_prompts)
    decoded = sorted(tiny_pipe.tokenizer.decode(list(k)).strip().lower() for k in groups)
    assert decoded == ["mosaic", "watercolor"]
    for tokens, g in groups.items():
        assert len(g["prompts"]) == 2 and all(len(p) == len(tokens) for p in g["positions"])
        ids = tiny_pipe.tokenizer(req.forget_prompts[g["prompts"][0]]).input_ids
        assert tuple(ids[p] for p in g["positions"][0]) == tokens


@pytest.mark.parametrize("mask", ["none", "attention"])
def test_a_joint_run_silences_each_concepts_attention_and_edits_only_cross_attention_kv(tiny_pipe, tmp_path, mask):
    patch = erase_concept(
        tiny_pipe, "mace", _request(), tmp_path / mask, overrides={**QUICK, "mask": mask}, progress=False
    )
    assert patch.names() and all("attn2.to_k" in n or "attn2.to_v" in n for n in patch.names())
    concepts = patch.config["info"]["mace"]["concepts"]
    assert sorted(c["concept_tokens"].lower() for c in concepts) == ["mosaic", "watercolor"]
    for c in concepts:
        assert c["attention_loss_after"] < 0.5 * c["attention_loss_before"], c
        # the fusion reproduces each LoRA's effect on its own concept's attention: the fused keys keep at least 80%
        # of the drop the LoRA made, on the same images and noise
        drop = c["attention_loss_before"] - c["attention_loss_after"]
        assert abs(c["attention_loss_fused"] - c["attention_loss_after"]) <= 0.2 * drop, c


def test_no_lora_steps_is_the_cfr_alone_and_options_are_checked(tiny_pipe, tmp_path):
    """With lora_steps 0 every LoRA is zero, so fusion returns the CFR keys: MACE is then UCE with MACE's weights."""
    opts = {"patch_dtype": "float32", "lora_images": 1, "data_steps": 1}
    mace = erase_concept(
        tiny_pipe, "mace", _request(), tmp_path / "m", overrides={**opts, "lora_steps": 0, "lam": 0.1}, progress=False
    )
    cfg = resolve_config("mace", None, {})
    uce = erase_concept(
        tiny_pipe,
        "uce",
        _request(),
        tmp_path / "u",
        overrides={"patch_dtype": "float32", "lam": 0.1, "preserve_scale": cfg.preserve_scale},
        progress=False,
    )
    assert sorted(mace.names()) == sorted(uce.names())
    for n in uce.names():
        tol = 1e-4 if "to_k" in n else 0
        assert torch.allclose(mace.dense_delta(n), uce.dense_delta(n), atol=tol), n
    for bad, match in (
        ({"mask": "sam"}, "mask"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"mask_threshold": 1.0}, "mask_threshold"),
    ):
        with pytest.raises(EraseError, match=match):
            resolve_config("mace", None, bad)


def _captioned_folder(root, prompts, mask_value):
    """Two images per prompt, captioned with it, each with a constant mask (None: no mask file)."""
    from PIL import Image

    root.mkdir()
    for j, prompt in enumerate(p for p in prompts for _ in range(2)):
        Image.fromarray(np.full((32, 32, 3), 40 * j % 255, np.uint8)).save(root / f"{j}.png")
        (root / f"{j}.txt").write_text(prompt + "\n")
        if mask_value is not None:
            Image.fromarray(np.full((32, 32), mask_value, np.uint8), "L").save(root / f"{j}.mask.png")
    return root


def test_concept_images_replace_the_generations_of_their_concept_and_their_masks_weigh_the_loss(tiny_pipe, tmp_path):
    """Watercolor's images come with all-black masks, so its attention loss counts no pixel; Mosaic has no images
    there and trains on the original's generations."""
    req = _request()
    folder = _captioned_folder(tmp_path / "images", req.forget_prompts[:2], mask_value=0)
    patch = erase_concept(
        tiny_pipe,
        "mace",
        req,
        tmp_path / "out",
        overrides={**QUICK, "lora_steps": 2, "concept_images": str(folder)},
        progress=False,
    )
    concepts = {c["concept_tokens"].lower(): c for c in patch.config["info"]["mace"]["concepts"]}
    assert concepts["watercolor"]["images"] == "concept_images" and concepts["mosaic"]["images"] == "generations"
    assert concepts["watercolor"]["attention_loss_before"] == 0
    assert concepts["mosaic"]["attention_loss_before"] > 0


def test_a_half_mask_weighs_half_the_pixels(tiny_pipe, tmp_path):
    """The same images with a white mask and with a mid-grey one (value 128): the squared-attention loss, linear in
    the mask, halves."""
    req = _request()
    losses = {}
    for value in (255, 128):
        folder = _captioned_folder(tmp_path / f"images{value}", req.forget_prompts, mask_value=value)
        patch = erase_concept(
            tiny_pipe,
            "mace",
            req,
            tmp_path / f"out{value}",
            overrides={**QUICK, "lora_steps": 0, "concept_images": str(folder)},
            progress=False,
        )
        losses[value] = [c["attention_loss_before"] for c in patch.config["info"]["mace"]["concepts"]]
    for full, half in zip(losses[255], losses[128]):
        assert half == pytest.approx(full * 128 / 255, rel=1e-3)


def test_concept_images_with_a_caption_that_is_no_forget_prompt_are_refused(tiny_pipe, tmp_path):
    folder = _captioned_folder(tmp_path / "images", ["Cubism birds"], mask_value=None)
    with pytest.raises(EraseError, match="not one of the request's forget prompts"):
        erase_concept(
            tiny_pipe, "mace", _request(), tmp_path / "out", overrides={**QUICK, "concept_images": str(folder)}
        )
    assert not (tmp_path / "out").exists()
    (folder / "0.txt").unlink()
    with pytest.raises(EraseError, match=r"has no caption 0\.txt"):
        erase_concept(
            tiny_pipe, "mace", _request(), tmp_path / "out", overrides={**QUICK, "concept_images": str(folder)}
        )
