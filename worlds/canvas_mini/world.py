"""The canvas-mini world: its concept lists, resolution and prompt template.

Names follow UnlearnCanvas wherever the renderer can honour them, so the same
commands read the same on both worlds. ``Photo`` (plain rendering) is last in
STYLES, as UnlearnCanvas's photo class is a separate entry of its theme list.
"""

STYLES = [
    "Pencil_Drawing",
    "Neon_Lines",
    "Mosaic",
    "Watercolor",
    "Pop_Art",
    "Ink_Art",
    "Rust",
    "Winter",
    "Glowing_Sunset",
    "Crayon",
    "Photo",
]

OBJECTS = [
    "Birds",
    "Fishes",
    "Trees",
    "Flowers",
    "Butterfly",
    "Jellyfish",
    "Towers",
    "Rabbits",
    "Cats",
    "Flame",
]

RESOLUTION = 32
PROMPT_TEMPLATE = "A {object} image in {style} style."


def caption(style: str, obj: str) -> str:
    """The UnlearnCanvas caption: underscores become spaces."""
    return PROMPT_TEMPLATE.format(object=obj.replace("_", " "), style=style.replace("_", " "))


def check_style(style: str) -> int:
    if style not in STYLES:
        raise ValueError(f"unknown canvas-mini style {style!r}; choose one of: {', '.join(STYLES)}")
    return STYLES.index(style)


def check_object(obj: str) -> int:
    if obj not in OBJECTS:
        raise ValueError(f"unknown canvas-mini object {obj!r}; choose one of: {', '.join(OBJECTS)}")
    return OBJECTS.index(obj)
