"""EraseRequest: what to erase, independent of the method that erases it."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import EraseError

KINDS = ("style", "object", "identity", "attribute", "nsfw")

# Prompt templates for models without a protocol (e.g. SD v1.5); {} is the concept.
DEFAULT_TEMPLATES = {
    "style": [
        "a painting in the style of {}",
        "an artwork by {}",
        "a picture in {} style",
        "a landscape in the style of {}",
    ],
    "object": ["a photo of {}", "an image of {}", "a picture of {}", "a drawing of {}"],
    "identity": ["a photo of {}", "a portrait of {}", "a picture of {}", "{} smiling"],
    "attribute": ["a photo of a person with {}", "a portrait with {}"],
    "nsfw": ["{}", "a photo of {}", "an image showing {}"],
}


@dataclass
class EraseRequest:
    """The concept to erase, what it should turn into, and what must be kept.

    ``forget_prompts[i]`` is rewritten towards ``anchor_prompts[i]``; ``retain_prompts`` cover the
    concepts whose behaviour must not change.
    """

    concept: str
    kind: str
    anchor: str | None = None
    forget_prompts: list[str] = field(default_factory=list)
    anchor_prompts: list[str] = field(default_factory=list)
    retain_prompts: list[str] = field(default_factory=list)
    seed: int = 0
    protocol: str | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.concept, str) or not self.concept.strip():
            raise EraseError("the concept to erase is empty; pass --concept NAME")
        if self.kind not in KINDS:
            raise EraseError(f"unknown kind {self.kind!r}; choose one of: {', '.join(KINDS)}")
        if self.anchor is not None and self.anchor.strip().lower() == self.concept.strip().lower():
            raise EraseError(
                f"the anchor equals the concept ({self.concept!r}); pick a different --anchor to map it to"
            )
        if not self.forget_prompts:
            raise EraseError(
                f"no forget prompts for {self.concept!r}; give prompts or build the request from a protocol"
            )
        if len(self.anchor_prompts) != len(self.forget_prompts):
            raise EraseError(
                f"{len(self.forget_prompts)} forget prompts but {len(self.anchor_prompts)} anchor prompts; give one "
                "anchor prompt per forget prompt"
            )

    # -- builders ---------------------------------------------------------------
    @classmethod
    def from_protocol(
        cls, protocol, concept: str, kind: str, anchor: str | None = None, seed: int = 0
    ) -> "EraseRequest":
        """Forget prompts = the concept across every combination of the protocol's other
        axes; retain = every other prompt.

        ``kind`` names one of the protocol's axes (``style`` or ``object`` on canvas-mini). The anchor
        defaults to the axis's null class (the photo class for styles) or, without one, to the next
        concept of the axis (stated in the request).
        """
        axes = list(protocol.axis_names)
        if kind not in axes:
            raise EraseError(
                f"protocol {protocol.name!r} has no {kind!r} axis; its concept kinds are: {', '.join(axes)}"
            )
        try:
            protocol.check_target(concept, kind)
        except ValueError as e:
            raise EraseError(str(e)) from e
        if (
            protocol.template is None
        ):  # a latent-seeded generator: the concept's phrase, "the concept absent" as anchor
            phrases = getattr(protocol, "phrases", {}) or {}
            if concept not in phrases:
                raise EraseError(
                    f"protocol {protocol.name!r} has no phrase for {concept!r}; give a protocol with 'phrases'"
                )
            anchor = anchor or protocol.anchor_phrase or "an image"
            retain = [p for c, p in phrases.items() if c != concept]
            return cls(concept, kind, anchor, [phrases[concept]], [anchor], retain, seed, protocol.name)
        names = protocol.concepts(kind)
        anchor = anchor or protocol.null_class(kind) or names[(names.index(concept) + 1) % len(names)]
        if anchor not in names:
            raise EraseError(
                f"anchor {kind} {anchor!r} is not in protocol {protocol.name!r}; choose one of {', '.join(names)}"
            )
        others = [a for a in axes if a != kind]
        combos = [dict(zip(others, values)) for values in itertools.product(*(protocol.concepts(a) for a in others))]
        forget = [protocol.prompt(**{kind: concept}, **c) for c in combos]
        anchors = [protocol.prompt(**{kind: anchor}, **c) for c in combos]
        # retain prompts in the protocol's own (axis-major) order, without the target's
        retain = [
            protocol.prompt(**dict(zip(axes, values)))
            for values in itertools.product(*(protocol.concepts(a) for a in axes))
            if dict(zip(axes, values))[kind] != concept
        ]
        return cls(concept, kind, anchor, forget, anchors, retain, seed, protocol.name)

    @classmethod
    def from_templates(
        cls,
        concept: str,
        kind: str,
        anchor: str,
        retain: list[str] = (),
        templates: list[str] | None = None,
        seed: int = 0,
    ) -> "EraseRequest":
        """For models without a protocol: fill prompt templates with the concept and with the anchor."""
        if not anchor:
            raise EraseError(
                "an anchor concept is needed (what the concept should become), e.g. --anchor 'a painting'"
            )
        templates = list(templates or DEFAULT_TEMPLATES.get(kind, ["{}"]))
        retain_prompts = [t.format(r) for r in retain for t in templates]
        return cls(
            concept,
            kind,
            anchor,
            [t.format(concept) for t in templates],
            [t.format(anchor) for t in templates],
            retain_prompts,
            seed,
        )

    # -- (de)serialisation -------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EraseRequest":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise EraseError(f"unknown request field(s) {sorted(unknown)}")
        return cls(**d)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))
