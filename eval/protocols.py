"""Evaluation protocols as data: named concept axes, prompt template, seeds and sampler settings.

A protocol holds an ordered list of **axes**. Each axis has a name (``style``,
``object``; later ``attribute``, ``identity``), its concepts in the judge's
label order, an optional null class (the photo class of the style axis: judged
like any concept, never a target, left out of that axis's averages) and the
name of the metric that scores it (see ``eval.axis_metrics``). The answer set
is every combination of one concept per axis, times every seed; the prompt
template names each axis (``"A {object} image in {style} style."``). A
latent-seeded generator (faces) has no template.

Two are built in: ``canvas-mini`` (the shipped world) and ``unlearncanvas``
(the published benchmark, exactly), both style x object. A user protocol is a
JSON or YAML file with the same fields; files in the older shape (``styles``,
``objects``, ``photo_class`` keys) still load. Overrides (fewer seeds, fewer
steps, another sampler, ...) produce a new protocol that lists each change in
``deviations``, and the report records them.
"""

from __future__ import annotations

import itertools
import json
import math
import string
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from erase.core.errors import EraseError

from .samplers import SAMPLERS
from .worlds import get_world, world_names

# UnlearnCanvas's 51-entry theme list in the style classifier's label order:
# 50 styles with the photo class `Seed_Images` alphabetically between Rust and Sketch.
UNLEARNCANVAS_THEMES = [
    "Abstractionism",
    "Artist_Sketch",
    "Blossom_Season",
    "Bricks",
    "Byzantine",
    "Cartoon",
    "Cold_Warm",
    "Color_Fantasy",
    "Comic_Etch",
    "Crayon",
    "Cubism",
    "Dadaism",
    "Dapple",
    "Defoliation",
    "Early_Autumn",
    "Expressionism",
    "Fauvism",
    "French",
    "Glowing_Sunset",
    "Gorgeous_Love",
    "Greenfield",
    "Impressionism",
    "Ink_Art",
    "Joy",
    "Liquid_Dreams",
    "Magic_Cube",
    "Meta_Physics",
    "Meteor_Shower",
    "Monet",
    "Mosaic",
    "Neon_Lines",
    "On_Fire",
    "Pastel",
    "Pencil_Drawing",
    "Picasso",
    "Pop_Art",
    "Red_Blue_Ink",
    "Rust",
    "Seed_Images",
    "Sketch",
    "Sponge_Dabbed",
    "Structuralism",
    "Superstring",
    "Surrealism",
    "Ukiyoe",
    "Van_Gogh",
    "Vibrant_Flow",
    "Warm_Love",
    "Warm_Smear",
    "Watercolor",
    "Winter",
]
UNLEARNCANVAS_OBJECTS = [
    "Architectures",
    "Bears",
    "Birds",
    "Butterfly",
    "Cats",
    "Dogs",
    "Fishes",
    "Flame",
    "Flowers",
    "Frogs",
    "Horses",
    "Human",
    "Jellyfish",
    "Rabbits",
    "Sandwiches",
    "Sea",
    "Statues",
    "Towers",
    "Trees",
    "Waterfalls",
]

LEGACY_KEYS = ("styles", "objects", "photo_class")


class ProtocolError(EraseError):
    """A protocol, or a request against it, is invalid."""


@dataclass(frozen=True)
class Axis:
    """One named concept axis: its concepts in the judge's label order, its null class and its metric."""

    name: str
    concepts: list[str]
    null_class: str | None = None  # judged like any concept, never a target, kept out of this axis's averages
    metric: str = "concept_accuracy"  # registry name in eval.axis_metrics

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ProtocolError(f"axis name {self.name!r} must be a plain word such as 'style' or 'object'")
        if (
            not isinstance(self.concepts, list)
            or not self.concepts
            or not all(isinstance(c, str) and c for c in self.concepts)
        ):
            raise ProtocolError(f"axis {self.name!r} needs a non-empty list of concept names")
        if len(set(self.concepts)) != len(self.concepts):
            raise ProtocolError(f"axis {self.name!r} lists a concept twice")
        if self.null_class is not None and self.null_class not in self.concepts:
            raise ProtocolError(f"axis {self.name!r}: null class {self.null_class!r} is not one of its concepts")

    @property
    def targets(self) -> list[str]:
        """The concepts that can be erased (every concept but the null class)."""
        return [c for c in self.concepts if c != self.null_class]

    @classmethod
    def from_dict(cls, d) -> "Axis":
        known = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or not {"name", "concepts"} <= set(d) or set(d) - known:
            raise ProtocolError(
                (
                    "each axis must be a mapping with 'name' and 'concepts' (optional: "
                    f"'null_class', 'metric'), got {d!r}"
                )[:300]
            )
        return cls(**d)


def style_object_axes(styles: list[str], objects: list[str], photo_class: str | None) -> list[Axis]:
    """The two axes of UnlearnCanvas-like protocols: styles (with the photo class as null class) x objects."""
    return [Axis("style", list(styles), photo_class), Axis("object", list(objects))]


@dataclass(frozen=True)
class Protocol:
    name: str
    axes: list[Axis]
    template: str | None = "A {object} image in {style} style."  # None: a latent-seeded generator, no prompts
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    sampler: str = "ddim"
    steps: int = 50
    guidance: float = 7.5
    eta: float = 0.0
    negative_prompt: str = ""
    resolution: int = 512
    classifiers: str = (
        "canvas-mini"  # judge family: "canvas-mini", "unlearncanvas-vit" (weights given by the user) or "faces-mini"
    )
    deviations: list[str] = field(default_factory=list)
    # latent-seeded generators (template None): each concept's text, and the text of "the concept absent"
    phrases: dict = field(default_factory=dict)
    anchor_phrase: str | None = None

    def __post_init__(self):
        if not isinstance(self.axes, list) or not self.axes or not all(isinstance(a, Axis) for a in self.axes):
            raise ProtocolError(f"protocol {self.name!r} needs at least one concept axis")
        names = [a.name for a in self.axes]
        if len(set(names)) != len(names):
            raise ProtocolError(f"protocol {self.name!r} names an axis twice: {names}")
        if self.template is not None:
            try:
                placeholders = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
            except ValueError as e:
                raise ProtocolError(f"protocol {self.name!r}: bad template {self.template!r} ({e})") from e
            if placeholders != set(names):
                want = ", ".join("{" + n + "}" for n in names)
                raise ProtocolError(
                    f"protocol {self.name!r}: template must contain exactly the axis placeholders "
                    f"{want}, got {self.template!r}"
                )
        if not self.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.seeds):
            raise ProtocolError(f"protocol {self.name!r} needs a list of integer seeds")
        if (
            not isinstance(self.steps, int)
            or self.steps < 1
            or not isinstance(self.resolution, int)
            or self.resolution < 8
        ):
            raise ProtocolError(f"protocol {self.name!r}: needs at least one seed, steps >= 1 and resolution >= 8")
        if not isinstance(self.guidance, (int, float)) or not math.isfinite(self.guidance):
            raise ProtocolError(f"protocol {self.name!r}: guidance must be a finite number, got {self.guidance!r}")
        if not isinstance(self.eta, (int, float)) or not math.isfinite(self.eta) or self.eta < 0:
            raise ProtocolError(f"protocol {self.name!r}: eta must be a finite number >= 0, got {self.eta!r}")
        if self.sampler not in SAMPLERS:
            raise ProtocolError(
                f"protocol {self.name!r}: unknown sampler {self.sampler!r}; choose one of: {', '.join(SAMPLERS)}"
            )

    # -- axes ------------------------------------------------------------------
    @property
    def axis_names(self) -> list[str]:
        return [a.name for a in self.axes]

    def axis(self, kind: str) -> Axis:
        for a in self.axes:
            if a.name == kind:
                return a
        raise ProtocolError(
            f"unknown kind {kind!r} for protocol {self.name!r}; its axes are: {', '.join(self.axis_names)}"
        )

    def concepts(self, kind: str) -> list[str]:
        """The concepts of axis ``kind`` in the judge's label order (null class included)."""
        return self.axis(kind).concepts

    def null_class(self, kind: str) -> str | None:
        return self.axis(kind).null_class

    @property
    def styles(self) -> list[str]:
        return self.concepts("style")

    @property
    def objects(self) -> list[str]:
        return self.concepts("object")

    @property
    def photo_class(self) -> str | None:
        """The style axis's null class (None when the protocol has no style axis)."""
        return self.null_class("style") if "style" in self.axis_names else None

    def check_target(self, target: str, kind: str) -> None:
        axis = self.axis(kind)
        if target not in axis.concepts:
            raise ProtocolError(
                f"{kind} {target!r} is not in protocol {self.name!r}; choose one of: {', '.join(axis.targets)}"
            )
        if target == axis.null_class:
            what = "photo class" if kind == "style" else f"null class of the {kind} axis"
            raise ProtocolError(f"{target!r} is the {what} of protocol {self.name!r}, not a {kind} that can be erased")

    # -- prompts and the answer set ----------------------------------------------
    def prompt(self, *values: str, **named: str) -> str:
        """The prompt for one concept per axis: positional in axis order, or by axis name."""
        if self.template is None:
            raise ProtocolError(f"protocol {self.name!r} has no prompt template (its generator is latent-seeded)")
        names = self.axis_names
        if len(values) > len(names):
            raise ProtocolError(
                f"protocol {self.name!r} has {len(names)} axes ({', '.join(names)}), got {len(values)} values"
            )
        fill = dict(zip(names, values))
        for key, value in named.items():
            if key not in names:
                raise ProtocolError(
                    f"unknown kind {key!r} for protocol {self.name!r}; its axes are: {', '.join(names)}"
                )
            if key in fill:
                raise ProtocolError(f"axis {key!r} given twice")
            fill[key] = value
        missing = [n for n in names if n not in fill]
        if missing:
            raise ProtocolError(
                f"a prompt of protocol {self.name!r} needs a concept for every axis; missing: {', '.join(missing)}"
            )
        return self.template.format(**{k: v.replace("_", " ") for k, v in fill.items()})

    def answer_set(self) -> list[tuple]:
        """Every (concept of axis 1, ..., concept of axis k, seed) the protocol generates, in a fixed order."""
        return [(*combo, seed) for combo in itertools.product(*(a.concepts for a in self.axes)) for seed in self.seeds]

    # -- overrides and (de)serialisation ------------------------------------------
    def with_overrides(self, **changes) -> "Protocol":
        """A copy with some fields changed; each change is recorded in ``deviations``."""
        changes = {k: v for k, v in changes.items() if v is not None}
        notes = list(self.deviations)
        for key, value in changes.items():
            if key not in {f.name for f in fields(self)} or key in ("name", "deviations"):
                raise ProtocolError(f"cannot override protocol field {key!r}")
            old = getattr(self, key)
            if value != old:
                notes.append(f"{key}: {_short(old)} -> {_short(value)} (protocol {self.name!r} says {_short(old)})")
        return replace(self, **changes, deviations=notes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        """A protocol from its dict; the older style x object shape (styles / objects / photo_class) is accepted."""
        if not isinstance(d, dict):
            raise ProtocolError("a protocol must be a mapping of protocol fields")
        d = dict(d)
        legacy = {k: d.pop(k) for k in LEGACY_KEYS if k in d}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ProtocolError(
                f"unknown protocol field(s) {sorted(unknown)}; known fields: {sorted(known | set(LEGACY_KEYS))}"
            )
        if legacy and "axes" in d:
            raise ProtocolError(f"give either 'axes' or the older {list(LEGACY_KEYS)}, not both")
        if legacy:
            missing = {"styles", "objects"} - set(legacy)
            if missing:
                raise ProtocolError(f"protocol is missing field(s) {sorted(missing)}")
            d["axes"] = style_object_axes(legacy["styles"], legacy["objects"], legacy.get("photo_class"))
        elif "axes" in d:
            if not isinstance(d["axes"], list):
                raise ProtocolError("protocol field 'axes' must be a list of axes")
            d["axes"] = [a if isinstance(a, Axis) else Axis.from_dict(a) for a in d["axes"]]
        missing = {"name", "axes"} - set(d)
        if missing:
            raise ProtocolError(f"protocol is missing field(s) {sorted(missing)}")
        try:
            return cls(**d)
        except TypeError as e:  # a field of the wrong type, e.g. a string where a list is expected
            raise ProtocolError(f"invalid protocol: {e}") from e

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def _short(value) -> str:
    """A compact repr for deviation notes (an overridden axis list would otherwise fill a page)."""
    if isinstance(value, list) and value and isinstance(value[0], Axis):
        return (
            "["
            + "; ".join(
                f"{a.name}: {len(a.concepts)} concepts, null class {a.null_class}, metric {a.metric}" for a in value
            )
            + "]"
        )
    return repr(value)


def unlearncanvas() -> Protocol:
    return Protocol(
        name="unlearncanvas",
        axes=style_object_axes(UNLEARNCANVAS_THEMES, UNLEARNCANVAS_OBJECTS, "Seed_Images"),
        template="A {object} image in {style} style.",
        seeds=[188, 288, 588, 688, 888],
        sampler="ddim",
        steps=100,
        guidance=9.0,
        eta=0.0,
        negative_prompt="",
        resolution=512,
        classifiers="unlearncanvas-vit",
    )


BUILTIN = {"unlearncanvas": unlearncanvas}  # and every world's protocol (eval.worlds)


def load_protocol(spec: str) -> Protocol:
    """A built-in protocol or a world's (``canvas-mini``, ``faces-mini``) by name, or a JSON / YAML protocol file."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    if spec in world_names():
        return get_world(spec).protocol()
    path = Path(spec)
    if not path.is_file():
        raise ProtocolError(
            f"unknown protocol {spec!r}; use one of {sorted([*BUILTIN, *world_names()])} or a path "
            "to a JSON/YAML protocol file"
        )
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any read or parse error becomes one clear line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProtocolError(f"cannot read protocol file {path}: {first}") from e
    if not isinstance(data, dict):
        raise ProtocolError(f"protocol file {path} must hold a mapping of protocol fields")
    return Protocol.from_dict(data)


def load_templates(path: str | Path, protocol: Protocol) -> list[str]:
    """Prompt templates for out-of-distribution evaluation: one per line, blank lines and ``#`` comments
    ignored; each must name exactly the protocol's axes (``{style}`` and ``{object}`` on canvas-mini)."""
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(
            f"templates file {path} does not exist; pass a text file with one prompt template per line"
        )
    want = {"{" + a + "}" for a in protocol.axis_names}
    templates = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            found = {"{" + f + "}" for _, f, _, _ in string.Formatter().parse(line) if f is not None}
        except ValueError as e:
            raise ProtocolError(f"{path}:{n}: bad template {line!r} ({e})") from e
        if found != want:
            raise ProtocolError(f"{path}:{n}: template {line!r} must contain exactly {', '.join(sorted(want))}")
        templates.append(line)
    if not templates:
        raise ProtocolError(
            f"templates file {path} holds no template; write one per line, e.g. 'A {{style}} "
            "style picture of a {object}.'"
        )
    if len(set(templates)) != len(templates):
        raise ProtocolError(f"templates file {path} lists a template twice")
    return templates
