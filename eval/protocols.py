"""Evaluation protocols as data: concept lists, prompt template, seeds and sampler settings.

Two are built in: ``canvas-mini`` (the shipped world) and ``unlearncanvas``
(the published benchmark, exactly). A user protocol is a JSON or YAML file
with the same fields. Overrides (fewer seeds, fewer steps, ...) produce a new
protocol that lists each change in ``deviations``, and the report records them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

# UnlearnCanvas's 51-entry theme list in the style classifier's label order:
# 50 styles with the photo class `Seed_Images` alphabetically between Rust and Sketch.
UNLEARNCANVAS_THEMES = [
    "Abstractionism", "Artist_Sketch", "Blossom_Season", "Bricks", "Byzantine", "Cartoon", "Cold_Warm",
    "Color_Fantasy", "Comic_Etch", "Crayon", "Cubism", "Dadaism", "Dapple", "Defoliation", "Early_Autumn",
    "Expressionism", "Fauvism", "French", "Glowing_Sunset", "Gorgeous_Love", "Greenfield", "Impressionism",
    "Ink_Art", "Joy", "Liquid_Dreams", "Magic_Cube", "Meta_Physics", "Meteor_Shower", "Monet", "Mosaic",
    "Neon_Lines", "On_Fire", "Pastel", "Pencil_Drawing", "Picasso", "Pop_Art", "Red_Blue_Ink", "Rust",
    "Seed_Images", "Sketch", "Sponge_Dabbed", "Structuralism", "Superstring", "Surrealism", "Ukiyoe",
    "Van_Gogh", "Vibrant_Flow", "Warm_Love", "Warm_Smear", "Watercolor", "Winter",
]
UNLEARNCANVAS_OBJECTS = [
    "Architectures", "Bears", "Birds", "Butterfly", "Cats", "Dogs", "Fishes", "Flame", "Flowers", "Frogs",
    "Horses", "Human", "Jellyfish", "Rabbits", "Sandwiches", "Sea", "Statues", "Towers", "Trees", "Waterfalls",
]


class ProtocolError(ValueError):
    """A protocol, or a request against it, is invalid."""


@dataclass(frozen=True)
class Protocol:
    name: str
    styles: list[str]  # in the style classifier's label order, photo class included
    objects: list[str]  # in the object classifier's label order
    photo_class: str | None  # the entry of `styles` that is the photo class (never a style target, kept out of style averages)
    template: str = "A {object} image in {style} style."
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    sampler: str = "ddim"
    steps: int = 50
    guidance: float = 7.5
    eta: float = 0.0
    negative_prompt: str = ""
    resolution: int = 512
    classifiers: str = "canvas-mini"  # "canvas-mini" or "unlearncanvas-vit" (weights given by the user)
    deviations: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.styles or not self.objects:
            raise ProtocolError(f"protocol {self.name!r} needs non-empty styles and objects")
        if self.photo_class is not None and self.photo_class not in self.styles:
            raise ProtocolError(f"protocol {self.name!r}: photo_class {self.photo_class!r} is not in its styles")
        if "{object}" not in self.template or "{style}" not in self.template:
            raise ProtocolError(f"protocol {self.name!r}: template must contain {{object}} and {{style}}")
        if not self.seeds or self.steps < 1 or self.resolution < 8:
            raise ProtocolError(f"protocol {self.name!r}: needs at least one seed, steps >= 1 and resolution >= 8")

    # -- prompts -------------------------------------------------------------
    def prompt(self, style: str, obj: str) -> str:
        return self.template.format(object=obj.replace("_", " "), style=style.replace("_", " "))

    def answer_set(self) -> list[tuple[str, str, int]]:
        """Every (style, object, seed) the protocol generates, in a fixed order."""
        return [(s, o, seed) for s in self.styles for o in self.objects for seed in self.seeds]

    def concepts(self, kind: str) -> list[str]:
        if kind == "style":
            return self.styles
        if kind == "object":
            return self.objects
        raise ProtocolError(f"unknown kind {kind!r}; choose 'style' or 'object'")

    def check_target(self, target: str, kind: str) -> None:
        names = self.concepts(kind)
        if target not in names:
            raise ProtocolError(f"{kind} {target!r} is not in protocol {self.name!r}; choose one of: {', '.join(names)}")
        if kind == "style" and target == self.photo_class:
            raise ProtocolError(f"{target!r} is the photo class of protocol {self.name!r}, not a style that can be erased")

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
                notes.append(f"{key}: {old!r} -> {value!r} (protocol {self.name!r} says {old!r})")
        return replace(self, **changes, deviations=notes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ProtocolError(f"unknown protocol field(s) {sorted(unknown)}; known fields: {sorted(known)}")
        missing = {"name", "styles", "objects", "photo_class"} - set(d)
        if missing:
            raise ProtocolError(f"protocol is missing field(s) {sorted(missing)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def canvas_mini() -> Protocol:
    from eval.canvas_mini.world import OBJECTS, PROMPT_TEMPLATE, RESOLUTION, STYLES

    return Protocol(
        name="canvas-mini",
        styles=list(STYLES),
        objects=list(OBJECTS),
        photo_class="Photo",
        template=PROMPT_TEMPLATE,
        seeds=[0, 1, 2, 3, 4],
        steps=50,
        guidance=7.5,
        resolution=RESOLUTION,
        classifiers="canvas-mini",
    )


def unlearncanvas() -> Protocol:
    return Protocol(
        name="unlearncanvas",
        styles=list(UNLEARNCANVAS_THEMES),
        objects=list(UNLEARNCANVAS_OBJECTS),
        photo_class="Seed_Images",
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


BUILTIN = {"canvas-mini": canvas_mini, "unlearncanvas": unlearncanvas}


def load_protocol(spec: str) -> Protocol:
    """A built-in protocol by name, or a JSON / YAML protocol file."""
    if spec in BUILTIN:
        return BUILTIN[spec]()
    path = Path(spec)
    if not path.is_file():
        raise ProtocolError(f"unknown protocol {spec!r}; use one of {sorted(BUILTIN)} or a path to a JSON/YAML protocol file")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error becomes one clear line
        raise ProtocolError(f"cannot parse protocol file {path}: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ProtocolError(f"protocol file {path} must hold a mapping of protocol fields")
    return Protocol.from_dict(data)
