"""faces-mini's metrics, each a torchmetrics Metric fed one batch of seeds at a time by the latent-seeded
evaluation (``eval.latent_report``).

Every ``update(images)`` takes the same batch of seeds rendered four ways, float (N, 3, H, W) in [0, 1]:
``model`` G(w) and ``model_edit`` G(w_hat) of the evaluated model, ``orig`` and ``orig_edit`` of the original
(the same tensors as the model's when no patch is applied); w_hat asks for the target. ``compute()`` returns
report.json keys. All judging is the evaluation's own networks (attribute classifier, identity embedder,
clip-judge), never a method's guide.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

from eval.fid import frechet_distance
from eval.fidelity import psnr

from .check import CHECK_RENDERS, confident_mask, fd_floor, features, judge_all, reference_features
from .models import perceptual_distance
from .palette import off_local_palette, off_palette
from .world import HEAD_CLASSES, concept_rate_label

SETS = ("model", "model_edit", "orig", "orig_edit")
# report.json's names of the four sets, as faces-mini reports have always called them
RATE_NAMES = (
    ("plain", "model"),
    ("edited", "model_edit"),
    ("original_plain", "orig"),
    ("original_edited", "orig_edit"),
)


def gamma(u: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    """W1(U, A) / W1(B, A) clipped to [0, 1]: A = scores of the original's edits, B = of its plain samples, U = of
    the model's edits (0: the model's edits score like the original's, 1: like faces never asked for the target)."""
    from scipy.stats import wasserstein_distance

    base = wasserstein_distance(b, a)
    value = wasserstein_distance(u, a) / base if base > 0 else float("nan")
    return {
        "value": float(min(1.0, max(0.0, value))),
        "raw": float(value),
        "w1_model_edits_to_original_edits": float(wasserstein_distance(u, a)),
        "w1_original_plain_to_original_edits": float(base),
        "mean_shift_sign": int(np.sign(u.mean() - a.mean())),
    }


def per_set(fn, images: dict[str, torch.Tensor], sets=SETS) -> dict:
    """``fn`` of each set's images, computed once per distinct tensor: an unpatched model's renders are the
    original's (the same tensors), and are judged once, not twice."""
    done: dict[int, object] = {}
    for s in sets:
        if id(images[s]) not in done:
            done[id(images[s])] = fn(images[s])
    return {s: done[id(images[s])] for s in sets}


def has_target(judge, x: torch.Tensor, head: str, cls: int) -> torch.Tensor:
    """Where the attribute classifier finds the target (its class of its head) in images ``x``."""
    return judge_all(judge, x)[head][:, cls] >= 0.5


def _cat(parts) -> torch.Tensor:
    return torch.cat(parts) if isinstance(parts, list) else parts


class AttributeRates(Metric):
    """Every head's class rates (argmax of the attribute classifier) on each set, the target's rate, gamma on
    the classifier's probability of the target, and ``recognised``: the share of each set's images the classifier
    reads confidently (max softmax > 0.9, as the generator's check) on every head but the target's. An erasure that
    smears the faces it takes the concept from fools the target's head and shows here (README, ``edit_mix``)."""

    full_state_update = False

    def __init__(self, judge, target: str, **kw):
        super().__init__(**kw)
        self.judge, self.target = judge, target
        self.head, self.cls = concept_rate_label(target)
        for s in SETS:
            for head, classes in HEAD_CLASSES.items():
                self.add_state(f"{s}_{head}", torch.zeros(len(classes), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{s}_score", [], dist_reduce_fx="cat")
            self.add_state(f"{s}_recognised", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, images: dict[str, torch.Tensor]) -> None:
        for s, probs in per_set(lambda x: judge_all(self.judge, x), images).items():
            for head, p in probs.items():
                getattr(self, f"{s}_{head}").add_(torch.bincount(p.argmax(1), minlength=p.shape[1]).double())
            getattr(self, f"{s}_score").append(probs[self.head][:, self.cls])
            others = confident_mask({h: p for h, p in probs.items() if h != self.head})
            getattr(self, f"{s}_recognised").add_(others.sum().double())

    def _rates(self, s: str) -> dict[str, dict[str, float]]:
        out = {}
        for head, classes in HEAD_CLASSES.items():
            counts = getattr(self, f"{s}_{head}")
            out[head] = {label: float(counts[k] / counts.sum()) for k, label in enumerate(classes)}
        return out

    def compute(self) -> dict:
        rates = {s: self._rates(s) for s in SETS}
        score = {s: _cat(getattr(self, f"{s}_score")).numpy() for s in SETS}
        label = HEAD_CLASSES[self.head][self.cls]
        return {
            "attribute_rates": rates["model"],
            "edited_attribute_rates": rates["model_edit"],
            "original": {"attribute_rates": rates["orig"], "edited_attribute_rates": rates["orig_edit"]},
            "target_rate": {name: rates[s][self.head][label] for name, s in RATE_NAMES},
            "gamma": {"classifier": gamma(score["model_edit"], score["orig_edit"], score["orig"])},
            "recognised": {  # (every image adds one count to each head's classes)
                name: float(getattr(self, f"{s}_recognised") / getattr(self, f"{s}_{self.head}").sum())
                for name, s in RATE_NAMES
            },
        }


class ClipSimilarity(Metric):
    """The held-out CLIP's cosine to the target's phrase on each set, and gamma on it."""

    full_state_update = False

    def __init__(self, clip_image, clip_text, phrase: str, **kw):
        super().__init__(**kw)
        self.clip_image, self.text = clip_image, clip_text([phrase]).detach()
        for s in SETS:
            self.add_state(f"{s}_sim", [], dist_reduce_fx="cat")

    @torch.no_grad()
    def update(self, images: dict[str, torch.Tensor]) -> None:
        for s, sim in per_set(lambda x: (self.clip_image(x) @ self.text.T).squeeze(1), images).items():
            getattr(self, f"{s}_sim").append(sim)

    def compute(self) -> dict:
        sim = {s: _cat(getattr(self, f"{s}_sim")).numpy() for s in ("orig", "orig_edit", "model", "model_edit")}
        return {
            "clip_similarity": {
                "judge": "faces-mini clip-judge (held out from the method)",
                **{s: float(v.mean()) for s, v in sim.items()},
            },
            "gamma": {"clip": gamma(sim["model_edit"], sim["orig_edit"], sim["orig"])},
        }


class FrechetToRenders(Metric):
    """Frechet distance in the attribute classifier's feature space to renders WITHOUT the target (as
    canvas-mini's FID leaves the target out: removing a concept that a third of the faces have must not count
    against the erasure), for the model and the original, with the renders-vs-renders floor; and the same on the
    seeds whose original HAS the target (``target_seeds``): the faces the erasure changes should now look like
    renders without it, which a whole-set FD cannot show for a rare target (an identity on 7% of the seeds); beside
    it the floor of as many renders, and the original's own faces without the target, as many (the first seeds that
    lack it): how close this generator comes when nothing had to be removed."""

    full_state_update = False

    def __init__(self, judge, target: str, n_seeds: int, **kw):
        super().__init__(**kw)
        self.judge, self.target, self.n_seeds = judge, target, n_seeds
        self.head, self.cls = concept_rate_label(target)
        for name in ("model_features", "orig_features", "has"):  # "has": the original has the target
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(self, images: dict[str, torch.Tensor]) -> None:
        for s, f in per_set(lambda x: torch.from_numpy(features(self.judge, x)), images, ("model", "orig")).items():
            getattr(self, f"{s}_features").append(f)
        self.has.append(has_target(self.judge, images["orig"], self.head, self.cls))

    def compute(self) -> dict:
        real = reference_features(self.judge, without=self.target)
        model, orig, has = (_cat(getattr(self, n)) for n in ("model_features", "orig_features", "has"))
        value, original = (frechet_distance(f, real) for f in (model, orig))
        n_has = int(has.sum())
        target_seeds = {"n": n_has}
        if n_has >= 2:  # a covariance needs two samples
            target_seeds.update(
                value=frechet_distance(model[has], real),
                original=frechet_distance(orig[has], real),
                floor_renders=fd_floor(self.judge, real, n_has, self.target),
            )
            lacks = orig[~has][:n_has]
            if len(lacks) >= 2:  # the generator's own faces without the target, as many: what it draws at best
                target_seeds["original_without_target"] = frechet_distance(lacks, real)
        return {
            "fd": {
                "value": value,
                "original": original,
                "floor_renders": fd_floor(self.judge, real, self.n_seeds, self.target),
                "space": "faces-mini attribute classifier features",
                "reference_renders": CHECK_RENDERS,
                "reference": f"renders without {self.target}",
                "target_seeds": target_seeds,
            }
        }


class PaletteDrift(Metric):
    """The share of pixels far from every colour the world renders (``palette.off_palette``), and far from every
    colour it renders in their tile (``palette.off_local_palette``), on each set."""

    full_state_update = False
    MEASURES = {"palette_drift": off_palette, "local_palette_drift": off_local_palette}

    def __init__(self, **kw):
        super().__init__(**kw)
        for m in self.MEASURES:
            for s in SETS:
                self.add_state(f"{m}_{s}_off", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        for s in SETS:
            self.add_state(f"{s}_pixels", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, images: dict[str, torch.Tensor]) -> None:
        for m, off_fn in self.MEASURES.items():
            for s, off in per_set(off_fn, images).items():
                getattr(self, f"{m}_{s}_off").add_(off.sum().double())
        for s in SETS:
            getattr(self, f"{s}_pixels").add_(images[s][:, 0].numel())

    def compute(self) -> dict:
        def share(m, s):
            return float(getattr(self, f"{m}_{s}_off") / getattr(self, f"{s}_pixels"))

        return {m: {name: share(m, s) for name, s in RATE_NAMES} for m in self.MEASURES}


class SameSeedFidelity(Metric):
    """A patched model against the original at the same seeds: identity-embedding cosine, PSNR and the
    classifier-feature perceptual distance, over every seed and over the seeds whose original lacks the target."""

    full_state_update = False

    def __init__(self, judge, embedder, target: str, **kw):
        super().__init__(**kw)
        self.judge, self.embedder = judge, embedder
        self.head, self.cls = concept_rate_label(target)
        for name in ("sim", "psnr", "perceptual", "lacks"):
            self.add_state(name, [], dist_reduce_fx="cat")

    @torch.no_grad()
    def update(self, images: dict[str, torch.Tensor]) -> None:
        model, orig = images["model"], images["orig"]
        self.sim.append((self.embedder(model) * self.embedder(orig)).sum(-1))
        self.psnr.append(psnr(orig, model))
        self.perceptual.append(perceptual_distance(self.judge, model, orig))
        self.lacks.append(~has_target(self.judge, orig, self.head, self.cls))

    def compute(self) -> dict:
        sim, psnr_each, perc, lacks = (_cat(getattr(self, n)) for n in ("sim", "psnr", "perceptual", "lacks"))
        some = bool(lacks.any())
        return {
            "identity_similarity": {
                "mean": float(sim.mean()),
                "min": float(sim.min()),
                "embedder": "faces-mini identity embedder",
                "without_target": float(sim[lacks].mean()) if some else None,
            },
            "retain_fidelity": {
                "psnr": float(psnr_each.mean()),
                "perceptual": float(perc.mean()),
                "psnr_without_target": float(psnr_each[lacks].mean()) if some else None,
                "perceptual_without_target": float(perc[lacks].mean()) if some else None,
                "n": len(psnr_each),
                "n_without_target": int(lacks.sum()),
            },
        }


def faces_metrics(protocol, target: str, kind: str, judges: dict, *, patched: bool) -> list[Metric]:
    """The metrics of one faces-mini target (``World.metrics``); the same-seed ones only for a patched model."""
    metrics = [
        AttributeRates(judges["attributes"], target),
        ClipSimilarity(judges["clip_image"], judges["clip_text"], protocol.phrases[target]),
        FrechetToRenders(judges["attributes"], target, len(protocol.seeds)),
        PaletteDrift(),
    ]
    if patched:
        metrics.append(SameSeedFidelity(judges["attributes"], judges["identity"], target))
    return metrics
