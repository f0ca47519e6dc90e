import pytest

from pipelines.stable_diffusion import PipelineLoadError, load_pipeline


def test_folder_without_model_index(tmp_path):
    with pytest.raises(PipelineLoadError, match="not a diffusers pipeline folder"):
        load_pipeline(tmp_path)


def test_missing_checkpoint_and_unknown_names(tmp_path):
    with pytest.raises(PipelineLoadError, match="does not exist"):
        load_pipeline(tmp_path / "model.safetensors")
    with pytest.raises(PipelineLoadError, match="not found"):
        load_pipeline("no-such-model")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(PipelineLoadError, match="neither a diffusers folder"):
        load_pipeline(tmp_path / "weights.bin")


def test_hub_id_not_in_cache_fails_fast_offline():
    with pytest.raises(PipelineLoadError, match="cannot load pipeline"):
        load_pipeline("someone/not-cached-model")


def test_unknown_dtype(tmp_path):
    with pytest.raises(PipelineLoadError, match="unknown dtype"):
        load_pipeline(tmp_path, dtype="fp8")


def test_loads_the_shipped_pipeline_in_half_precision(canvas_pipe):
    import torch

    from worlds.canvas_mini import PIPELINE_DIR

    pipe = load_pipeline(PIPELINE_DIR, dtype="bf16")
    assert pipe.unet.dtype == torch.bfloat16
