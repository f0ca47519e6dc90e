"""SalUn (Fan et al., ICLR 2024): saliency-masked relabelling fine-tune of the UNet.

1. Data: the model's own generations for the forget prompts (the concept across the other concept
   axis) and for the retain prompts (every retained concept), as UNet-space latents. User images
   can replace the generated forget set (``forget_images``).
2. Saliency mask: one pass over the forget data; the loss is the MSE between the training target (the
   true noise, or v for v-prediction models) and the classifier-free-guidance-combined prediction
   e_u + w (e_c - e_u) with w = ``mask_guidance`` (diffusers' convention; upstream writes
   (1 + w') e_c - w' e_u, i.e. w = 1 + w', so upstream's 7.5 is our 8.5); signed gradients are summed
   per parameter (no optimiser step while accumulating), and the global top ``mask_fraction`` of
   |sum| over ``mask_scope`` is kept (largest magnitudes; ties with the threshold are kept, as upstream).
3. Unlearning: L = MSE(eps(x_t | c_forget), sg eps(x_t | c_anchor)) + alpha * L_retain, gradients
   multiplied by the mask after backward, Adam without weight decay.
   L_retain = ``diffusion``: MSE(eps(x_r | c_r), noise) (upstream SalUn), or ``distill``:
   MSE(eps(x_r | c_r), eps_orig(x_r | c_r)) against the frozen original UNet (our option; a pilot found
   it necessary to keep the other concepts on small models).
   ``relabel_on`` picks the images x_t is made from in the relabel term: the concept's own images
   (upstream), or those plus the anchor's images under the same forget prompt ("concept+anchor").
   With concept images only, the erased model is never taught what to do with c_forget once the
   sampling trajectory already looks like the anchor, and textures decided late in sampling (e.g.
   Pop_Art's dots on canvas-mini) come back: on Pop_Art this change alone took UA from 0 to 85 (2 seeds).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..core.components import model_device, model_root
from ..core.data import GenerationSets, load_image_folder
from ..core.diffusion import (
    RETAIN_LOSSES,
    alphas_cumprod,
    cfg_eps,
    encode_images,
    encode_prompts,
    noisy,
    prediction_type,
    retain_loss,
    training_target,
)
from ..core.errors import EraseError
from ..core.loop import Eraser
from ..core.registry import TrainedConfig, check_options, option, register_method
from ..core.selection import ParamSelection

SCOPES = {"unet": r"^unet\.", "cross_attention": r"^unet\..*attn2\."}
RELABEL_ON = ("concept", "concept+anchor")


@dataclass
class SalUnConfig(TrainedConfig):
    lr: float = option(1e-5, "learning rate (Adam, no weight decay)")
    steps: int = option(1000, "unlearning steps")
    batch_size: int = option(8, "forget samples per step")
    retain_batch_size: int = option(8, "retain samples per step")
    alpha: float = option(1.0, "weight of the retain loss")
    retain_loss: str = option(
        "diffusion",
        "'diffusion' (upstream: the retain images' own noise) or 'distill' (the frozen original's prediction)",
    )
    mask_fraction: float = option(0.5, "global top fraction of |saliency| that may change")
    mask_scope: str = option("unet", "'unet' (all UNet weights) or 'cross_attention' (attn2 only)")
    mask_guidance: float = option(
        7.5, "CFG weight of the saliency loss, diffusers' convention e_u + w (e_c - e_u); upstream's w' is w = 1 + w'"
    )
    anchor_target: str = option("frozen", "eps(x_t | c_anchor) from the 'frozen' original UNet or the 'live' one")
    forget_seeds: int = option(5, "generated images per forget prompt")
    retain_seeds: int = option(2, "generated images per retain prompt")
    data_steps: int = option(25, "sampler steps for the generated data")
    data_guidance: float = option(7.5, "CFG weight of the sampler that generates the data")
    data_seed: int = option(10_000, "first seed of the generated data (disjoint from evaluation seeds)")
    forget_images: str | None = option(None, "folder of user images for the forget set (instead of generations)")
    relabel_on: str = option(
        "concept", "x_t for the relabel loss: 'concept' images (upstream) or 'concept+anchor' (also the anchor's)"
    )

    method: ClassVar[str] = "salun"

    def check(self) -> None:
        check_options(
            self,
            "salun",
            choices={
                "retain_loss": RETAIN_LOSSES,
                "mask_scope": tuple(SCOPES),
                "relabel_on": RELABEL_ON,
                "anchor_target": ("frozen", "live"),
            },
            at_least_one=("batch_size", "retain_batch_size", "forget_seeds", "data_steps"),
            non_negative=("retain_seeds", "alpha"),
        )
        if not 0 < self.mask_fraction <= 1:
            raise EraseError(f"mask_fraction must be in (0, 1], got {self.mask_fraction}")


class SalUn(Eraser):
    """SalUn: saliency-masked relabelling (forget -> anchor) with a retain loss."""

    name = "salun"

    def scope(self, pipe) -> str:
        return SCOPES[self.config.mask_scope]

    def setup(self, pipe) -> ParamSelection:
        cfg, req = self.config, self.request
        self.pipe, self.unet = pipe, pipe.unet
        dev = model_device(pipe)
        self.prediction = prediction_type(pipe)
        self.rng = torch.Generator("cpu").manual_seed(req.seed)
        self.acp = alphas_cumprod(pipe)
        self.T = len(self.acp)
        self.data = GenerationSets(pipe, steps=cfg.data_steps, guidance=cfg.data_guidance)

        # -- data: the model's own generations, as latents --------------------------------
        n_f, n_r = len(req.forget_prompts), len(req.retain_prompts)
        if not n_r and cfg.alpha > 0:
            raise EraseError("the request has no retain prompts but alpha > 0; give retain concepts or set alpha 0")
        if cfg.forget_images:
            imgs = load_image_folder(cfg.forget_images, pipe.unet.config.sample_size * pipe.vae_scale_factor)
            self.z_forget = encode_images(pipe, imgs)
            self.forget_idx = torch.arange(len(imgs)) % n_f  # prompt index of each image
        else:
            self.z_forget, self.forget_idx = self.data(req.forget_prompts, cfg.forget_seeds, cfg.data_seed)
        n_concept = len(self.z_forget)  # the saliency mask is computed on the concept's own images only
        if cfg.relabel_on == "concept+anchor":
            # the anchor's images, indexed by the forget prompt they stand in for
            # (anchor_prompts[i] pairs forget_prompts[i])
            z_anchor, anchor_idx = self.data(req.anchor_prompts, cfg.forget_seeds, cfg.data_seed)
            self.z_forget = torch.cat([self.z_forget, z_anchor])
            self.forget_idx = torch.cat([self.forget_idx, anchor_idx])
        if n_r:
            self.z_retain, self.retain_idx = self.data(req.retain_prompts, cfg.retain_seeds, cfg.data_seed + 50_000)
        self.e_forget = encode_prompts(pipe, req.forget_prompts)
        self.e_anchor = encode_prompts(pipe, req.anchor_prompts)
        self.e_retain = encode_prompts(pipe, req.retain_prompts) if n_r else None
        self.e_empty = encode_prompts(pipe, [""])
        self.info["data"] = {
            "forget_images": n_concept,
            "relabel_images": len(self.z_forget),
            "retain_images": len(self.z_retain) if n_r else 0,
            "forget_prompts": n_f,
            "retain_prompts": n_r,
        }

        # -- saliency mask ------------------------------------------------------------
        root = model_root(pipe)
        for p in root.parameters():
            p.requires_grad_(False)
        scope = ParamSelection.by_name(root, SCOPES[cfg.mask_scope])
        scoped = scope.parameters(root)
        for p in scoped.values():
            p.requires_grad_(True)
            p.grad = None
        for i in range(0, n_concept, cfg.batch_size):
            z0 = self.z_forget[i : min(i + cfg.batch_size, n_concept)]
            t, noise = self._t_noise(len(z0))
            zt = noisy(z0.to(dev), noise, t, self.acp)
            cond = self.e_forget[self.forget_idx[i : i + len(z0)]]
            pred = cfg_eps(self.unet, zt, t, cond, self.e_empty.expand_as(cond), cfg.mask_guidance)
            F.mse_loss(
                pred, training_target(self.prediction, z0.to(dev), noise, t, self.acp)
            ).backward()  # gradients accumulate (summed, signed); no optimiser step
        grads = {n: p.grad.detach().clone() for n, p in scoped.items()}
        for p in scoped.values():
            p.grad = None
        self.selection = ParamSelection.by_saliency(grads, cfg.mask_fraction)
        self.root = root
        self.info["mask"] = {
            "fraction": cfg.mask_fraction,
            "scope": cfg.mask_scope,
            "selected": self.selection.count(root),
            "scope_size": sum(p.numel() for p in scoped.values()),
            "density_by_block": {
                k: round(v, 4)
                for k, v in self.selection.density_by_prefix(root, depth=3).items()
                if k.startswith("unet.")
            },
        }

        # -- unlearning state ---------------------------------------------------------------
        params = self.selection.freeze_others_(root)
        self.frozen = None
        if cfg.retain_loss == "distill" or cfg.anchor_target == "frozen":
            self.frozen = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=0.0)
        return self.selection

    def _t_noise(self, n: int):
        dev = model_device(self.pipe)
        t = torch.randint(0, self.T, (n,), generator=self.rng).to(dev)
        noise = torch.randn((n, *self.z_forget.shape[1:]), generator=self.rng).to(dev)
        return t, noise

    def step(self, i: int) -> dict[str, float]:
        cfg, dev = self.config, model_device(self.pipe)
        fi = torch.randint(0, len(self.z_forget), (cfg.batch_size,), generator=self.rng)  # shuffled forget loader
        t_f, n_f = self._t_noise(cfg.batch_size)
        zt_f = noisy(self.z_forget[fi].to(dev), n_f, t_f, self.acp)
        c_f, c_a = self.e_forget[self.forget_idx[fi]], self.e_anchor[self.forget_idx[fi]]
        with torch.no_grad():
            teacher = self.frozen if cfg.anchor_target == "frozen" else self.unet
            target_f = teacher(zt_f, t_f, c_a).sample
        losses = {}
        if cfg.alpha > 0:
            ri = torch.randint(0, len(self.z_retain), (cfg.retain_batch_size,), generator=self.rng)
            t_r, n_r = self._t_noise(cfg.retain_batch_size)
            zt_r = noisy(self.z_retain[ri].to(dev), n_r, t_r, self.acp)
            c_r = self.e_retain[self.retain_idx[ri]]
            pred = self.unet(torch.cat([zt_f, zt_r]), torch.cat([t_f, t_r]), torch.cat([c_f, c_r])).sample
            pred_f, pred_r = pred[: cfg.batch_size], pred[cfg.batch_size :]
            retain = retain_loss(
                cfg.retain_loss,
                pred_r,
                prediction=self.prediction,
                z0=self.z_retain[ri].to(dev),
                noise=n_r,
                t=t_r,
                acp=self.acp,
                frozen=self.frozen,
                zt=zt_r,
                cond=c_r,
            )
            losses["retain"] = retain.item()
        else:
            pred_f = self.unet(zt_f, t_f, c_f).sample
            retain = torch.zeros((), device=dev)
        forget = F.mse_loss(pred_f, target_f)
        loss = forget + cfg.alpha * retain
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.selection.mask_grads_(self.root)
        self.optimizer.step()
        losses["forget"] = forget.item()
        losses["loss"] = loss.item()
        return losses


register_method(
    "salun",
    SalUnConfig,
    SalUn,
    "SalUn: saliency-masked relabelling fine-tune of the UNet (forget -> anchor, plus a retain loss)",
)
