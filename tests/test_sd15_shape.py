"""The SD v1.5-shaped benchmark: its configs are SD v1.5's, and every method's code path runs at that layout."""

import json

import pytest
import torch

from bench import sd15_shape


def test_configs_build_sd15_parameter_counts():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = sd15_shape.configs("sd15")
    with torch.device("meta"):  # shapes only: no memory
        models = {
            "unet": UNet2DConditionModel.from_config(cfg["unet"]),
            "vae": AutoencoderKL.from_config(cfg["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
        }
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    assert counts == sd15_shape.SD15_PARAMETERS
    assert (
        cfg["scheduler"]["_class_name"] == "PNDMScheduler"
        and cfg["unet"]["cross_attention_dim"] == cfg["text_encoder"]["hidden_size"]
    )


def test_every_method_erases_the_tiny_sd_layout_in_its_own_process(tmp_path):
    out = tmp_path / "r.json"
    assert (
        sd15_shape.main(
            ["--shape", "tiny", "--resolution", "256", "--steps", "2", "--threads", "1", "--out", str(out)]
        )
        == 0
    )
    r = json.loads(out.read_text())
    from erase.core.registry import list_methods

    assert [row["method"] for row in r["rows"]] == list_methods("stable_diffusion")
    for row in r["rows"]:
        assert row["status"] == "ok", row
        assert row["preset"] in sd15_shape.PRESETS  # each method runs its upstream SD preset
        assert row["patch_bytes"] > 0 and row["peak_rss_bytes"] > 2**27
        assert row["resolution"] == 256
        if row["overrides"]:  # trained methods: the fixed number of steps
            assert row["overrides"]["steps"] == 2 and row["seconds_per_step"] > 0


def test_a_method_growing_past_the_memory_cap_is_stopped_and_reported(tmp_path):
    out = tmp_path / "r.json"
    assert (
        sd15_shape.main(
            ["--shape", "tiny", "--resolution", "64", "--methods", "uce", "--max-rss-gb", "0.05", "--out", str(out)]
        )
        == 1
    )
    row = json.loads(out.read_text())["rows"][0]
    assert row["status"] == "stopped: RSS above 0.05 GB" and row["peak_rss_bytes"] > 0.05 * 2**30


def test_generations_are_cached_per_sample_size(tiny_pipe):
    from erase.core.data import generations

    small, _ = generations(tiny_pipe, ["a photo"], 1, 0, steps=2, guidance=1.0)
    tiny_pipe.unet.register_to_config(sample_size=2 * tiny_pipe.unet.config.sample_size)
    large, _ = generations(tiny_pipe, ["a photo"], 1, 0, steps=2, guidance=1.0)
    assert large.shape[-1] == 2 * small.shape[-1]


@pytest.mark.parametrize("batch,ok", [(1, False), (2, True)])
def test_doco_discriminator_depth_check_knows_the_batch(batch, ok):
    from erase.core.errors import EraseError
    from erase.methods.doco import _check_disc_depth

    if ok:
        _check_disc_depth(4, 16, batch)
    else:
        with pytest.raises(EraseError, match="1x1 map"):
            _check_disc_depth(4, 16, batch)
    _check_disc_depth(4, 32, 1)  # 2x2 at the last BatchNorm: fine at any batch
