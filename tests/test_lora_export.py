"""A patch as a diffusers LoRA (pipelines.lora, erase export): the factors reproduce the delta, plain diffusers
loads and scales it, the rank search measures what it claims, and what a LoRA cannot hold is refused."""

import contextlib
import json

import pytest
import torch
from test_patch import make_patch, snapshot

from erase.core.errors import EraseError
from erase.core.patch import ErasurePatch, fingerprint
from pipelines.lora import INFO_FILE, LORA_FILE, LoRAExportError, lora_layers, rank_for_energy, save_lora, spectra
from pipelines.stable_diffusion import apply_patch, named_parameters, remove_patch


def test_rank_for_energy_by_hand():
    s = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)  # energies 9, 4, 1 of 14
    assert rank_for_energy(s, 1 / 14) == 2  # dropping the last leaves exactly 1/14
    assert rank_for_energy(s, 0.99 / 14) == 3
    assert rank_for_energy(s, 5 / 14) == 1
    assert rank_for_energy(torch.tensor([2.0, 1.0, 1e-12], dtype=torch.float64), 0.0) == 2  # numerical rank
    assert rank_for_energy(torch.zeros(3, dtype=torch.float64), 0.0) == 1


def _bias_patch(pipe):
    """make_patch's two weights (a conv kernel and a linear K) plus a bias-only change of a linear layer."""
    patch, _ = make_patch(pipe, masked=False)
    name = "unet.up_blocks.0.attentions.0.proj_out.bias"
    base = {n: named_parameters(pipe)[n].detach().clone() for n in [*patch.names(), name]}
    tuned = {n: base[n] + patch.dense_delta(n) for n in patch.names()}
    tuned[name] = base[name] + 0.01 * torch.arange(base[name].numel()).float()
    return ErasurePatch.from_diff(
        base,
        tuned,
        dict.fromkeys(base),
        {"method": "test"},
        dtype=torch.float32,
        fingerprint=fingerprint(pipe, list(base)),
    )


def _unet_out(pipe):
    g = torch.Generator().manual_seed(0)
    x, cond = (
        torch.randn(2, 4, 8, 8, generator=g),
        torch.randn(2, 16, pipe.text_encoder.config.hidden_size, generator=g),
    )
    with torch.no_grad():
        return pipe.unet(x, torch.tensor([10, 500]), cond).sample


@pytest.mark.parametrize("with_bias", [False, True])
def test_full_rank_lora_loads_in_plain_diffusers_and_equals_the_patch(tiny_pipe, tmp_path, with_bias):
    """Loaded with diffusers' own load_lora_weights, the LoRA gives the patched model's
    predictions, at any set_adapters scale."""
    patch = _bias_patch(tiny_pipe) if with_bias else make_patch(tiny_pipe, masked=False)[0]
    base_out = _unet_out(tiny_pipe)
    expected = {}
    for scale in (1.0, 0.5):
        apply_patch(tiny_pipe, patch, scale=scale)
        expected[scale] = _unet_out(tiny_pipe)
        remove_patch(tiny_pipe)
    assert not torch.allclose(expected[1.0], base_out, atol=1e-3)
    ranks = {n: rank_for_energy(s, 0.0) for n, s in spectra(patch).items()}
    save_lora(tiny_pipe, patch, ranks, tmp_path / "lora")
    assert {p.name for p in (tmp_path / "lora").iterdir()} == {LORA_FILE, INFO_FILE}
    assert json.loads((tmp_path / "lora" / INFO_FILE).read_text())["ranks"] == ranks

    tiny_pipe.load_lora_weights(str(tmp_path / "lora"), adapter_name="erased")  # diffusers' own loader
    assert torch.allclose(_unet_out(tiny_pipe), expected[1.0], atol=1e-4)
    tiny_pipe.set_adapters(["erased"], adapter_weights=[0.5])
    assert torch.allclose(_unet_out(tiny_pipe), expected[0.5], atol=1e-4)
    tiny_pipe.unload_lora_weights()
    assert torch.allclose(_unet_out(tiny_pipe), base_out, atol=1e-6)


def test_a_lower_rank_lora_is_the_truncated_svd(tiny_pipe):
    patch, _ = make_patch(tiny_pipe, masked=False)
    layers = lora_layers(tiny_pipe, patch, {n: 2 for n in patch.names()})["unet"]
    name = "unet.up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    path = name[len("unet.") : -len(".weight")]
    a, b = layers[f"{path}.lora_A.weight"], layers[f"{path}.lora_B.weight"]
    assert a.shape[0] == 2 and b.shape[1] == 2
    u, s, vh = torch.linalg.svd(patch.dense_delta(name).double())
    assert torch.allclose((b @ a).double(), (u[:, :2] * s[:2]) @ vh[:2], atol=1e-5)
    conv = layers["conv_in.lora_A.weight"]
    assert conv.dim() == 4 and layers["conv_in.lora_B.weight"].shape[2:] == (1, 1)  # conv: kernel A, 1x1 B


def test_what_a_lora_cannot_hold_is_refused(tiny_pipe, tmp_path):
    name = "unet.up_blocks.0.attentions.0.norm.weight"  # a GroupNorm
    base = {name: named_parameters(tiny_pipe)[name].detach().clone()}
    patch = ErasurePatch.from_diff(base, {name: base[name] + 0.1}, {name: None}, {"method": "test"})
    with pytest.raises(LoRAExportError, match="cannot hold .*norm.weight"):
        save_lora(tiny_pipe, patch, {}, tmp_path / "lora")
    assert not (tmp_path / "lora").exists()


def test_export_searches_ranks_until_the_images_match(canvas_pipe, tmp_path):
    """A UCE patch on canvas-mini: the LoRA chosen reaches the bar, and a bar no low rank meets forces more rank."""
    from erase.api import erase_concept
    from erase.core.request import EraseRequest
    from erase.export import export_lora
    from eval.protocols import load_protocol

    protocol = load_protocol("canvas-mini")
    request = EraseRequest.from_protocol(protocol, "Watercolor", "style")
    patch = erase_concept(canvas_pipe, "uce", request, tmp_path / "patch", preset="canvas-mini", progress=False)
    quick = protocol.with_overrides(steps=5)
    r = export_lora(canvas_pipe, patch, tmp_path / "lora", quick, target_psnr=40.0, progress=False)
    assert r["psnr_db"] >= 40.0 and (tmp_path / "lora" / LORA_FILE).is_file()
    strict = export_lora(
        canvas_pipe, patch, tmp_path / "lora-strict", quick, target_psnr=r["psnr_db"] + 5, progress=False
    )
    assert sum(strict["ranks"].values()) > sum(r["ranks"].values()) and strict["psnr_db"] >= r["psnr_db"] + 5
    assert all(torch.equal(a, b) for a, b in zip(snapshot(canvas_pipe).values(), snapshot(canvas_pipe).values()))
    with pytest.raises(EraseError, match="below the 1000"):
        export_lora(canvas_pipe, patch, tmp_path / "lora-impossible", quick, target_psnr=1000.0, progress=False)
    assert not (tmp_path / "lora-impossible").exists()


def test_export_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    from erase.cli import main

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    cases = [
        (["export", str(tmp_path / "nope"), "--out", str(tmp_path / "a")], "holds no erasure_patch.safetensors"),
        (["export", str(tmp_path / "nope"), "--out", str(tmp_path / "full")], "exists and is not an empty folder"),
        (
            ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "b"), "--seeds", "0"],
            "--seeds must be at least 1",
        ),
        (["export", str(tmp_path / "nope"), "--out", str(tmp_path / "c"), "--format", "ckpt"], "invalid choice"),
    ]
    for argv, message in cases:
        with (
            pytest.raises(SystemExit) if "--format" in argv else contextlib.nullcontext()
        ):  # argparse exits with 2 itself
            code = main(argv)
            assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["full"]
        and (tmp_path / "full" / "keep.txt").read_text() == "mine"
    )
