"""Which metric scores each concept axis of a protocol: a small registry, name -> metric factory.

An axis metric is a torchmetrics ``Metric`` built from the axis, updated batch
by batch with the axis judge's output and the integer label of each image, and
whose ``compute()`` returns at least ``accuracy``: a (C,) tensor, the rate at
which each concept of the axis is recognised on the images generated for it.
UA / IRA / CRA are computed from those rates (``eval.concept_accuracy``).

``concept_accuracy`` (a classifier's per-class accuracy, confusion matrix and
true-class probability) scores the style and object axes of canvas-mini and
UnlearnCanvas. Other worlds register their own, e.g. an attribute-rate metric
for a faces protocol::

    register_axis_metric("attribute_rate", lambda axis: AttributeRate(axis.concepts))
"""

from __future__ import annotations

from typing import Callable

from .concept_accuracy import ConceptAccuracy
from .protocols import Axis, Protocol, ProtocolError

AXIS_METRICS: dict[str, Callable] = {}


def register_axis_metric(name: str, factory: Callable) -> None:
    """Register ``factory(axis) -> Metric`` under ``name``; a name can be registered once."""
    if name in AXIS_METRICS:
        raise ProtocolError(f"axis metric {name!r} is already registered")
    AXIS_METRICS[name] = factory


def check_axis_metrics(protocol: Protocol) -> None:
    """Raise (before anything is generated) when an axis names a metric nobody registered."""
    for axis in protocol.axes:
        if axis.metric not in AXIS_METRICS:
            raise ProtocolError(
                f"axis {axis.name!r} of protocol {protocol.name!r} asks for metric {axis.metric!r}; "
                f"registered metrics: {', '.join(sorted(AXIS_METRICS))}"
            )


def make_axis_metric(axis: Axis):
    """A fresh metric for ``axis``, from the factory its ``metric`` names."""
    if axis.metric not in AXIS_METRICS:
        raise ProtocolError(
            f"axis {axis.name!r} asks for metric {axis.metric!r}; registered metrics: "
            f"{', '.join(sorted(AXIS_METRICS))}"
        )
    return AXIS_METRICS[axis.metric](axis)


def _concept_accuracy(axis: Axis):
    return ConceptAccuracy(axis.concepts)


register_axis_metric("concept_accuracy", _concept_accuracy)
