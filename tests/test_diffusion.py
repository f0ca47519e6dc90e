"""Shared diffusion helpers against hand values and diffusers' own schedulers."""

import pytest
import torch

from erase.core.diffusion import cfg_eps, noisy, predicted_x0, prediction_type, salun_guidance, training_target
from erase.core.errors import EraseError


class _Unet:
    """Returns 1 for the unconditional half and 3 for the conditional half, whatever the input."""

    def __call__(self, x, t, c):
        class Out:
            sample = torch.cat([torch.full_like(x[: len(x) // 2], 1.0), torch.full_like(x[len(x) // 2 :], 3.0)])

        return Out()


def test_cfg_eps_is_diffusers_convention():
    z, t = torch.zeros(2, 4, 2, 2), torch.tensor([5, 6])
    cond = uncond = torch.zeros(2, 3, 8)
    # e_u + w (e_c - e_u) = 1 + 7.5 * 2 = 16
    assert torch.equal(cfg_eps(_Unet(), z, t, cond, uncond, 7.5), torch.full_like(z, 16.0))
    # upstream SalUn's (1 + w') e_c - w' e_u with w' = 7.5: 8.5 * 3 - 7.5 * 1 = 18 = our w = 8.5
    assert torch.equal(cfg_eps(_Unet(), z, t, cond, uncond, salun_guidance(7.5)), torch.full_like(z, 18.0))


def _scheduler(kind):
    from diffusers import DDIMScheduler

    s = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type=kind,
        set_alpha_to_one=False,
    )
    s.set_timesteps(50)
    return s


def test_noisy_matches_add_noise():
    s = _scheduler("epsilon")
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 999])
    assert torch.allclose(noisy(z0, eps, t, s.alphas_cumprod), s.add_noise(z0, eps, t), atol=1e-6)
    a = s.alphas_cumprod[500]
    assert torch.allclose(
        noisy(z0, eps, t, s.alphas_cumprod)[1], a.sqrt() * z0[1] + (1 - a).sqrt() * eps[1], atol=1e-6
    )


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_x0_hat_and_target_match_the_scheduler(kind):
    s = _scheduler(kind)
    g = torch.Generator().manual_seed(1)
    x_t, out = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    t = int(s.timesteps[10])
    ours = predicted_x0(kind, x_t, out, torch.tensor([t]), s.alphas_cumprod)
    theirs = s.step(out, t, x_t, eta=0.0).pred_original_sample
    assert torch.allclose(ours, theirs, atol=1e-5)
    # the training target: eps itself, or the scheduler's velocity
    z0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    tt = torch.tensor([100, 900])
    target = training_target(kind, z0, eps, tt, s.alphas_cumprod)
    assert torch.allclose(target, eps if kind == "epsilon" else s.get_velocity(z0, eps, tt), atol=1e-6)
    # and the x0-hat of the exact target at x_t is x0 again
    assert torch.allclose(
        predicted_x0(kind, noisy(z0, eps, tt, s.alphas_cumprod), target, tt, s.alphas_cumprod), z0, atol=1e-4
    )


def test_unsupported_prediction_type_is_refused():
    class Pipe:
        class scheduler:
            class config:
                prediction_type = "sample"

    with pytest.raises(EraseError, match="support epsilon, v_prediction"):
        prediction_type(Pipe())
    with pytest.raises(EraseError, match="unsupported prediction type"):
        training_target("sample", torch.zeros(1), torch.zeros(1), torch.tensor([0]), torch.ones(10))
