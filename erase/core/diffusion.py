"""Diffusion helpers shared by the erasure methods: prompts, the model's own generations, noising,
training targets and the predicted clean latent, for both ``epsilon`` and ``v_prediction`` models.

Notation: a_t = alphas_cumprod[t]; x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps.

* epsilon models predict eps; x0-hat = (x_t - sqrt(1 - a_t) eps-hat) / sqrt(a_t).
* v_prediction models predict v = sqrt(a_t) eps - sqrt(1 - a_t) x0; x0-hat = sqrt(a_t) x_t - sqrt(1 - a_t) v-hat.

Other prediction types (e.g. ``sample``) are refused with a clear error rather than trained on the wrong target.

Classifier-free guidance (``cfg_eps``) uses diffusers' convention, e_u + w (e_c - e_u): w = 1 is the
conditional prediction. Upstream SalUn writes (1 + w') e_c - w' e_u, which is the same with w = 1 + w'
(``salun_guidance`` converts).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .components import model_device
from .errors import EraseError

PREDICTION_TYPES = ("epsilon", "v_prediction")


def prediction_type(pipe) -> str:
    """The scheduler's prediction type, refused unless the helpers support it."""
    kind = getattr(pipe.scheduler.config, "prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise EraseError(
            f"the model predicts {kind!r}; erasekit's diffusion methods support {', '.join(PREDICTION_TYPES)}"
        )
    return kind


def token_ids(pipe, prompts: list[str]) -> torch.Tensor:
    """Padded token ids (N, L) of prompts, as the pipeline tokenizes them."""
    tok = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return tok.input_ids


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states (N, L, D) for prompts, as the pipeline conditions its UNet."""
    return pipe.text_encoder(token_ids(pipe, prompts).to(model_device(pipe)))[0]


@torch.no_grad()
def sample_latents(
    pipe, prompts: list[str], seeds: list[int], *, steps: int, guidance: float, batch_size: int = 64
) -> torch.Tensor:
    """The model's own generations for prompts, as UNet-space latents (N, C, h, w); one seed per image."""
    out = []
    device = model_device(pipe)
    gen_device = "cpu" if device.type == "mps" else device
    for i in range(0, len(prompts), batch_size):
        gens = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds[i : i + batch_size]]
        r = pipe(
            prompt=prompts[i : i + batch_size],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
            output_type="latent",
        )
        out.append(r.images.float())
    return torch.cat(out)


@torch.no_grad()
def encode_images(pipe, images: torch.Tensor) -> torch.Tensor:
    """Float images (N, 3, H, W) in [0, 1] -> UNet-space latents (posterior mode x scaling factor)."""
    vae = pipe.vae
    z = vae.encode((images * 2 - 1).to(model_device(pipe), vae.dtype)).latent_dist.mode()
    return z.float() * vae.config.scaling_factor


def alphas_cumprod(pipe) -> torch.Tensor:
    return pipe.scheduler.alphas_cumprod.to(model_device(pipe), torch.float32)


def _a(acp: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    return acp[t].view(-1, *([1] * (ndim - 1)))


def noisy(z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, acp: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps."""
    a = _a(acp, t, z0.ndim)
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


def training_target(
    kind: str, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, acp: torch.Tensor
) -> torch.Tensor:
    """What the model should output for x_t = noisy(z0, noise, t): eps, or v = sqrt(a) eps - sqrt(1 - a) x0."""
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        a = _a(acp, t, z0.ndim)
        return a.sqrt() * noise - (1 - a).sqrt() * z0
    raise EraseError(f"unsupported prediction type {kind!r}; use one of {PREDICTION_TYPES}")


def denoising_error(
    unet,
    z0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor,
    acp: torch.Tensor,
    prediction: str,
) -> torch.Tensor:
    """Per-image MSE of the UNet's output at x_t = noisy(z0, noise, t) under ``cond`` against its training target:
    the plain denoising loss, run in the UNet's dtype and measured in float32 (differentiable in ``cond``)."""
    dtype = unet.dtype
    pred = unet(noisy(z0, noise, t, acp).to(dtype), t, cond.to(dtype)).sample.float()
    return F.mse_loss(pred, training_target(prediction, z0, noise, t, acp), reduction="none").flatten(1).mean(1)


def predicted_x0(
    kind: str, x_t: torch.Tensor, model_out: torch.Tensor, t: torch.Tensor, acp: torch.Tensor
) -> torch.Tensor:
    """x0-hat from the model's output at x_t (the scheduler's ``pred_original_sample``, unclipped)."""
    a = _a(acp, t, x_t.ndim)
    if kind == "epsilon":
        return (x_t - (1 - a).sqrt() * model_out) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * x_t - (1 - a).sqrt() * model_out
    raise EraseError(f"unsupported prediction type {kind!r}; use one of {PREDICTION_TYPES}")


def cfg_eps(unet, zt, t, cond, uncond, guidance: float) -> torch.Tensor:
    """Classifier-free-guidance-combined prediction in diffusers' convention: e_u + w (e_c - e_u)."""
    both = unet(torch.cat([zt, zt]), torch.cat([t, t]), torch.cat([uncond, cond])).sample
    e_u, e_c = both.chunk(2)
    return e_u + guidance * (e_c - e_u)


def salun_guidance(upstream_w: float) -> float:
    """Upstream SalUn's guidance weight w' ((1 + w') e_c - w' e_u) in diffusers' convention: 1 + w'."""
    return 1.0 + upstream_w


RETAIN_LOSSES = ("diffusion", "distill")


def retain_loss(
    kind: str,
    pred: torch.Tensor,
    *,
    prediction: str,
    z0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    acp: torch.Tensor,
    frozen=None,
    zt: torch.Tensor | None = None,
    cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """The retain term every diffusion method shares, on retain latents z0 noised to zt with ``noise`` at t.

    * ``diffusion`` (upstream SalUn, DoCo, Concept Ablation's prior preservation): the plain denoising
      loss, MSE(pred, training target of (z0, noise)).
    * ``distill`` (ours): MSE(pred, frozen original's prediction at (zt, t, cond)): "keep everything
      else" as "change nothing else", which keeps retained concepts on small models.
    """
    if kind == "diffusion":
        return F.mse_loss(pred, training_target(prediction, z0, noise, t, acp))
    if kind == "distill":
        if frozen is None:
            raise EraseError("the distill retain loss needs the frozen original model")
        with torch.no_grad():
            target = frozen(zt, t, cond).sample
        return F.mse_loss(pred, target)
    raise EraseError(f"unknown retain_loss {kind!r}; choose one of {RETAIN_LOSSES}")
