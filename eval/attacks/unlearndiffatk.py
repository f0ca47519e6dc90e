"""UnlearnDiffAtk (Zhang et al., ECCV 2024): a discrete adversarial prefix found with the erased model's own
denoising loss.

Each of the k prefix tokens is a distribution over the vocabulary (special tokens left out, so the result is
a prompt anyone can type), initialised uniform and projected back onto the probability simplex after every
Adam step. The forward pass embeds one token drawn from each distribution (a sampled one-hot times the
token-embedding matrix); the backward pass is straight through, clipped to [-1, 1]. After each timestep's
block the argmax tokens are decoded and judged: that is the adversarial prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erase.core.prompt_slots import project_simplex, sampled_one_hot

from .base import PrefixAttack, PrefixConfig
from .registry import register_attack


@dataclass
class UnlearnDiffAtkConfig(PrefixConfig):
    pass


def allowed_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """Every token id but the tokenizer's special ones (BOS, EOS, pad, unk)."""
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    return torch.tensor([i for i in range(vocab_size) if i not in special])


class UnlearnDiffAtk(PrefixAttack):
    name = "unlearndiffatk"

    def make_variables(self, pipe, n: int) -> torch.Tensor:
        self.vocab = allowed_tokens(pipe.tokenizer, self.embedding.shape[0])
        self.table = self.embedding[self.vocab].float()
        size = len(self.vocab)
        return torch.full((n, self.config.k, size), 1.0 / size)

    def after_step(self) -> None:
        self.var.copy_(project_simplex(self.var))

    def rows(self, index, rng, *, train):
        probs = self.var[index]
        one_hot = (
            sampled_one_hot(probs, rng)
            if train
            else torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).float()
        )
        return one_hot @ self.table.to(one_hot.device)

    def token_ids(self, active: list[int]) -> torch.Tensor:
        """The argmax token of every slot: (len(active), k) vocabulary ids."""
        return self.vocab[self.var.detach()[active].argmax(-1)]

    def random_candidates(self, active, rng):
        picks = torch.randint(len(self.vocab), (len(self.var), self.config.k), generator=rng)
        with torch.no_grad():
            self.var.zero_()
            self.var.scatter_(-1, picks[..., None], 1.0)

    def candidate_rows(self, active):
        return self.embedding[self.token_ids(active)].float()

    def candidate_texts(self, pipe, task, active):
        prefixes = [pipe.tokenizer.decode(ids.tolist()).strip() for ids in self.token_ids(active)]
        return [f"{p} {task.prompts[i]}" for p, i in zip(prefixes, active)]


register_attack(
    "unlearndiffatk",
    UnlearnDiffAtkConfig,
    UnlearnDiffAtk,
    "UnlearnDiffAtk: k discrete prefix tokens (relaxed one-hot, straight-through sampling) against the denoising loss",
)
