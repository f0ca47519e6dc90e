"""DoCo on a tiny random pipeline: plumbing, surgery modes, gradient isolation, resume, bad options."""

import pytest
import torch
from test_salun import request

from erase.api import erase_concept, resolve_config
from erase.core.errors import EraseError
from pipelines.stable_diffusion import named_parameters

TINY = {
    "steps": 3,
    "warmup": 1,
    "anchor_seeds": 1,
    "retain_seeds": 1,
    "data_steps": 2,
    "batch_size": 2,
    "retain_batch_size": 2,
    "lr": 1e-3,
    "disc_layers": 2,
    "disc_width": 8,
}


@pytest.mark.parametrize("surgery", ["official", "pcgrad", "none"])
def test_three_steps_write_a_kv_patch_without_the_discriminator(tiny_pipe, tmp_path, surgery):
    before = {n: p.detach().clone() for n, p in named_parameters(tiny_pipe).items()}
    patch = erase_concept(
        tiny_pipe, "doco", request(), tmp_path, overrides={**TINY, "surgery": surgery}, progress=False
    )
    assert all(torch.equal(before[n], p) for n, p in named_parameters(tiny_pipe).items())
    kv = sorted(n for n in before if ".attn2.to_k." in n or ".attn2.to_v." in n)
    assert patch.names() == kv  # the discriminator is training state, never part of the patch
    assert all(float(patch.deltas[n].float().abs().max()) > 0 for n in kv)
    import json

    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert "adv" not in log[0] and "d" in log[0]  # step 0 is warm-up: discriminator only
    assert {"adv", "retain", "cos_u_r", "d"} <= set(log[-1])


def test_frozen_teacher_and_base_weight_teacher_agree(tiny_pipe, tmp_path):
    a = erase_concept(
        tiny_pipe,
        "doco",
        request(),
        tmp_path / "a",
        overrides={**TINY, "teacher": "frozen", "patch_dtype": "float32"},
        progress=False,
    )
    b = erase_concept(
        tiny_pipe,
        "doco",
        request(),
        tmp_path / "b",
        overrides={**TINY, "teacher": "base_weights", "patch_dtype": "float32"},
        progress=False,
    )
    for n in a.names():
        assert torch.allclose(a.deltas[n], b.deltas[n], atol=1e-6), n


def test_gradients_never_cross_between_generator_and_discriminator(tiny_pipe, tmp_path, monkeypatch):
    from erase.methods.doco import DoCo

    seen = []
    real_g, real_d = DoCo._generator_step, DoCo._discriminator_step

    def g_step(self, fake):
        out = real_g(self, fake)
        seen.append(("after G", [p.grad for p in self.disc.parameters()]))
        return out

    def d_step(self, real, fake):
        assert not fake.requires_grad  # the discriminator sees a detached fake
        self.disc.zero_grad(set_to_none=True)
        d_loss = torch.nn.functional.binary_cross_entropy_with_logits(
            self.disc(fake), torch.ones_like(self.disc(fake))
        )
        d_loss.backward()
        seen.append(("D backward", [p.grad for p in self.params.values()]))
        self.disc.zero_grad(set_to_none=True)
        return real_d(self, real, fake)

    monkeypatch.setattr(DoCo, "_generator_step", g_step)
    monkeypatch.setattr(DoCo, "_discriminator_step", d_step)
    erase_concept(tiny_pipe, "doco", request(), tmp_path, overrides=TINY, progress=False)
    assert [w for w, _ in seen].count("after G") == 2
    for where, grads in seen:
        assert all(g is None for g in grads), where


def test_resume_is_bit_identical(tiny_pipe, tmp_path, monkeypatch):
    from conftest import assert_resume_is_bit_identical

    from erase.methods.doco import DoCo

    over = {**TINY, "steps": 6, "warmup": 2, "checkpoint_every": 2}
    assert_resume_is_bit_identical(
        tiny_pipe, "doco", DoCo, request(), over, tmp_path, monkeypatch, interrupt_at=5, resumed_from=4
    )


@pytest.mark.parametrize(
    "over, match",
    [
        ({"warmup": 5, "steps": 5}, "warmup (5) must be smaller than steps (5)"),
        ({"surgery": "magic"}, "unknown surgery 'magic' for doco"),
        ({"t_min": 10, "t_max": 5}, "t_min <= t_max"),
    ],
)
def test_bad_options(over, match):
    with pytest.raises(EraseError, match=match.replace("(", r"\(").replace(")", r"\)")):
        resolve_config("doco", None, over)


@pytest.mark.parametrize("retain_data, expected", [("retain", 3), ("anchor", 4)])
def test_retain_uncond_adds_the_empty_prompt(tiny_pipe, tmp_path, retain_data, expected):
    over = {**TINY, "retain_data": retain_data, "retain_uncond": True}
    patch = erase_concept(tiny_pipe, "doco", request(), tmp_path, overrides=over, progress=False)
    # retain: 2 retain prompts + "" (1 seed each); anchor: the 2 anchor images under their prompts and under ""
    assert patch.config["info"]["data"]["retain_images"] == expected
