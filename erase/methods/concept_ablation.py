"""Concept Ablation (Kumari et al., ICCV 2023): make the target prompt produce what the anchor prompt produces.

1. Data: the model's own generations of the anchor prompts (``anchor_prompts[i]`` pairs ``forget_prompts[i]``),
   as latents; retain data the same for the retain prompts.
2. Loss on noisy anchor latents x_t at uniform t:
   MSE(eps(x_t | c_target), sg eps*(x_t | c_anchor)) + alpha * L_retain.
   eps* is the model itself under no_grad (``target = "model"``, upstream's default) or the frozen original
   (``"frozen"``). L_retain is the shared retain loss: ``diffusion`` (upstream's prior preservation on the
   retain images) or ``distill`` (the frozen original's prediction on retain prompts); a probe found the
   distilled term keeps same-seed fidelity of the other concepts near 30 dB on canvas-mini.
3. Adversarial training (``adversarial_steps`` > 0, AdvUnlearn's inner loop, ``erase.core.adversarial``): before
   each step a few Adam steps of a soft-prompt attack (k vectors prepended to each forget prompt, warm-started)
   search for prompts that make the model being trained draw the concept again (the original's own images of
   the forget prompts); the same ablation loss is then applied at those adversarial prompts, weighted by
   ``adversarial_weight``.
4. Trainable: the cross-attention K/V projections (``attn2.to_k`` / ``attn2.to_v``, upstream's default:
   they are the only weights that read the text, so the edit stays on the prompt side) or the whole UNet.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..core.adversarial import AdversarialPrefixes
from ..core.components import model_device, model_root
from ..core.data import GenerationSets
from ..core.diffusion import (
    RETAIN_LOSSES,
    alphas_cumprod,
    encode_prompts,
    noisy,
    prediction_type,
    retain_loss,
    token_ids,
)
from ..core.errors import EraseError
from ..core.loop import Eraser
from ..core.registry import TrainedConfig, check_options, option, register_method
from ..core.selection import UNET_GROUPS, ParamSelection, unet_weights


@dataclass
class ConceptAblationConfig(TrainedConfig):
    lr: float = option(2e-6, "learning rate (Adam, no weight decay; upstream 2e-6 x batch x GPUs)")
    steps: int = option(100, "training steps")
    batch_size: int = option(8, "anchor samples per step")
    retain_batch_size: int = option(8, "retain samples per step (with alpha > 0)")
    alpha: float = option(0.0, "weight of the retain loss (0 = upstream style/object runs)")
    retain_loss: str = option(
        "diffusion", "'diffusion' (upstream prior preservation) or 'distill' (the frozen original's prediction)"
    )
    parameter_group: str = option(
        "cross_attention_kv", "trainable weights: 'cross_attention_kv' (upstream), 'cross_attention' or 'unet'"
    )
    trainable: str = option(
        "",
        "a regex over the UNet's parameter names that replaces parameter_group (e.g. 'attn2\\.to_[kv]|^mid_block\\.')",
    )
    text_encoder: bool = option(
        False,
        "train the text encoder instead of UNet weights (AdvUnlearn's choice): forget and retain prompts, "
        "and the adversarial ones, are re-encoded at every step",
    )
    retain_text: float = option(
        0.0,
        "with text_encoder: weight of the mean squared distance between the trained and the original text "
        "encoder's outputs on retain prompts (keeps what the UNet reads for them; 0 = off)",
    )
    retain_text_batch: int = option(32, "retain prompts per step for retain_text")
    target: str = option(
        "model", "eps*(x_t | c_anchor) from the trained 'model' under no_grad (upstream) or the 'frozen' original"
    )
    anchor_seeds: int = option(5, "generated images per anchor prompt")
    retain_seeds: int = option(1, "generated images per retain prompt")
    data_steps: int = option(25, "sampler steps for the generated data")
    data_guidance: float = option(7.5, "CFG weight of the sampler that generates the data")
    data_seed: int = option(10_000, "first seed of the generated data (disjoint from evaluation seeds)")
    adversarial_steps: int = option(
        0, "inner soft-prompt attack steps before each training step (AdvUnlearn-style adversarial training; 0 = off)"
    )
    adversarial_tokens: int = option(3, "soft-prompt vectors the inner attack prepends to each forget prompt")
    adversarial_lr: float = option(0.01, "Adam learning rate of the inner attack")
    adversarial_weight: float = option(1.0, "weight of the ablation loss at the adversarial prompts")
    forget_seeds: int = option(
        2,
        "with adversarial training: the original's images per forget prompt that the inner attack tries to bring back",
    )

    method: ClassVar[str] = "concept_ablation"

    def check(self) -> None:
        check_options(
            self,
            "concept_ablation",
            choices={
                "retain_loss": RETAIN_LOSSES,
                "parameter_group": tuple(UNET_GROUPS),
                "target": ("model", "frozen"),
            },
            at_least_one=(
                "batch_size",
                "retain_batch_size",
                "anchor_seeds",
                "data_steps",
                "adversarial_tokens",
                "forget_seeds",
                "retain_text_batch",
            ),
            non_negative=("retain_seeds", "alpha", "adversarial_steps", "adversarial_weight", "retain_text"),
            positive=("adversarial_lr",),
        )
        unet_weights(self.parameter_group, self.trainable)


class ConceptAblation(Eraser):
    """Concept Ablation: eps(x_t | target) regressed onto eps(x_t | anchor) on anchor images (cross-attention K/V)."""

    name = "concept_ablation"

    def scope(self, pipe) -> str:
        return (
            r"^text_encoder\."
            if self.config.text_encoder
            else unet_weights(self.config.parameter_group, self.config.trainable)
        )

    def setup(self, pipe) -> ParamSelection:
        cfg, req = self.config, self.request
        if (cfg.alpha > 0 or cfg.retain_text > 0) and not req.retain_prompts:
            raise EraseError(
                "the request has no retain prompts but alpha or retain_text > 0; give retain concepts or set them to 0"
            )
        if cfg.retain_text > 0 and not cfg.text_encoder:
            raise EraseError(
                "retain_text keeps the text encoder's outputs and needs text_encoder=true; set "
                "retain_text=0 or train the text encoder"
            )
        self.pipe, self.unet, self.dev = pipe, pipe.unet, model_device(pipe)
        self.prediction = prediction_type(pipe)
        self.rng = torch.Generator("cpu").manual_seed(req.seed)
        self.acp = alphas_cumprod(pipe)
        data = GenerationSets(pipe, steps=cfg.data_steps, guidance=cfg.data_guidance)
        self.z_anchor, self.anchor_idx = data(req.anchor_prompts, cfg.anchor_seeds, cfg.data_seed)
        if cfg.alpha > 0 or cfg.retain_text > 0:
            self.e_retain = encode_prompts(pipe, req.retain_prompts)
        if cfg.alpha > 0:
            self.z_retain, self.retain_idx = data(req.retain_prompts, cfg.retain_seeds, cfg.data_seed + 50_000)
        self.e_forget = encode_prompts(pipe, req.forget_prompts)
        self.e_anchor = encode_prompts(pipe, req.anchor_prompts)
        self.ids_forget = self.ids_retain = None  # token ids, re-encoded by the text encoder when it is what trains
        if cfg.text_encoder:
            self.ids_forget = token_ids(pipe, req.forget_prompts)
            self.ids_retain = token_ids(pipe, req.retain_prompts) if req.retain_prompts else None
        self.adversary = None
        if cfg.adversarial_steps > 0:  # the original's images of the concept, for the inner attack to bring back
            self.z_forget, self.forget_idx = data(req.forget_prompts, cfg.forget_seeds, cfg.data_seed + 100_000)
            self.adversary = AdversarialPrefixes(
                pipe, req.forget_prompts, cfg.adversarial_tokens, cfg.adversarial_steps, cfg.adversarial_lr
            )
        self.info["data"] = {
            "anchor_images": len(self.z_anchor),
            "retain_images": len(self.z_retain) if cfg.alpha > 0 else 0,
        }
        if self.adversary is not None:
            self.info["data"]["forget_images"] = len(self.z_forget)

        root = model_root(pipe)
        selection = ParamSelection.by_name(root, self.scope(pipe))
        params = selection.freeze_others_(root)
        self.frozen = None
        if cfg.target == "frozen" or (cfg.alpha > 0 and cfg.retain_loss == "distill"):
            self.frozen = copy.deepcopy(self.unet).eval().requires_grad_(False)
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=0.0)
        self.info["trainable"] = {
            "group": "text_encoder" if cfg.text_encoder else cfg.trainable or cfg.parameter_group,
            "tensors": len(params),
            "weights": selection.count(root),
        }
        return selection

    def training_state(self) -> dict[str, object]:
        return {**super().training_state(), **({"adversary": self.adversary} if self.adversary is not None else {})}

    def _adversarial(self, prompt_idx: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The inner attack on the prompts of this batch; returns their adversarial conditioning
        and the attack's last loss."""
        per = self.config.forget_seeds
        pick = prompt_idx * per + torch.randint(0, per, (len(prompt_idx),), generator=self.rng)
        loss = self.adversary.attack(
            self.pipe, self.unet, prompt_idx, self.z_forget[pick].to(self.dev), t, self.acp, self.prediction, self.rng
        )
        return self.adversary.condition(self.pipe, prompt_idx, grad=self.config.text_encoder), loss

    def _encoded(self, ids: torch.Tensor, fixed: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Conditioning of prompts ``idx``: re-encoded with gradients when the text encoder
        trains, else the fixed encoding."""
        return self.pipe.text_encoder(ids[idx].to(self.dev))[0] if self.config.text_encoder else fixed[idx]

    def _batch(self, z: torch.Tensor, n: int):
        i = torch.randint(0, len(z), (n,), generator=self.rng)
        t = torch.randint(0, len(self.acp), (n,), generator=self.rng).to(self.dev)
        noise = torch.randn((n, *z.shape[1:]), generator=self.rng).to(self.dev)
        z0 = z[i].to(self.dev)
        return i, z0, noise, t, noisy(z0, noise, t, self.acp)

    def step(self, i: int) -> dict[str, float]:
        cfg = self.config
        ai, _, _, t, zt = self._batch(self.z_anchor, cfg.batch_size)
        c_target, c_anchor = (
            self._encoded(self.ids_forget, self.e_forget, self.anchor_idx[ai]),
            self.e_anchor[self.anchor_idx[ai]],
        )
        with torch.no_grad():
            teacher = self.frozen if cfg.target == "frozen" else self.unet
            target = teacher(zt, t, c_anchor).sample
        losses = {}
        if (
            self.adversary is not None
        ):  # the ablation also at the prompts the inner attack found: one more block of the batch
            c_adv, losses["attack"] = self._adversarial(self.anchor_idx[ai], t)
            zt, t, c_target, target = (
                torch.cat([zt, zt]),
                torch.cat([t, t]),
                torch.cat([c_target, c_adv]),
                torch.cat([target, target]),
            )
            weights = torch.cat(
                [torch.ones(cfg.batch_size), torch.full((cfg.batch_size,), cfg.adversarial_weight)]
            ).to(self.dev)
        else:
            weights = torch.ones(cfg.batch_size, device=self.dev)
        n = len(zt)
        if cfg.alpha > 0:
            ri, z0_r, n_r, t_r, zt_r = self._batch(self.z_retain, cfg.retain_batch_size)
            c_r = self.e_retain[self.retain_idx[ri]]  # the original's encoding: what the frozen teacher sees
            c_student = self._encoded(self.ids_retain, self.e_retain, self.retain_idx[ri])
            pred = self.unet(torch.cat([zt, zt_r]), torch.cat([t, t_r]), torch.cat([c_target, c_student])).sample
            pred, pred_r = pred[:n], pred[n:]
            retain = retain_loss(
                cfg.retain_loss,
                pred_r,
                prediction=self.prediction,
                z0=z0_r,
                noise=n_r,
                t=t_r,
                acp=self.acp,
                frozen=self.frozen,
                zt=zt_r,
                cond=c_r,
            )
            losses["retain"] = retain.item()
        else:
            pred = self.unet(zt, t, c_target).sample
            retain = torch.zeros((), device=self.dev)
        per_image = F.mse_loss(pred, target, reduction="none").flatten(1).mean(1)
        ablate = (
            weights * per_image
        ).sum() / cfg.batch_size  # without adversarial training: the plain mean, as before
        loss = ablate + cfg.alpha * retain
        if cfg.retain_text > 0:  # what the UNet reads for retain prompts stays the original encoder's
            pick = torch.randint(
                0, len(self.ids_retain), (min(cfg.retain_text_batch, len(self.ids_retain)),), generator=self.rng
            )
            text = F.mse_loss(self._encoded(self.ids_retain, self.e_retain, pick), self.e_retain[pick])
            loss = loss + cfg.retain_text * text
            losses["retain_text"] = text.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        losses.update(ablate=ablate.item(), loss=loss.item())
        return losses


register_method(
    "concept_ablation",
    ConceptAblationConfig,
    ConceptAblation,
    "Concept Ablation: the target prompt regressed onto the anchor prompt's prediction on anchor "
    "images (cross-attention K/V)",
)
