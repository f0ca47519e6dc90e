"""The soft-prompt attack: UnlearnDiffAtk's loss and schedule, but the k prefix rows are free vectors in the
text encoder's input-embedding space, never projected onto real tokens. No typed prompt can do more, so its
success rate bounds every token-level attack from above (AdvUnlearn's inner attack, unprojected).

Initialised at the mean token embedding (where UnlearnDiffAtk's uniform distributions start); the random
control draws Gaussian vectors with the embedding table's per-dimension mean and spread.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erase.core.registry import option

from .base import PrefixAttack, PrefixConfig
from .registry import register_attack


@dataclass
class EmbeddingConfig(PrefixConfig):
    weight_decay: float = option(0.0, "Adam L2 weight decay (0: nothing pulls the vectors back)")


class EmbeddingAttack(PrefixAttack):
    name = "embedding"

    def make_variables(self, pipe, n: int) -> torch.Tensor:
        table = self.embedding.float()
        self.mean, self.std = table.mean(0), table.std(0)
        return self.mean.cpu().expand(n, self.config.k, -1).clone()

    def rows(self, index, rng, *, train):
        return self.var[index]

    def random_candidates(self, active, rng):
        draw = torch.randn(self.var.shape, generator=rng) * self.std.cpu() + self.mean.cpu()
        with torch.no_grad():
            self.var.copy_(draw)

    def candidate_rows(self, active):
        return self.var.detach()[active].float()


register_attack(
    "embedding",
    EmbeddingConfig,
    EmbeddingAttack,
    "soft prompt: k free input-embedding vectors prepended, same loss as UnlearnDiffAtk (upper bound)",
)
