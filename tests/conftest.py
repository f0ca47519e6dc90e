import json
import os
import tempfile

# Nothing in the test suite may reach for the network, even when run outside `make test`.
_tmp = tempfile.mkdtemp(prefix="erasekit-test-home-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", os.path.join(_tmp, "hf"))
os.environ.setdefault("TORCH_HOME", os.path.join(_tmp, "torch"))
os.environ.setdefault("ERASEKIT_CACHE", os.path.join(_tmp, "erasekit"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("ERASEKIT_TEST_THREADS", min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="session")
def canvas_pipe():
    """The shipped canvas-mini pipeline, loaded with plain diffusers."""
    from diffusers import StableDiffusionPipeline

    from worlds.canvas_mini import PIPELINE_DIR

    pipe = StableDiffusionPipeline.from_pretrained(str(PIPELINE_DIR))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pipe(seed: int = 0):
    """A random-weight StableDiffusionPipeline small enough to train in a test (like diffusers' dummy components)."""
    from diffusers import StableDiffusionPipeline

    from worlds.canvas_mini.models import make_schedulers, make_text_encoder, make_unet, make_vae
    from worlds.canvas_mini.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer(300, model_max_length=16)
    pipe = StableDiffusionPipeline(
        vae=make_vae(),
        text_encoder=make_text_encoder(tok),
        tokenizer=tok,
        unet=make_unet((16, 32, 32)),
        scheduler=make_schedulers()[1],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_pipe():
    return build_tiny_pipe()


def interrupted(monkeypatch, eraser_cls, at_step: int):
    """Make ``eraser_cls.step`` raise KeyboardInterrupt at ``at_step`` (as Ctrl-C would);
    returns a function that undoes it."""
    real = eraser_cls.step

    def step(self, i):
        if i == at_step:
            raise KeyboardInterrupt
        return real(self, i)

    monkeypatch.setattr(eraser_cls, "step", step)
    return lambda: monkeypatch.setattr(eraser_cls, "step", real)


def assert_resume_is_bit_identical(
    pipe, method: str, eraser_cls, request, over: dict, tmp_path, monkeypatch, *, interrupt_at: int, resumed_from: int
):
    """Run ``method`` straight through, then interrupted at step ``interrupt_at`` and resumed on a freshly built model:
    the resume starts at checkpoint ``resumed_from`` and the two patches are bit-identical."""
    import pytest
    import torch

    from erase.api import erase_concept

    full = erase_concept(pipe, method, request, tmp_path / "full", overrides=over, progress=False)
    restore = interrupted(monkeypatch, eraser_cls, interrupt_at)
    with pytest.raises(KeyboardInterrupt):
        erase_concept(pipe, method, request, tmp_path / "resumed", overrides=over, progress=False)
    restore()
    meta_file = tmp_path / "resumed" / "checkpoint" / "meta.json"
    meta = json.loads(meta_file.read_text())
    assert meta["seconds"] > 0  # the interrupted run's time so far; made large below so that it shows in the total
    meta_file.write_text(json.dumps({**meta, "seconds": 1000.0}))
    resumed = erase_concept(
        pipe.__class__(**build_tiny_pipe().components),
        method,
        request,
        tmp_path / "resumed",
        overrides=over,
        resume=True,
        progress=False,
    )
    assert resumed.config["timing"]["resumed_from"] == resumed_from
    # the time of the interrupted run up to its checkpoint counts in the resumed run's time
    assert resumed.config["timing"]["seconds_before_resume"] == 1000.0
    assert 1000 < resumed.config["efficiency"]["erase_seconds"] < 1000 + 600
    assert resumed.names() == full.names()
    for n in full.names():
        assert torch.equal(resumed.deltas[n], full.deltas[n]), n
