"""DoCo (Wu et al., AAAI 2025): concept-domain correction with adversarial alignment and gradient surgery.

1. Data: the model's own generations of the anchor prompts, as latents (``anchor_prompts[i]`` pairs
   ``forget_prompts[i]``); retain data: the same anchor images with their anchor prompts (upstream), or
   generations of the request's retain prompts (``retain_data = "retain"``).
2. For anchor latents noised to x_t at t (uniform in [t_min, t_max]):
   real = x0-hat of the *original* model on the anchor prompt (no grad);
   fake = x0-hat of the trained model on the target prompt. x0-hat honours the scheduler's prediction type.
   The original is either a frozen copy of the UNet (``teacher = "frozen"``) or the same UNet with the
   trained tensors swapped back to their base values for one forward pass (``"base_weights"``: only the
   trainable tensors are copied, which for K/V is 3% of the UNet).
3. A PatchGAN discriminator on x0-hat (labels as upstream: real/anchor = 0, fake/target = 1):
   L_D = BCE(D(real), 0) + BCE(D(sg fake), 1); generator loss L_adv = BCE(D(fake), 0).
   The first ``warmup`` steps train D only; then every step is one generator step and one D step.
4. Generator step: g_u = grad L_adv and g_r = grad L_retain (``torch.autograd.grad``, each clipped to
   global norm ``clip``), combined by ``surgery``: ``official`` (DoCo's released per-tensor rule,
   update = g_u only), ``pcgrad`` (exact PCGrad, both projected and summed; ``pcgrad_scope`` global or
   per_tensor) or ``none`` (g_u + w g_r, the ablation without surgery). ``retain_weight`` w sets how much
   of the retain gradient the update adds in every mode (default: each mode's upstream value, official 0).
   The discriminator never receives generator gradients (its loss sees a detached fake) and the
   generator never receives the discriminator's (its gradients are taken w.r.t. its own weights only).
   The discriminator's weights are training state (checkpointed for resume), never part of the patch.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..core.components import model_device, model_root
from ..core.data import GenerationSets
from ..core.diffusion import (
    RETAIN_LOSSES,
    alphas_cumprod,
    encode_prompts,
    noisy,
    predicted_x0,
    prediction_type,
    retain_loss,
)
from ..core.errors import EraseError
from ..core.loop import Eraser
from ..core.registry import TrainedConfig, check_options, option, register_method
from ..core.selection import UNET_GROUPS, ParamSelection, unet_weights
from ..core.surgery import COMBINERS, UPSTREAM_RETAIN_WEIGHT, clip_global_norm, dot, grads_of


@dataclass
class DoCoConfig(TrainedConfig):
    lr: float = option(4.8e-5, "generator learning rate (AdamW, weight decay 1e-2; upstream 6e-6 x batch 8)")
    d_lr: float = option(
        5e-4, "discriminator learning rate (Adam, betas 0.5 / 0.999; upstream 5e-4 styles, 1e-4 objects)"
    )
    steps: int = option(2000, "training steps, warm-up included")
    warmup: int = option(1000, "discriminator-only steps at the start")
    batch_size: int = option(8, "anchor samples per step (the adversarial batch)")
    retain_batch_size: int = option(8, "retain samples per step")
    surgery: str = option(
        "official",
        "how g_u meets g_r: 'official' (DoCo's per-tensor rule), 'pcgrad' (exact PCGrad) or 'none' (weighted sum)",
    )
    pcgrad_scope: str = option(
        "global", "with surgery pcgrad: project over all weights ('global') or tensor by tensor ('per_tensor')"
    )
    lam: float = option(1.0, "with surgery official: projection strength lambda")
    retain_weight: float | None = option(
        None,
        "weight w of the retain gradient in the update: official proj(g_u) + w g_r, pcgrad g_u' + w g_r', "
        "none g_u + w g_r; null = the mode's upstream value (official 0, pcgrad 1, none 0.1)",
    )
    clip: float = option(1.0, "global-norm clip of each gradient before surgery")
    retain_loss: str = option(
        "diffusion", "'diffusion' (upstream: denoising loss) or 'distill' (the original model's prediction)"
    )
    retain_data: str = option(
        "anchor", "retain batch: 'anchor' images with anchor prompts (upstream) or the request's 'retain' prompts"
    )
    retain_uncond: bool = option(
        False,
        "also keep the empty prompt's prediction (classifier-free guidance's "
        "unconditional branch) in the retain batch",
    )
    parameter_group: str = option(
        "cross_attention_kv", "trainable weights: 'cross_attention_kv' (upstream), 'cross_attention' or 'unet'"
    )
    trainable: str = option(
        "",
        "a regex over the UNet's parameter names that replaces parameter_group (e.g. 'attn2\\.to_[kv]|^mid_block\\.')",
    )
    teacher: str = option(
        "base_weights",
        "the original model: 'base_weights' (trained tensors swapped back, saves memory) or a 'frozen' copy",
    )
    t_min: int = option(0, "smallest timestep of the adversarial batch")
    t_max: int = option(999, "largest timestep of the adversarial batch (x0-hat near T is mostly noise)")
    disc_layers: int = option(4, "stride-2 convolutions of the PatchGAN discriminator (upstream 4 for 64x64 latents)")
    disc_width: int = option(64, "channels of the discriminator's first layer (doubled per layer)")
    anchor_seeds: int = option(5, "generated images per anchor prompt")
    retain_seeds: int = option(1, "generated images per retain prompt (retain_data 'retain')")
    data_steps: int = option(25, "sampler steps for the generated data")
    data_guidance: float = option(7.5, "CFG weight of the sampler that generates the data")
    data_seed: int = option(10_000, "first seed of the generated data (disjoint from evaluation seeds)")

    method: ClassVar[str] = "doco"

    def check(self) -> None:
        check_options(
            self,
            "doco",
            choices={
                "surgery": tuple(COMBINERS),
                "pcgrad_scope": ("global", "per_tensor"),
                "retain_loss": RETAIN_LOSSES,
                "retain_data": ("anchor", "retain"),
                "parameter_group": tuple(UNET_GROUPS),
                "teacher": ("base_weights", "frozen"),
            },
            at_least_one=(
                "batch_size",
                "retain_batch_size",
                "anchor_seeds",
                "data_steps",
                "disc_layers",
                "disc_width",
            ),
            non_negative=("retain_seeds", "t_min"),
            positive=("d_lr", "clip"),
        )
        if self.retain_weight is not None and self.retain_weight < 0:
            raise EraseError(f"doco option retain_weight must be >= 0, got {self.retain_weight}")
        if self.warmup < 0 or self.warmup >= self.steps:
            raise EraseError(
                f"warmup ({self.warmup}) must be smaller than steps ({self.steps}), or the generator never "
                "trains; lower --set warmup=..."
            )
        unet_weights(self.parameter_group, self.trainable)
        if self.t_min > self.t_max:
            raise EraseError(f"need 0 <= t_min <= t_max, got {self.t_min} and {self.t_max}")


class PatchDiscriminator(nn.Module):
    """PatchGAN on (C, h, w) latents: ``layers`` 4x4 stride-2 convolutions (BatchNorm after the first),
    LeakyReLU(0.2), then a 3x3 convolution to one logit per patch."""

    def __init__(self, channels: int, layers: int = 4, width: int = 64):
        super().__init__()
        mods, c = [], channels
        for k in range(layers):
            out = width * 2**k
            mods += (
                [nn.Conv2d(c, out, 4, stride=2, padding=1)]
                + ([nn.BatchNorm2d(out)] if k else [])
                + [nn.LeakyReLU(0.2)]
            )
            c = out
        mods.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _check_disc_depth(layers: int, latent_size, batch_size: int) -> None:
    """Each stride-2 layer halves the latent; the last 4x4 convolution needs at least 2x2 before padding, and the
    BatchNorm after it more than one value per channel (a 1x1 map needs a batch of at least 2)."""
    side = min(latent_size) if isinstance(latent_size, (tuple, list)) else int(latent_size)
    if side < 2**layers:
        deepest = max(1, side.bit_length() - 1)
        raise EraseError(
            f"disc_layers {layers} needs latents of at least {2**layers}x{2**layers}; this model's are {side}x{side}: "
            f"--set disc_layers={deepest} or fewer (the canvas-mini preset uses 2)"
        )
    if layers > 1 and side < 2 ** (layers + 1) and batch_size < 2:
        raise EraseError(
            f"disc_layers {layers} on {side}x{side} latents ends in a 1x1 map, which BatchNorm cannot normalise "
            f"at batch_size 1: --set batch_size=2 or more, or --set disc_layers={layers - 1}"
        )


def _bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


class DoCo(Eraser):
    """DoCo: adversarial alignment of the target's x0-hat domain to the anchor's, with gradient
    surgery against a retain loss."""

    name = "doco"

    def scope(self, pipe) -> str:
        return unet_weights(self.config.parameter_group, self.config.trainable)

    def setup(self, pipe) -> ParamSelection:
        cfg, req = self.config, self.request
        self.pipe, self.unet, self.dev = pipe, pipe.unet, model_device(pipe)
        self.prediction = prediction_type(pipe)
        self.acp = alphas_cumprod(pipe)
        if cfg.t_max >= len(self.acp):
            raise EraseError(f"t_max {cfg.t_max} is beyond the scheduler's {len(self.acp)} timesteps")
        _check_disc_depth(cfg.disc_layers, self.unet.config.sample_size, cfg.batch_size)
        if cfg.retain_data == "retain" and not req.retain_prompts:
            raise EraseError(
                "retain_data 'retain' needs retain prompts in the request; give retain "
                "concepts or use retain_data anchor"
            )
        self.rng = torch.Generator("cpu").manual_seed(req.seed)
        data = GenerationSets(pipe, steps=cfg.data_steps, guidance=cfg.data_guidance)
        self.z_anchor, self.anchor_idx = data(req.anchor_prompts, cfg.anchor_seeds, cfg.data_seed)
        self.e_forget = encode_prompts(pipe, req.forget_prompts)
        self.e_anchor = encode_prompts(pipe, req.anchor_prompts)
        if cfg.retain_data == "retain":
            prompts = list(req.retain_prompts) + ([""] if cfg.retain_uncond else [])
            self.z_retain, self.retain_idx = data(prompts, cfg.retain_seeds, cfg.data_seed + 50_000)
            self.e_retain = encode_prompts(pipe, prompts)
        else:
            self.z_retain, self.retain_idx, self.e_retain = self.z_anchor, self.anchor_idx, self.e_anchor
            if cfg.retain_uncond:  # the anchor images once more, under the empty prompt
                self.z_retain = torch.cat([self.z_anchor, self.z_anchor])
                self.retain_idx = torch.cat(
                    [self.anchor_idx, torch.full_like(self.anchor_idx, len(req.anchor_prompts))]
                )
                self.e_retain = torch.cat([self.e_anchor, encode_prompts(pipe, [""])])
        self.info["data"] = {
            "anchor_images": len(self.z_anchor),
            "retain_images": len(self.z_retain),
            "retain_data": cfg.retain_data,
        }

        root = model_root(pipe)
        selection = ParamSelection.by_name(root, self.scope(pipe))
        self.params = selection.parameters(root)
        selection.freeze_others_(root)
        self.base = {n: p.detach().clone() for n, p in self.params.items()} if cfg.teacher == "base_weights" else None
        self.frozen = copy.deepcopy(self.unet).eval().requires_grad_(False) if cfg.teacher == "frozen" else None
        self.disc = PatchDiscriminator(self.z_anchor.shape[1], cfg.disc_layers, cfg.disc_width).to(self.dev)
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=1e-2)
        self.optimizer_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999))
        self.info["trainable"] = {
            "group": cfg.trainable or cfg.parameter_group,
            "tensors": len(self.params),
            "weights": selection.count(root),
        }
        self.info["discriminator"] = {
            "layers": cfg.disc_layers,
            "width": cfg.disc_width,
            "parameters": sum(p.numel() for p in self.disc.parameters()),
        }
        return selection

    def training_state(self) -> dict:
        return {**super().training_state(), "optimizer_d": self.optimizer_d, "discriminator": self.disc}

    # -- the original model -----------------------------------------------------------------
    @contextmanager
    def _original_weights(self):
        """The trained tensors hold their base values inside the block (no grad is taken there)."""
        if self.base is None:
            yield self.frozen
            return
        saved = {n: p.data for n, p in self.params.items()}
        try:
            for n, p in self.params.items():
                p.data = self.base[n]
            yield self.unet
        finally:
            for n, p in self.params.items():
                p.data = saved[n]

    def _sample(self, z: torch.Tensor, n: int, t_lo: int, t_hi: int):
        i = torch.randint(0, len(z), (n,), generator=self.rng)
        t = torch.randint(t_lo, t_hi + 1, (n,), generator=self.rng).to(self.dev)
        noise = torch.randn((n, *z.shape[1:]), generator=self.rng).to(self.dev)
        z0 = z[i].to(self.dev)
        return i, z0, noise, t, noisy(z0, noise, t, self.acp)

    def _x0(self, x_t, out, t):
        return predicted_x0(self.prediction, x_t, out, t, self.acp)

    # -- one step -----------------------------------------------------------------------------
    def step(self, i: int) -> dict[str, float]:
        cfg = self.config
        ai, _, _, t, x_t = self._sample(self.z_anchor, cfg.batch_size, cfg.t_min, cfg.t_max)
        c_target, c_anchor = self.e_forget[self.anchor_idx[ai]], self.e_anchor[self.anchor_idx[ai]]
        with torch.no_grad(), self._original_weights() as original:
            real = self._x0(x_t, original(x_t, t, c_anchor).sample, t)
        losses = {}
        if i < cfg.warmup:
            with torch.no_grad():
                fake = self._x0(x_t, self.unet(x_t, t, c_target).sample, t)
        else:
            fake = self._x0(x_t, self.unet(x_t, t, c_target).sample, t)
            losses.update(self._generator_step(fake))
        losses.update(self._discriminator_step(real, fake.detach()))
        return losses

    def _generator_step(self, fake: torch.Tensor) -> dict[str, float]:
        cfg = self.config
        adv = _bce(self.disc(fake), 0.0)  # make the target's x0-hat look like the anchor's
        g_u = clip_global_norm(grads_of(adv, self.params), cfg.clip)  # w.r.t. the generator's weights only
        ri, z0_r, n_r, t_r, zt_r = self._sample(self.z_retain, cfg.retain_batch_size, 0, len(self.acp) - 1)
        c_r = self.e_retain[self.retain_idx[ri]]
        pred_r = self.unet(zt_r, t_r, c_r).sample
        ret = retain_loss(
            cfg.retain_loss,
            pred_r,
            prediction=self.prediction,
            z0=z0_r,
            noise=n_r,
            t=t_r,
            acp=self.acp,
            frozen=_Original(self),
            zt=zt_r,
            cond=c_r,
        )
        g_r = clip_global_norm(grads_of(ret, self.params), cfg.clip)
        w = UPSTREAM_RETAIN_WEIGHT[cfg.surgery] if cfg.retain_weight is None else cfg.retain_weight
        update = COMBINERS[cfg.surgery](g_u, g_r, {"lam": cfg.lam, "scope": cfg.pcgrad_scope, "retain_weight": w})
        for n, p in self.params.items():
            p.grad = update[n].to(p.dtype)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "adv": adv.item(),
            "retain": ret.item(),
            "cos_u_r": float(dot(g_u, g_r) / (dot(g_u, g_u).sqrt() * dot(g_r, g_r).sqrt() + 1e-12)),
        }

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        d_loss = _bce(self.disc(real), 0.0) + _bce(self.disc(fake), 1.0)
        self.optimizer_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.optimizer_d.step()
        self.optimizer_d.zero_grad(set_to_none=True)
        return {"d": d_loss.item()}


class _Original:
    """Callable like a UNet, running the original weights (for the distilled retain target)."""

    def __init__(self, doco: DoCo):
        self.doco = doco

    def __call__(self, x, t, c):
        with torch.no_grad(), self.doco._original_weights() as original:
            return original(x, t, c)


register_method(
    "doco",
    DoCoConfig,
    DoCo,
    "DoCo: adversarial alignment of the target's predicted clean latent to the anchor's, with gradient "
    "surgery against a retain loss",
)
