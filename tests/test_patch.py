import json

import numpy as np
import pytest
import torch

from erase.core.patch import CONFIG_FILE, PATCH_FILE, ErasurePatch, PatchError, fingerprint
from pipelines.stable_diffusion import (
    applied_patches,
    apply_patch,
    named_parameters,
    remove_patch,
    save_erased,
    set_patch_scale,
)


def make_patch(pipe, seed=0, masked=True, dtype=torch.float32):
    """A patch that perturbs two UNet tensors of ``pipe`` (one dense, one masked)."""
    params = named_parameters(pipe)
    g = torch.Generator().manual_seed(seed)
    names = ["unet.conv_in.weight", "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
    base = {n: params[n].detach().clone() for n in names}
    tuned = {n: base[n] + 0.05 * torch.randn(base[n].shape, generator=g) for n in names}
    masks = {names[0]: None, names[1]: (torch.rand(base[names[1]].shape, generator=g) < 0.3) if masked else None}
    for n, m in masks.items():
        if m is not None:
            tuned[n] = torch.where(m, tuned[n], base[n])
    return ErasurePatch.from_diff(
        base, tuned, masks, {"method": "test"}, dtype=dtype, fingerprint=fingerprint(pipe, names)
    ), tuned


def snapshot(pipe):
    return {n: p.detach().clone() for n, p in named_parameters(pipe).items()}


def test_round_trip_on_disk(tiny_pipe, tmp_path):
    patch, _ = make_patch(tiny_pipe)
    patch.save_pretrained(tmp_path)
    assert (tmp_path / PATCH_FILE).exists() and (tmp_path / CONFIG_FILE).exists()
    loaded = ErasurePatch.from_pretrained(tmp_path)
    assert loaded.names() == patch.names()
    for n in patch.names():
        assert torch.equal(loaded.dense_delta(n), patch.dense_delta(n))
    assert loaded.config["base_fingerprint"] == patch.config["base_fingerprint"]
    # masked tensors store mask bits + selected values only
    dense_bytes = sum(patch.dense_delta(n).numel() * 4 for n in patch.names())
    assert patch.nbytes() < dense_bytes
    with pytest.raises(PatchError, match="already holds a patch"):
        patch.save_pretrained(tmp_path)


def test_apply_then_remove_is_bit_exact(tiny_pipe):
    before = snapshot(tiny_pipe)
    patch, tuned = make_patch(tiny_pipe)
    apply_patch(tiny_pipe, patch)
    after = snapshot(tiny_pipe)
    for n in patch.names():
        assert torch.allclose(after[n], tuned[n], atol=1e-6)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert sorted(changed) == patch.names()
    assert len(applied_patches(tiny_pipe)) == 1
    remove_patch(tiny_pipe)
    assert all(torch.equal(before[n], p) for n, p in snapshot(tiny_pipe).items())


def test_scale_and_composition(tiny_pipe):
    before = snapshot(tiny_pipe)
    p1, _ = make_patch(tiny_pipe, seed=1)
    p2, _ = make_patch(tiny_pipe, seed=2, masked=False)
    apply_patch(tiny_pipe, p1, scale=0.0)
    assert all(torch.equal(before[n], p) for n, p in snapshot(tiny_pipe).items())
    set_patch_scale(tiny_pipe, 0.5)
    n = p1.names()[0]
    assert torch.allclose(named_parameters(tiny_pipe)[n], before[n] + 0.5 * p1.dense_delta(n), atol=1e-6)
    apply_patch(tiny_pipe, p2)  # fingerprint checked against the originals, so composition works
    expected = before[n] + 0.5 * p1.dense_delta(n) + p2.dense_delta(n)
    assert torch.allclose(named_parameters(tiny_pipe)[n], expected, atol=1e-6)
    remove_patch(tiny_pipe)
    assert all(torch.equal(before[k], p) for k, p in snapshot(tiny_pipe).items())


def test_refuses_another_base_model(tiny_pipe):
    from conftest import build_tiny_pipe

    patch, _ = make_patch(tiny_pipe)
    other = build_tiny_pipe(seed=1)
    with pytest.raises(PatchError, match="different base model"):
        apply_patch(other, patch)
    apply_patch(other, patch, verify=False)  # forcing is possible and explicit


def test_refuses_non_finite(tiny_pipe):
    patch, _ = make_patch(tiny_pipe)
    patch.deltas[patch.names()[0]][0] = float("nan")
    before = snapshot(tiny_pipe)
    with pytest.raises(PatchError, match="non-finite"):
        apply_patch(tiny_pipe, patch)
    assert all(torch.equal(before[n], p) for n, p in snapshot(tiny_pipe).items())


def test_bad_patch_folders(tmp_path, tiny_pipe):
    with pytest.raises(PatchError, match="does not exist"):
        ErasurePatch.from_pretrained(tmp_path / "nope")
    patch, _ = make_patch(tiny_pipe)
    patch.save_pretrained(tmp_path / "p")
    (tmp_path / "p" / CONFIG_FILE).unlink()
    with pytest.raises(PatchError, match="missing erasure_config.json"):
        ErasurePatch.from_pretrained(tmp_path / "p")
    (tmp_path / "p" / CONFIG_FILE).write_text("{not json")
    with pytest.raises(PatchError, match="corrupt"):
        ErasurePatch.from_pretrained(tmp_path / "p")


def test_save_erased_loads_with_plain_diffusers(tiny_pipe, tmp_path):
    from diffusers import StableDiffusionPipeline

    from eval.generate import generate

    patch, _ = make_patch(tiny_pipe, dtype=torch.float16)
    apply_patch(tiny_pipe, patch)
    prompts, seeds = ["A Birds image in Photo style.", "A Cats image in Mosaic style."], [3, 4]
    patched = generate(tiny_pipe, prompts, seeds, steps=4, progress=False)
    save_erased(tiny_pipe, tmp_path / "erased")
    reloaded = StableDiffusionPipeline.from_pretrained(str(tmp_path / "erased"))
    assert np.array_equal(generate(reloaded, prompts, seeds, steps=4, progress=False), patched)
    history = json.loads((tmp_path / "erased" / "erasure_history.json").read_text())
    assert history[0]["method"] == "test"


def test_from_diff_refuses_changes_outside_the_mask(tiny_pipe):
    params = named_parameters(tiny_pipe)
    name = "unet.conv_in.weight"
    base = {name: params[name].detach().clone()}
    mask = torch.zeros_like(base[name], dtype=torch.bool)
    mask.view(-1)[:10] = True
    tuned = {name: base[name] + 0.01}  # every entry moved, the mask allows 10
    with pytest.raises(PatchError, match=rf"{name} changed at {base[name].numel() - 10} entries outside its mask"):
        ErasurePatch.from_diff(base, tuned, {name: mask})
    tuned = {name: torch.where(mask, base[name] + 0.01, base[name])}
    assert ErasurePatch.from_diff(base, tuned, {name: mask}).deltas[name].numel() == 10


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp32_patch_applies_to_half_loads_and_refuses_other_models(tmp_path, dtype):
    from conftest import build_tiny_pipe

    patch, tuned = make_patch(build_tiny_pipe())
    half = build_tiny_pipe().to(dtype=dtype)
    before = snapshot(half)
    apply_patch(half, patch)
    for n in patch.names():
        assert torch.allclose(named_parameters(half)[n].float(), tuned[n], atol=2e-2), n
    remove_patch(half)
    assert all(torch.equal(before[n], p) for n, p in snapshot(half).items())  # bit-exact in half precision too
    with pytest.raises(PatchError, match="different base model"):
        apply_patch(build_tiny_pipe(seed=1).to(dtype=dtype), patch)


def test_fp32_load_is_checked_exactly(tiny_pipe):
    patch, _ = make_patch(tiny_pipe)
    n = patch.names()[0]
    with torch.no_grad():
        named_parameters(tiny_pipe)[n].view(-1)[0] += (
            1e-6  # tiny edit of a touched tensor: same dtype, so the SHA-256 decides
        )
    with pytest.raises(PatchError, match=f"{n}: values differ"):
        apply_patch(tiny_pipe, patch)


def test_fingerprint_covers_untouched_components(tiny_pipe):
    patch, _ = make_patch(tiny_pipe)
    assert set(patch.config["base_fingerprint"]["components"]) == {"unet", "text_encoder", "vae"}
    with torch.no_grad():  # a different text encoder: the UNet tensors match, the model does not
        for p in tiny_pipe.text_encoder.parameters():
            p.mul_(1.5)
    with pytest.raises(PatchError, match="text_encoder"):
        apply_patch(tiny_pipe, patch)


def test_apply_keeps_no_copy_of_the_weights(tiny_pipe):
    from erase.core.patch import restore_bytes

    patch, _ = make_patch(tiny_pipe)
    apply_patch(tiny_pipe, patch, scale=0.7)
    touched = sum(named_parameters(tiny_pipe)[n].numel() * 4 for n in patch.names())
    # only entries where subtracting the delta is inexact are kept (index + value): a fraction of a copy
    assert 0 < restore_bytes(tiny_pipe) < 0.25 * touched


def test_nan_scale_and_double_application_are_refused(tiny_pipe):
    patch, _ = make_patch(tiny_pipe)
    before = snapshot(tiny_pipe)
    with pytest.raises(PatchError, match="finite number"):
        apply_patch(tiny_pipe, patch, scale=float("nan"))
    apply_patch(tiny_pipe, patch)
    with pytest.raises(PatchError, match="already applied"):
        apply_patch(tiny_pipe, patch)
    with pytest.raises(PatchError, match="finite number"):
        set_patch_scale(tiny_pipe, float("inf"))
    remove_patch(tiny_pipe)
    assert all(torch.equal(before[n], p) for n, p in snapshot(tiny_pipe).items())


def test_corrupt_patch_files(tmp_path, tiny_pipe):
    patch, _ = make_patch(tiny_pipe)
    folder = patch.save_pretrained(tmp_path / "p")
    with pytest.raises(PatchError, match="is a file; .* pass the folder"):
        ErasurePatch.from_pretrained(folder / PATCH_FILE)
    data = (folder / PATCH_FILE).read_bytes()
    (folder / PATCH_FILE).write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(PatchError, match="does not match its config"):
        ErasurePatch.from_pretrained(folder)
    (folder / PATCH_FILE).write_bytes(data)
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps([cfg]))
    with pytest.raises(PatchError, match="not an erasekit patch config"):
        ErasurePatch.from_pretrained(folder)
    bad = dict(cfg, shapes={n: [-1] for n in cfg["shapes"]})
    (folder / CONFIG_FILE).write_text(json.dumps(bad))
    with pytest.raises(PatchError, match="no valid 'shapes'"):
        ErasurePatch.from_pretrained(folder)
    bad = dict(cfg, shapes={n: [s[0] + 1, *s[1:]] for n, s in cfg["shapes"].items()})
    (folder / CONFIG_FILE).write_text(json.dumps(bad))
    with pytest.raises(PatchError, match="shape"):
        ErasurePatch.from_pretrained(folder)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_named_patches_remove_one_and_keep_the_others_bit_exact(dtype):
    """remove_patch(model, name) leaves exactly the bits of the other patches applied, in order, without it."""
    from conftest import build_tiny_pipe

    pipe = build_tiny_pipe().to(dtype=dtype)
    before = snapshot(pipe)
    p1, p2, p3 = (make_patch(build_tiny_pipe(), seed=s, masked=s != 2)[0] for s in (1, 2, 3))
    assert apply_patch(pipe, p1, adapter_name="watercolor") == "watercolor"
    assert apply_patch(pipe, p2, scale=0.7) == "default_0"
    apply_patch(pipe, p3, scale=-0.3, adapter_name="rust")
    assert [(a["name"], a["scale"]) for a in applied_patches(pipe)] == [
        ("watercolor", 1.0),
        ("default_0", 0.7),
        ("rust", -0.3),
    ]
    remove_patch(pipe, "watercolor")
    without = snapshot(pipe)

    reference = build_tiny_pipe().to(dtype=dtype)  # the other two applied from scratch, in their order
    apply_patch(reference, p2, scale=0.7)
    apply_patch(reference, p3, scale=-0.3)
    assert all(torch.equal(without[n], p) for n, p in snapshot(reference).items())
    assert [a["name"] for a in applied_patches(pipe)] == ["default_0", "rust"]

    set_patch_scale(pipe, {"rust": 0.5})  # one strength changed, the other kept
    assert [(a["name"], a["scale"]) for a in applied_patches(pipe)] == [("default_0", 0.7), ("rust", 0.5)]
    n = p3.names()[0]
    expected = before[n].float() + 0.7 * p2.dense_delta(n) + 0.5 * p3.dense_delta(n)
    assert torch.allclose(named_parameters(pipe)[n].float(), expected, atol=1e-6 if dtype == torch.float32 else 2e-2)
    remove_patch(pipe, "default_0")
    remove_patch(pipe, "rust")
    assert applied_patches(pipe) == []
    assert all(torch.equal(before[k], p) for k, p in snapshot(pipe).items())


def test_named_patch_errors(tiny_pipe):
    p1, _ = make_patch(tiny_pipe, seed=1)
    p2, _ = make_patch(tiny_pipe, seed=2)
    apply_patch(tiny_pipe, p1, adapter_name="watercolor")
    with pytest.raises(PatchError, match="'watercolor' is already applied"):
        apply_patch(tiny_pipe, p2, adapter_name="watercolor")
    with pytest.raises(PatchError, match="no patch named 'rust' is applied; applied: watercolor"):
        remove_patch(tiny_pipe, "rust")
    with pytest.raises(PatchError, match="no patch named 'rust'"):
        set_patch_scale(tiny_pipe, {"rust": 1.0})
    with pytest.raises(PatchError, match="finite number"):
        set_patch_scale(tiny_pipe, {"watercolor": float("nan")})
    with pytest.raises(PatchError, match="non-empty string"):
        apply_patch(tiny_pipe, p2, adapter_name="")
    assert [a["name"] for a in applied_patches(tiny_pipe)] == ["watercolor"]
