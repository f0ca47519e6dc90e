"""Textual inversion against an erased model (Pham et al., "Circumventing Concept Erasure"): one new word.

A single input-embedding vector v is learned from N images that the *original* model draws of the concept
(its prompts at seeds outside the protocol's), with the *attacked* model's denoising loss on the same prompts
with v in the concept word's place. Success is then judged on the protocol's prompts with v in the concept's
place, at their own seeds: one judged generation per prompt per block (one block by default), since the
judge plays no part in learning v.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erase.core.diffusion import alphas_cumprod, denoising_error, prediction_type
from erase.core.prompt_slots import encode_slots, slot_prompts
from erase.core.registry import option

from .base import Attack, BudgetConfig, original_latents
from .registry import register_attack

TRAIN_SEED_OFFSET = 10_000  # training images use seeds 10000, 10001, ...: never the protocol's evaluation seeds


@dataclass
class TextualInversionConfig(BudgetConfig):
    blocks: int = option(1, "judged evaluations: after every iters steps (1 = once, at the end)")
    iters: int = option(400, "Adam steps per block")
    lr: float = option(5e-3, "Adam learning rate")
    images: int = option(
        20, "images of the concept the original model draws to learn from (its prompts in turn, seeds 10000 + i)"
    )
    batch_size: int = option(10, "training images per step")

    def validate(self, name: str) -> None:
        super().validate(name, at_least_one=("images", "batch_size"))


class TextualInversion(Attack):
    name = "textual_inversion"
    needs_target_latents = False
    n_slots = 1

    def slot_texts(self, task):
        return list(task.slot_prompts)

    def setup(self, pipe, task, prompts, rng):
        cfg = self.config
        cfg.validate(self.name)
        n = len(task.slot_prompts)
        order = [i % n for i in range(cfg.images)]
        concept = [task.concept_prompts[i] for i in order]
        seeds = [TRAIN_SEED_OFFSET + i for i in range(cfg.images)]
        self.train_latents = original_latents(pipe, task.protocol, concept, seeds)
        self.train_prompts = slot_prompts(pipe.tokenizer, [task.slot_prompts[i] for i in order], 1)
        table = pipe.text_encoder.get_input_embeddings().weight.detach().float()
        self.var = table.mean(0).cpu().clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.var], lr=cfg.lr)
        self.info = {"train_images": cfg.images, "train_seeds": [seeds[0], seeds[-1]]}

    def train_block(self, pipe, task, block, active, rng):
        cfg = self.config
        acp, kind, device = alphas_cumprod(pipe), prediction_type(pipe), pipe.unet.device
        total = int(pipe.scheduler.config.num_train_timesteps)
        loss_value = float("nan")
        for _ in range(cfg.iters):
            pick = torch.randperm(cfg.images, generator=rng)[: cfg.batch_size].tolist()
            x0 = self.train_latents[pick].to(device)
            noise = torch.randn(x0.shape, generator=rng).to(device)
            t = torch.randint(0, total, (len(pick),), generator=rng).to(device)
            cond = encode_slots(pipe.text_encoder, self.train_prompts.subset(pick), self.var.expand(len(pick), 1, -1))
            loss = denoising_error(pipe.unet, x0, noise, t, cond, acp, kind).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_value = float(loss.detach())
        return {"steps": cfg.iters, "loss": loss_value}

    def candidate_rows(self, active):
        return self.var.detach().float().expand(len(active), 1, -1)

    def candidate_texts(self, pipe, task, active):
        return [task.slot_prompts[i].replace("{}", "<learned word>") for i in active]

    def state_dict(self):
        return {"var": self.var.detach().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.var.copy_(state["var"])
        self.optimizer.load_state_dict(state["optimizer"])


register_attack(
    "textual_inversion",
    TextualInversionConfig,
    TextualInversion,
    "textual inversion: one new word learned from the original's images of the concept, put in the concept's place",
)
