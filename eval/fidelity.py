"""Same-seed retain fidelity: how much an erasure changed the images of the prompts it should have left alone.

For every retained prompt and seed, the original model's image and the erased model's image (same seed,
same sampler) are compared with

* PSNR (dB) per image, averaged; identical images count as ``PSNR_CAP`` (100 dB, above the 89 dB that a
  single one-level difference in a 64 px image gives), so a mean is always a number and ``identical``
  says how many were exact;
* a perceptual distance per image, averaged: LPIPS (the ``lpips`` package, AlexNet or VGG weights from a
  local file) for real models, and for canvas-mini an LPIPS-style distance over the shipped classifiers'
  intermediate feature maps (``ClassifierFeatureDistance``; unit weights, named as such in the report).

``RetainFidelity`` (a torchmetrics Metric, one per target) sums both per concept, leaving out the target's
own images, and reports them for in-domain (the target's axis) and cross-domain (every other axis)
retained concepts separately. The original's answer set is generated once per (model, protocol) and kept
in the cache (``eval.original_answers``), so evaluating ten patches of one model samples the original once.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn
from torchmetrics import Metric

from erase.core.errors import EraseError

PSNR_CAP = 100.0


class FidelityError(EraseError):
    """Retain fidelity cannot be computed as asked (LPIPS weights missing or of another layout)."""


# -- per-image measures ------------------------------------------------------------------------------
def psnr(original: torch.Tensor, erased: torch.Tensor) -> torch.Tensor:
    """(N,) PSNR in dB of float images in [0, 1]; identical images give PSNR_CAP."""
    mse = (original.float() - erased.float()).pow(2).flatten(1).mean(1).double()
    value = 10 * torch.log10(1.0 / mse.clamp(min=1e-30))
    return torch.where(mse == 0, torch.full_like(value, PSNR_CAP), value.clamp(max=PSNR_CAP)).float()


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Each spatial position's channel vector scaled to unit length (as LPIPS does before comparing)."""
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)


def feature_map_distance(maps_a: list[torch.Tensor], maps_b: list[torch.Tensor]) -> torch.Tensor:
    """(N,) sum over layers of the spatial mean of the squared difference of channel-unit-normalised maps."""
    return sum(((_unit(a) - _unit(b)) ** 2).sum(1).mean((1, 2)) for a, b in zip(maps_a, maps_b))


def stage_outputs(trunk: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """The feature map entering every pooling layer of ``trunk``, and its final output."""
    maps = []
    for layer in trunk:
        if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            maps.append(x)
        x = layer(x)
    return maps + [x]


class ClassifierFeatureDistance(nn.Module):
    """LPIPS-style distance in the canvas-mini judges' feature space: every conv stage of the style and the
    object classifier, channel-unit-normalised, squared difference, spatial mean, summed over layers (0 = same)."""

    def __init__(self, style_clf: nn.Module, object_clf: nn.Module):
        super().__init__()
        self.judges = nn.ModuleList([style_clf.eval(), object_clf.eval()])
        n_layers = sum(len(stage_outputs(j.trunk, torch.zeros(1, 3, 8, 8))) for j in self.judges)
        self.name = (
            f"LPIPS-style distance over the canvas-mini classifiers' feature maps ({n_layers} layers, unit weights)"
        )

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a, b])
        total = torch.zeros(len(a))
        for judge in self.judges:
            maps = stage_outputs(judge.trunk, (x - 0.5) / 0.5)
            total += feature_map_distance([m[: len(a)] for m in maps], [m[len(a) :] for m in maps]).cpu()
        return total


class LPIPSDistance(nn.Module):
    """LPIPS (the ``lpips`` package) with every weight from local files; inputs in [0, 1]."""

    def __init__(self, model: nn.Module, net: str):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.name = f"LPIPS v0.1 ({net})"

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.model(a, b, normalize=True).flatten().cpu()


def load_lpips(weights: str | Path, net: str = "alex", device: str = "cpu") -> LPIPSDistance:
    """LPIPS without a download: ``weights`` is either a whole ``lpips.LPIPS`` state dict (backbone ``net.*``
    and linear heads ``lin*``), or torchvision's ``alexnet`` / ``vgg16`` checkpoint (``features.*``), whose
    linear heads then come from the ``lpips`` package itself. Loaded with ``weights_only=True``."""
    try:
        import lpips
    except ImportError:
        raise FidelityError(
            "LPIPS needs the lpips package: pip install lpips (or evaluate with --no-fidelity)"
        ) from None
    if net not in ("alex", "vgg"):
        raise FidelityError(f"--lpips-net must be alex or vgg, got {net!r}")
    path = Path(weights)
    if not path.is_file():
        raise FidelityError(
            f"LPIPS weights not found at {path}; pass the local file of torchvision's {net} weights "
            "(or a saved lpips.LPIPS state dict) with --lpips-weights"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a pickle with code in it, or not a checkpoint at all
        raise FidelityError(
            f"cannot read LPIPS weights {path} as a plain tensor checkpoint ({type(e).__name__}); "
            "pass a state dict saved with torch.save"
        ) from None

    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # torchvision's 'pretrained' deprecation: we pass random init and load ourselves
        model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
    if any(k.startswith("features.") for k in state):  # torchvision's layout: the backbone only
        slices = {int(k): f"net.{name}.{k}" for name, sl in model.net.named_children() for k, _ in sl.named_children()}
        state = {
            f"{slices[int(k.split('.')[1])]}.{k.split('.', 2)[2]}": v
            for k, v in state.items()
            if k.startswith("features.") and int(k.split(".")[1]) in slices
        }
        heads = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
        state.update(torch.load(heads, map_location="cpu", weights_only=True))
    for key, value in model.state_dict().items():
        if key.startswith("scaling_layer.") and key not in state:  # constants of the lpips code, not weights
            state[key] = value
    for key in model.state_dict():  # lpips registers each head twice (lin0 and lins.0): fill one name from the other
        if key.startswith("lins.") and key not in state:
            alias = f"lin{key.split('.')[1]}.{key.split('.', 2)[2]}"
            if alias in state:
                state[key] = state[alias]
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise FidelityError(
            f"LPIPS weights {path} do not fit lpips {net}: {len(missing)} missing (e.g. {sorted(missing)[:1]}), "
            f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:1]}); check --lpips-net"
        )
    model.load_state_dict(state)
    return LPIPSDistance(model.to(device), net)


# -- the metric ------------------------------------------------------------------------------------------
class RetainFidelity(Metric):
    """Per-concept sums of same-seed PSNR and perceptual distance over the retained images of one target.

    ``update(psnr, perceptual, labels)`` takes per-image values and each image's concept index per axis;
    images whose ``kind`` label is the target are left out. ``compute()`` returns the means overall, for
    in-domain (``kind``) and cross-domain (other axes) retained concepts, and per concept.
    """

    full_state_update = False

    def __init__(self, axes: dict[str, list[str]], target: str, kind: str, also: list[tuple[str, str]] = (), **kw):
        super().__init__(**kw)
        for name, k in [(target, kind), *also]:
            if k not in axes or name not in axes[k]:
                raise EraseError(f"{k} target {name!r} is not a concept of the axes {list(axes)}")
        self.axes, self.target, self.kind = {a: list(c) for a, c in axes.items()}, target, kind
        self.target_index = self.axes[kind].index(target)
        # the images left out: the target's, and those of every concept erased together with it (``also``)
        self.excluded = [(k, self.axes[k].index(name)) for name, k in [(target, kind), *also]]
        for i, concepts in enumerate(self.axes.values()):
            for name in ("psnr", "perceptual", "count"):
                self.add_state(f"{name}_{i}", torch.zeros(len(concepts), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("identical", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, psnr_db: torch.Tensor, perceptual: torch.Tensor, labels: dict[str, torch.Tensor]) -> None:
        keep = torch.ones_like(labels[self.kind], dtype=torch.bool)
        for k, index in self.excluded:
            keep &= labels[k] != index
        p, d = psnr_db.double()[keep], perceptual.double()[keep]
        for i, axis in enumerate(self.axes):
            lab = labels[axis][keep]
            getattr(self, f"psnr_{i}").index_add_(0, lab, p)
            getattr(self, f"perceptual_{i}").index_add_(0, lab, d)
            getattr(self, f"count_{i}").index_add_(0, lab, torch.ones_like(p))
        self.identical += (p >= PSNR_CAP).sum()

    def compute(self) -> dict:
        per_axis, pooled = {}, {"psnr": 0.0, "perceptual": 0.0, "n": 0}
        for i, (axis, concepts) in enumerate(self.axes.items()):
            s_p, s_d, n = (getattr(self, f"{name}_{i}") for name in ("psnr", "perceptual", "count"))
            per_axis[axis] = {
                c: {"psnr": float(s_p[k] / n[k]), "perceptual": float(s_d[k] / n[k]), "n": int(n[k])}
                for k, c in enumerate(concepts)
                if n[k] > 0
            }
            if axis == self.kind:
                pooled = {"psnr": float(s_p.sum()), "perceptual": float(s_d.sum()), "n": int(n.sum())}

        def macro(concepts: dict) -> dict:
            if not concepts:
                return {"psnr": None, "perceptual": None, "concepts": 0}
            return {
                "psnr": sum(v["psnr"] for v in concepts.values()) / len(concepts),
                "perceptual": sum(v["perceptual"] for v in concepts.values()) / len(concepts),
                "concepts": len(concepts),
            }

        cross = {f"{a}:{c}": v for a, cs in per_axis.items() if a != self.kind for c, v in cs.items()}
        n = max(pooled["n"], 1)
        return {
            "psnr": pooled["psnr"] / n if pooled["n"] else None,
            "perceptual": pooled["perceptual"] / n if pooled["n"] else None,
            "n": pooled["n"],
            "identical": int(self.identical),
            "in_domain": macro(per_axis[self.kind]),
            "cross_domain": macro(cross),
            "per_concept": per_axis,
        }
