"""ESD (Erased Stable Diffusion): fine-tune the model so that, on the concept's prompt, it predicts the original
model's prediction *guided away* from the concept.

Per step (paper form, legacy upstream script): pick a forget prompt c and a sampler step j; sample from noise
with **the model being trained** (no gradient, classifier-free guidance ``sample_guidance``) down to the j-th
of ``sample_steps`` DDIM timesteps, giving x_t; then regress

    eps_trained(x_t, t, c)  onto  eps_frozen(x_t, t, empty) - eta * (eps_frozen(x_t, t, c) - eps_frozen(x_t, t, empty))

with the frozen original model. The newer upstream script writes the target as
eps_frozen(x_t, t, c) - eta' (eps_frozen(x_t, t, c) - eps_frozen(x_t, t, empty)), the same thing with
eta' = eta + 1 (its default eta' = 2 is the paper's eta = 1). Variants: ``x`` trains the cross-attention
(``attn2``, for styles), ``u`` every UNet weight outside cross-attention and the norm layers (for global
concepts). No retain term: ESD's only protection of other concepts is that the target names one prompt.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..core.components import model_device, model_root
from ..core.diffusion import encode_prompts
from ..core.loop import Eraser
from ..core.registry import TrainedConfig, check_options, option, register_method
from ..core.selection import ParamSelection, unet_weights

VARIANTS = {
    "x": ("cross_attention", ""),
    "x_strict": ("cross_attention_kv", ""),
    "u": ("unet", r"^(?!.*attn2\.)(?!.*norm)"),
}


@dataclass
class ESDConfig(TrainedConfig):
    variant: str = option(
        "x",
        "trained weights: 'x' (cross-attention attn2, styles), 'x_strict' (attn2 K/V only) or 'u' (everything "
        "outside cross-attention and the norm layers, global concepts)",
    )
    lr: float = option(1e-5, "learning rate (Adam, no weight decay; upstream 1e-5)")
    steps: int = option(1000, "training steps (upstream 1000)")
    batch_size: int = option(1, "forget prompts per step (upstream 1)")
    eta: float = option(1.0, "negative guidance eta of the paper form (the newer script's eta' = eta + 1)")
    sample_guidance: float = option(3.0, "CFG weight of the partial sampling that produces x_t (upstream 3)")
    sample_steps: int = option(50, "DDIM steps of the partial-sampling schedule (upstream 50)")

    method: ClassVar[str] = "esd"

    def check(self) -> None:
        check_options(
            self,
            "esd",
            choices={"variant": tuple(VARIANTS)},
            at_least_one=("batch_size", "sample_steps"),
            non_negative=("sample_guidance",),
            positive=("eta",),
        )


class ESD(Eraser):
    """ESD: the concept's prediction regressed onto the frozen original's negatively guided prediction, on the
    model's own partial samples."""

    name = "esd"

    def scope(self, pipe) -> str:
        return unet_weights(*VARIANTS[self.config.variant])

    def setup(self, pipe) -> ParamSelection:
        from diffusers import DDIMScheduler

        cfg, req = self.config, self.request
        self.unet, self.dev = pipe.unet, model_device(pipe)
        self.rng = torch.Generator("cpu").manual_seed(req.seed)
        self.sampler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.sampler.set_timesteps(cfg.sample_steps)
        with torch.no_grad():
            self.e_forget = encode_prompts(pipe, req.forget_prompts)
            self.e_empty = encode_prompts(pipe, [""])
        size = self.unet.config.sample_size
        self.latent_shape = (self.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
        root = model_root(pipe)
        selection = ParamSelection.by_name(root, self.scope(pipe))
        params = selection.parameters(root)
        selection.freeze_others_(root)
        self.frozen = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(params.values(), lr=cfg.lr, weight_decay=0.0)
        self.info["trainable"] = {"variant": cfg.variant, "tensors": len(params), "weights": selection.count(root)}
        return selection

    @torch.no_grad()
    def _partial_sample(self, cond: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x at the j-th DDIM timestep, sampled from noise by the model being trained (CFG), and that timestep."""
        n, w = len(cond), self.config.sample_guidance
        x = torch.randn((n, *self.latent_shape), generator=self.rng).to(self.dev) * self.sampler.init_noise_sigma
        uncond = self.e_empty.expand(n, -1, -1)
        for t in self.sampler.timesteps[:j]:
            tt = torch.full((n,), int(t), device=self.dev)
            e_u, e_c = self.unet(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([uncond, cond])).sample.chunk(2)
            x = self.sampler.step(e_u + w * (e_c - e_u), t, x).prev_sample
        return x, torch.full((n,), int(self.sampler.timesteps[j]), device=self.dev)

    def step(self, i: int) -> dict[str, float]:
        cfg = self.config
        idx = torch.randint(0, len(self.e_forget), (cfg.batch_size,), generator=self.rng)
        j = int(torch.randint(0, cfg.sample_steps, (1,), generator=self.rng))
        cond = self.e_forget[idx]
        was_training = self.unet.training
        self.unet.eval()
        x, t = self._partial_sample(cond, j)
        self.unet.train(was_training)
        with torch.no_grad():
            e_u, e_c = self.frozen(
                torch.cat([x, x]), torch.cat([t, t]), torch.cat([self.e_empty.expand(len(x), -1, -1), cond])
            ).sample.chunk(2)
            target = e_u - cfg.eta * (e_c - e_u)
        loss = F.mse_loss(self.unet(x, t, cond).sample, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "sample_step": float(j)}


register_method(
    "esd",
    ESDConfig,
    ESD,
    "ESD: the concept's prediction regressed onto the original's negatively guided one (x: "
    "cross-attention, u: the rest)",
)
