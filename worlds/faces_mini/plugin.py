"""faces-mini as evaluation sees it (``eval.worlds``): its protocol, its shipped generator, its judges, the answers
and metrics of its latent-seeded evaluation, and the guides that Text-to-Unlearn consults (networks the
evaluation never reads)."""

from __future__ import annotations

from pathlib import Path

from eval.protocols import Axis, Protocol
from eval.worlds import World

from .answers import FacesAnswers
from .assets import ASSETS_DIR, GENERATOR_DIR, load_judge
from .guides import evaluation_guides, faces_mini_guides
from .metrics import faces_metrics
from .report_text import report_lines, summary
from .world import BINARY, CONCEPTS, HEAD_CLASSES, RESOLUTION


def protocol() -> Protocol:
    """Latent-seeded: seed k is the StyleGAN's z of seed k at truncation 1; concepts are attributes and identities."""
    return Protocol(
        name="faces-mini",
        axes=[Axis("attribute", list(BINARY)), Axis("identity", HEAD_CLASSES["identity"], null_class="anonymous")],
        template=None,
        seeds=list(range(1000)),
        resolution=RESOLUTION,
        classifiers="faces-mini",
        phrases={concept: phrase for concept, (_, phrase) in CONCEPTS.items()},
        anchor_phrase="a face",
    )


def judges(protocol: Protocol, device="cpu", assets: Path | None = None) -> dict:
    """The evaluation's networks: the attribute classifier (every head), the identity embedder and the held-out
    clip-judge."""
    root = Path(assets) if assets is not None else ASSETS_DIR
    held_out = evaluation_guides(root, device)
    return {
        "attributes": load_judge("classifier", root / "classifier", device),
        "identity": held_out.identity,
        "clip_image": held_out.clip_image,
        "clip_text": held_out.clip_text,
    }


def guides(*args, **kwargs):
    return faces_mini_guides(*args, **kwargs)


WORLD = World(
    name="faces-mini",
    protocol=protocol,
    judges=judges,
    model=lambda: GENERATOR_DIR,
    answers=FacesAnswers,
    metrics=faces_metrics,
    report_lines=report_lines,
    summary=summary,
    guides=guides,
)
