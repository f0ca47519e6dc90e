"""ConceptAccuracy (a torchmetrics Metric) and the UnlearnCanvas UA / IRA / CRA scores.

Definitions (UnlearnCanvas, as its maintainers stated them), generalised to any
number of named axes in ``axis_scores``:

* style target s:  UA = 1 - acc_style[s];  IRA = mean acc_style over the other styles;
  CRA = mean acc_object over all objects (on the same answer set).
* object target o: UA = 1 - acc_object[o]; IRA = mean acc_object over the other objects;
  CRA = mean acc_style over the styles.

Photo-class rule (as the published code does): the photo class (``Seed_Images``
on UnlearnCanvas, ``Photo`` on canvas-mini) is generated and classified like any
other theme, so its images count in every object accuracy, but it is never a
style target and is left out of every *style* average (IRA for style targets,
CRA for object targets).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from .protocols import ProtocolError

PHOTO_RULE = (
    "photo class generated and classified like any theme (its images count in object accuracies); "
    "never a style target; excluded from style averages (style IRA, object CRA)"
)


class ConceptAccuracy(Metric):
    """Per-class accuracy, confusion matrix and mean true-class probability of a classifier.

    ``update(logits, target)`` with logits (N, C) and integer targets (N,); ``compute()`` returns a dict with
    ``accuracy`` (C,), ``confusion`` (C, C) [true, predicted], ``true_prob`` (C,), ``count`` (C,), ``overall``.
    Classes with no samples have accuracy NaN.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, classes: list[str], **kwargs):
        super().__init__(**kwargs)
        self.classes = list(classes)
        c = len(self.classes)
        self.add_state("confusion", default=torch.zeros(c, c, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("true_prob_sum", default=torch.zeros(c, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        c = len(self.classes)
        if logits.ndim != 2 or logits.shape[1] != c:
            raise ValueError(f"expected logits of shape (N, {c}), got {tuple(logits.shape)}")
        target = target.to(self.confusion.device).long()
        logits = logits.to(self.confusion.device)
        pred = logits.argmax(1)
        self.confusion += torch.bincount(target * c + pred, minlength=c * c).view(c, c)
        prob = logits.float().softmax(1).gather(1, target[:, None]).squeeze(1).double()
        self.true_prob_sum += torch.zeros(c, dtype=torch.float64, device=prob.device).index_add_(0, target, prob)

    def compute(self) -> dict:
        count = self.confusion.sum(1)
        correct = self.confusion.diag()
        safe = count.clamp(min=1).double()
        nan = torch.full_like(safe, float("nan"))
        return {
            "accuracy": torch.where(count > 0, correct.double() / safe, nan),
            "true_prob": torch.where(count > 0, self.true_prob_sum / safe, nan),
            "confusion": self.confusion.clone(),
            "count": count,
            "overall": (correct.sum().double() / count.sum().clamp(min=1)).item(),
        }

    def per_class(self) -> dict[str, float]:
        acc = self.compute()["accuracy"]
        return {name: float(a) for name, a in zip(self.classes, acc.tolist())}


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def axis_scores(
    accuracy: dict[str, dict[str, float]],
    target: str,
    kind: str,
    null_classes: dict[str, str | None] | None = None,
) -> dict[str, float]:
    """UA / IRA / CRA (fractions in [0, 1]) for one target, from per-concept accuracies of every axis.

    ``accuracy`` maps axis name -> {concept: accuracy}, ``null_classes`` axis name -> its null class.
    UA = 1 - accuracy of the target on its axis; IRA = mean accuracy over the other concepts of the
    target's axis; CRA = mean accuracy over the concepts of every other axis. Null classes are left
    out of every average (their images still count in the other axes' accuracies).
    """
    null_classes = null_classes or {}
    if kind not in accuracy:
        raise ProtocolError(f"unknown kind {kind!r}; the scored axes are: {', '.join(accuracy)}")

    def scorable(axis: str) -> dict[str, float]:
        return {c: a for c, a in accuracy[axis].items() if c != null_classes.get(axis)}

    own = scorable(kind)
    if target not in own:
        raise ProtocolError(f"{kind} target {target!r} is not a scorable {kind} (known: {list(own)})")
    others = [a for axis in accuracy if axis != kind for a in scorable(axis).values()]
    return {"ua": 1.0 - own[target], "ira": _mean([a for c, a in own.items() if c != target]), "cra": _mean(others)}


def unlearning_scores(
    style_acc: dict[str, float],
    object_acc: dict[str, float],
    target: str,
    kind: str,
    photo_class: str | None,
) -> dict[str, float]:
    """UA / IRA / CRA of a style x object protocol (``axis_scores`` with the photo class as the style null class)."""
    return axis_scores({"style": style_acc, "object": object_acc}, target, kind, {"style": photo_class})


def null_class_rule(protocol) -> str:
    """How the protocol's null classes are treated, in words (for the report)."""
    if protocol.photo_class is not None and protocol.axis_names == ["style", "object"]:
        return PHOTO_RULE
    parts = [
        f"{a.null_class} ({a.name} axis): judged like any {a.name} and counted in the other axes' accuracies; "
        f"never a target; excluded from {a.name} averages"
        for a in protocol.axes
        if a.null_class is not None
    ]
    return "; ".join(parts) or "no null class"


def macro_average(per_target: list[dict[str, float]]) -> dict[str, float]:
    """Average UA / IRA / CRA over several targets (each from its own erased model)."""
    if not per_target:
        raise ProtocolError("no per-target scores to average")
    return {k: _mean([d[k] for d in per_target]) for k in ("ua", "ira", "cra")}


def harmonic_mean(values: list[float]) -> float:
    """MACE's H over the available figures (NaN ones left out); 0 when any is 0."""
    vals = [v for v in values if v == v]
    if not vals:
        return float("nan")
    return 0.0 if min(vals) <= 0 else len(vals) / sum(1.0 / v for v in vals)


def list_scores(
    accuracy: dict[str, dict[str, float]],
    targets: list[tuple[str, str]],
    null_classes: dict[str, str | None] | None = None,
) -> dict:
    """UA / IRA / CRA and H of ONE model that erased a list of concepts together (MACE's multi-concept figures).

    UA = mean over the erased concepts of 1 - their accuracy; IRA = mean accuracy of the concepts left on the
    axes the list erases from; CRA = mean accuracy of the concepts of the axes it does not touch (NaN for a list
    that erases from every axis); H = harmonic mean of UA, IRA and CRA (of those defined). Null classes are left
    out of every average, as in ``axis_scores``.
    """
    null_classes = null_classes or {}
    if not targets:
        raise ProtocolError("an empty list of erased concepts")
    erased_axes = {kind for _, kind in targets}
    erased = set(targets)
    for name, kind in targets:
        if kind not in accuracy or name not in accuracy[kind] or name == null_classes.get(kind):
            raise ProtocolError(f"{kind} {name!r} is not a scorable concept of the protocol")

    def scorable(axis):
        return {c: a for c, a in accuracy[axis].items() if c != null_classes.get(axis)}

    ua = {name: 1.0 - accuracy[kind][name] for name, kind in targets}
    ira = _mean([a for axis in erased_axes for c, a in scorable(axis).items() if (c, axis) not in erased])
    cra = _mean([a for axis in accuracy if axis not in erased_axes for a in scorable(axis).values()])
    mean_ua = _mean(list(ua.values()))
    return {"ua": mean_ua, "ira": ira, "cra": cra, "h": harmonic_mean([mean_ua, ira, cra]), "per_target_ua": ua}
