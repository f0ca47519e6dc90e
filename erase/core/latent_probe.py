"""A concept-free counterpart of a StyleGAN face found in W: a linear probe of the concept, and a move along it.

The guides' classifier labels the frozen generator's own faces; a logistic probe ``s(w) = a . w + b`` is fitted to
those labels on W (the mapping's output, before W+ broadcasts it). A face's counterpart moves each W+ row along
``v = Cov(w) a`` (the direction that changes the probe's score most for the least change of w as the generator's
own codes vary), scaled so that a step of 1 lowers the score by 1, until the score is ``-margin``:

    w' = w - relu(s(w) + margin) v

Faces the probe already reads as concept-free stay exactly as they are. The probe is only as good as the concept is
linear in W: its balanced accuracy on held-out faces is measured, and a caller uses the counterpart only above a
floor. On faces-mini (4,000 faces, guide-classifier labels) Alice is linear in W (held-out balanced accuracy 0.87);
Bruno (0.56), eyeglasses (0.57) and smile (0.55) are not: their counterpart has to come from somewhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cache import cached_tensors
from .data import cache_entry, model_identity
from .guides import Guides
from .latent_mapper import sample_wplus, to_images


@dataclass
class LatentProbe:
    weight: torch.Tensor  # a: (w_dim,)
    bias: float  # b
    move: torch.Tensor  # v: (w_dim,), a . v = 1
    margin: float
    accuracy: float  # balanced accuracy on held-out faces
    rate: float  # share of the sampled faces the guides' classifier finds the concept in

    def score(self, w: torch.Tensor) -> torch.Tensor:
        return w @ self.weight + self.bias

    def counterpart(self, w: torch.Tensor) -> torch.Tensor:
        """W or W+ codes (..., w_dim) moved along v until the probe's score is -margin (no move below it)."""
        return w - (self.score(w) + self.margin).clamp_min(0).unsqueeze(-1) * self.move

    def describe(self) -> dict:
        return {"balanced_accuracy": round(self.accuracy, 4), "rate": round(self.rate, 4), "margin": self.margin}


def _logistic(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-4, iterations: int = 300) -> torch.Tensor:
    """Weights (with the bias last) of an L2-regularised logistic regression, fitted with L-BFGS."""
    x = torch.cat([x, torch.ones(len(x), 1)], 1)
    theta = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ theta, y) + ridge * theta[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach()


def balanced_accuracy(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean of the true-positive and true-negative rates (a probe that always says 'no' scores 0.5)."""
    rates = [float((predicted[truth == c] == c).float().mean()) for c in (True, False) if (truth == c).any()]
    return sum(rates) / len(rates)


def cached_probe(
    generator, guides: Guides, concept: str, *, n: int, seed: int, margin: float, truncation: float = 1.0
) -> LatentProbe:
    """``fit_probe``, fitted once per generator, guides, concept and sample and then read from the cache (a resumed
    run does not fit it again); the margin is the caller's, not part of the fit."""
    ident = {
        "generator": model_identity(generator),
        "guides": guides.describe(),
        "concept": concept,
        "n": n,
        "seed": seed,
        "truncation": truncation,
    }

    def fit() -> dict[str, torch.Tensor]:
        p = fit_probe(generator, guides, concept, n=n, seed=seed, margin=margin, truncation=truncation)
        scalars = torch.tensor([p.bias, p.accuracy, p.rate], dtype=torch.float64)
        return {"weight": p.weight.cpu(), "move": p.move.cpu(), "scalars": scalars}

    t = cached_tensors(cache_entry("probes", ident), fit)
    dev = next(generator.parameters()).device
    bias, accuracy, rate = (float(x) for x in t["scalars"])
    return LatentProbe(t["weight"].to(dev), bias, t["move"].to(dev), margin, accuracy, rate)


@torch.no_grad()
def fit_probe(
    generator,
    guides: Guides,
    concept: str,
    *,
    n: int,
    seed: int,
    margin: float,
    truncation: float = 1.0,
    held_out: float = 0.2,
    batch: int = 256,
) -> LatentProbe:
    """Fit the probe on ``n`` of the generator's faces labelled by the guides' classifier (``held_out`` of them only
    measure its accuracy)."""
    wplus = sample_wplus(generator, n, torch.Generator().manual_seed(seed), truncation)
    dev, w = wplus.device, wplus[:, 0].float().cpu()  # every W+ row of a sampled code is its w
    y = torch.cat(
        [
            (guides.concept_probability(to_images(generator.synthesis(wplus[i : i + batch])), concept) >= 0.5).cpu()
            for i in range(0, n, batch)
        ]
    )
    cut = int(n * (1 - held_out))
    with torch.enable_grad():
        theta = _logistic(w[:cut], y[:cut].float())
    a, b = theta[:-1], float(theta[-1])
    accuracy = balanced_accuracy(w[cut:] @ a + b > 0, y[cut:])
    centred = w - w.mean(0)
    v = (centred.T @ centred / n) @ a
    v = v / (a @ v)
    return LatentProbe(a.to(dev), b, v.to(dev), margin, accuracy, float(y.float().mean()))
