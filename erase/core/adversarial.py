"""Adversarial training against soft-prompt attacks (AdvUnlearn's inner loop), for the fine-tuning methods.

Before each training step the method asks ``AdversarialPrefixes.attack`` for the worst prompts it can find:
k free input-embedding vectors per forget prompt, prepended to it (the ``embedding`` attack of
``eval.attacks``, warm-started from the previous step's vectors), optimised for a few Adam steps so that the
model *being trained* denoises the original's own images of the concept. The method then erases what the
attack found (its erase loss at ``condition(...)``) as well as the plain forget prompt. Gradients of the inner
attack are taken with ``torch.autograd.grad`` on the vectors only, so the model's ``.grad`` is never touched.
"""

from __future__ import annotations

import torch
from torch import nn

from .diffusion import denoising_error
from .prompt_slots import encode_slots, slot_prompts


class AdversarialPrefixes(nn.Module):
    """k soft-prompt vectors per forget prompt (a buffer, so checkpoints carry them), initialised
    at the mean token embedding."""

    def __init__(self, pipe, prompts: list[str], k: int, steps: int, lr: float):
        super().__init__()
        table = pipe.text_encoder.get_input_embeddings().weight.detach().float()
        self.register_buffer("rows", table.mean(0).cpu().expand(len(prompts), k, -1).clone())
        self.slots = slot_prompts(pipe.tokenizer, ["{} " + p for p in prompts], k)
        self.steps, self.lr = steps, lr

    def attack(
        self,
        pipe,
        unet,
        prompt_idx: torch.Tensor,
        z0: torch.Tensor,
        t: torch.Tensor,
        acp: torch.Tensor,
        prediction: str,
        rng: torch.Generator,
    ) -> float:
        """``steps`` Adam steps on the vectors of ``prompt_idx`` (one row per image of ``z0``): the
        denoising loss of ``unet`` on ``z0`` noised at ``t`` with fresh noise, conditioned on the
        adversarial prompt. Returns the last loss."""
        idx = prompt_idx.tolist()
        rows = self.rows[idx].clone().to(z0.device).requires_grad_(True)
        opt = torch.optim.Adam([rows], lr=self.lr)
        slots = self.slots.subset(idx)
        loss = torch.zeros(())
        for _ in range(self.steps):
            noise = torch.randn(z0.shape, generator=rng).to(z0.device)
            loss = denoising_error(
                unet, z0, noise, t, encode_slots(pipe.text_encoder, slots, rows), acp, prediction
            ).mean()
            rows.grad = torch.autograd.grad(loss, rows)[0]  # the model's own .grad stays untouched
            opt.step()
        with torch.no_grad():
            for j, i in enumerate(idx):  # warm start for the next time this prompt is drawn
                self.rows[i] = rows[j].detach().cpu()
        return float(loss.detach())

    def condition(self, pipe, prompt_idx: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """Text-encoder states of the adversarial prompts (the vectors as they are now; with ``grad``, differentiable
        in the text encoder's weights, for a method that trains it)."""
        idx = prompt_idx.tolist()
        with torch.set_grad_enabled(grad):
            return encode_slots(pipe.text_encoder, self.slots.subset(idx), self.rows[idx])
