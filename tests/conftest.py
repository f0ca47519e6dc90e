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

    from eval.canvas_mini import PIPELINE_DIR

    pipe = StableDiffusionPipeline.from_pretrained(str(PIPELINE_DIR))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pipe(seed: int = 0):
    """A random-weight StableDiffusionPipeline small enough to train in a test (like diffusers' dummy components)."""
    from diffusers import StableDiffusionPipeline

    from eval.canvas_mini.models import make_schedulers, make_text_encoder, make_unet, make_vae
    from eval.canvas_mini.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer(300, model_max_length=16)
    pipe = StableDiffusionPipeline(
        vae=make_vae(), text_encoder=make_text_encoder(tok), tokenizer=tok, unet=make_unet((16, 32, 32)),
        scheduler=make_schedulers()[1], safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_pipe():
    return build_tiny_pipe()


def interrupted(monkeypatch, eraser_cls, at_step: int):
    """Make ``eraser_cls.step`` raise KeyboardInterrupt at ``at_step`` (as Ctrl-C would); returns a function that undoes it."""
    real = eraser_cls.step

    def step(self, i):
        if i == at_step:
            raise KeyboardInterrupt
        return real(self, i)

    monkeypatch.setattr(eraser_cls, "step", step)
    return lambda: monkeypatch.setattr(eraser_cls, "step", real)
