"""faces-mini as evaluation sees it (``eval.worlds``): its protocol, its shipped generator, its own report and the
guides that Text-to-Unlearn consults (networks the evaluation never reads)."""

from __future__ import annotations

from eval.protocols import Axis, Protocol
from eval.worlds import World

from .assets import GENERATOR_DIR
from .guides import faces_mini_guides
from .report import evaluate_faces
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


def evaluate(*args, **kwargs) -> dict:
    return evaluate_faces(*args, **kwargs)


def summary(r: dict) -> str:
    t = r["target_rate"]
    return (
        f"{r['target']} ({r['kind']}): rate {100 * t['original_plain']:.1f}% -> {100 * t['plain']:.1f}%, asked for it "
        f"{100 * t['original_edited']:.1f}% -> {100 * t['edited']:.1f}%; FD {r['fd']['value']:.3f} (original "
        f"{r['fd']['original']:.3f}); gamma {r['gamma']['classifier']['value']:.3f}"
    )


def guides(*args, **kwargs):
    return faces_mini_guides(*args, **kwargs)


WORLD = World(
    name="faces-mini",
    protocol=protocol,
    judges=None,
    model=lambda: GENERATOR_DIR,
    evaluate=evaluate,
    summary=summary,
    guides=guides,
)
