"""The faces-mini world: every factor of a cartoon face, its labels and its captions.

A face is a `FaceSpec`, drawn from a seed by `sample_spec`; the renderer only
draws what the spec says. The attributes are independent of each other, with
one deliberate exception, so that erasing one of them has a known clean answer
and collateral damage on the others can be measured:

* **beard -> short hair.** On anonymous faces P(short | beard) = 0.9 and
  P(short | no beard) = 0.4. Hair length is a nuisance factor, not a head, so
  the correlation tests whether an eraser of "beard" also drags hair length
  along. Named identities keep their fixed hair length (and get beards at the
  usual rate), so the rule holds for anonymous faces only: over all faces
  P(short | beard) is about 0.74 and P(short | no beard) about 0.44.

Named identities are fixed geometries with fixed colours; anonymous faces get
random geometry sampled away from every named one, so "identity" is a learnable
label at 32 px. All lengths are in pixels of a 32 px image (the renderer scales
them), which keeps the numbers readable against the resolution they must
survive.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import random
from dataclasses import astuple, dataclass, fields

RESOLUTION = 32

BINARY = ["eyeglasses", "smile", "hat", "beard"]
PREVALENCE = {"eyeglasses": 0.35, "smile": 0.50, "hat": 0.30, "beard": 0.35}
HAIR_COLOURS = ["black", "brown", "blond", "red"]
SKIN_TONES = ["light", "medium", "dark"]
BACKGROUNDS = 4  # plain pastel colours, a nuisance factor
HAT_COLOURS = 3  # a nuisance factor within "hat"
LENS_TINTS = 5  # a nuisance factor within "eyeglasses"; see the renderer for why lenses are not all one colour

# The deliberate correlation (anonymous faces only): P(short hair | beard).
P_SHORT_HAIR = {True: 0.9, False: 0.4}

P_NAMED = 0.10  # probability of each named identity
SCALE_RANGE = (0.92, 1.06)
SHIFT_RANGE = 1.5  # pixels at 32 px, both axes

# First seed of each use, ten million apart, so that every trainer draws renders
# no other trainer (and no check) has seen.
SEED_BASE = {
    "generator": 0,
    "classifier": 10_000_000,
    "classifier_b": 20_000_000,
    "clip": 30_000_000,
    "clip_eval": 40_000_000,
    "identity": 50_000_000,
    "check": 60_000_000,
    "fd": 70_000_000,
    "guide": 80_000_000,  # the guide-only networks Text-to-Unlearn consults (never the evaluation's)
    "palette": 90_000_000,  # the colours the renderer draws (worlds.faces_mini.palette)
}


@dataclass(frozen=True)
class Geometry:
    """The shape of a face, in pixels of a 32 px image."""

    face_width: float  # half-width of the head oval
    face_height: float  # half-height of the head oval
    jaw: float  # superellipse exponent of the lower half: < 2 pointed chin, > 2 square jaw
    eye_spacing: float  # distance of each eye from the face's midline
    eye_size: float  # half-width of each eye
    nose_length: float

    def normalised(self) -> tuple[float, ...]:
        """Each field mapped to [0, 1] over GEOMETRY_RANGES, so distances weigh every field alike."""
        return tuple((v - lo) / (hi - lo) for v, (lo, hi) in zip(astuple(self), GEOMETRY_RANGES.values()))


GEOMETRY_RANGES = {
    "face_width": (6.0, 8.2),
    "face_height": (7.6, 9.6),
    "jaw": (1.4, 3.4),
    "eye_spacing": (2.6, 3.8),
    "eye_size": (0.9, 1.5),
    "nose_length": (1.6, 3.4),
}
assert list(GEOMETRY_RANGES) == [f.name for f in fields(Geometry)]


def _geometry_at(*unit: float) -> Geometry:
    """A geometry from normalised coordinates (the inverse of Geometry.normalised)."""
    return Geometry(*(lo + u * (hi - lo) for u, (lo, hi) in zip(unit, GEOMETRY_RANGES.values())))


@dataclass(frozen=True)
class Identity:
    name: str
    geometry: Geometry
    skin: int
    hair_colour: int
    long_hair: bool


# Near opposite corners of the normalised geometry cube: every pair differs by
# at least 0.7 of a field's range in two or more fields. Each has its own hair
# colour, so that hair colours stay uniform over all faces.
IDENTITIES = [
    # narrow long face, pointed chin, close-set big eyes, short nose
    Identity(
        "Alice",
        _geometry_at(0.10, 0.90, 0.10, 0.15, 0.90, 0.10),
        skin=SKIN_TONES.index("light"),
        hair_colour=HAIR_COLOURS.index("blond"),
        long_hair=True,
    ),
    # wide short face, square jaw, wide-set small eyes, long nose
    Identity(
        "Bruno",
        _geometry_at(0.90, 0.10, 0.90, 0.90, 0.10, 0.90),
        skin=SKIN_TONES.index("medium"),
        hair_colour=HAIR_COLOURS.index("brown"),
        long_hair=False,
    ),
    # wide long face, round jaw, close-set small eyes, long nose
    Identity(
        "Chiara",
        _geometry_at(0.85, 0.90, 0.45, 0.10, 0.15, 0.85),
        skin=SKIN_TONES.index("dark"),
        hair_colour=HAIR_COLOURS.index("black"),
        long_hair=True,
    ),
    # narrow short face, square jaw, wide-set big eyes, short nose
    Identity(
        "Dmitri",
        _geometry_at(0.15, 0.10, 0.95, 0.85, 0.85, 0.15),
        skin=SKIN_TONES.index("light"),
        hair_colour=HAIR_COLOURS.index("red"),
        long_hair=False,
    ),
]
IDENTITY_NAMES = [identity.name for identity in IDENTITIES]
ANONYMOUS = len(IDENTITIES)  # the identity head's last class

# Anonymous geometry is re-drawn until it is at least this far (normalised
# Euclidean distance) from every named identity, so no anonymous face passes
# for a named one.
MIN_ANONYMOUS_DISTANCE = 0.6

# Skin weights for anonymous faces that make skin uniform over all faces,
# compensating for the named identities' fixed skins.
_named_skin_share = [P_NAMED * sum(i.skin == s for i in IDENTITIES) for s in range(len(SKIN_TONES))]
_anonymous_share = 1 - P_NAMED * len(IDENTITIES)
ANONYMOUS_SKIN_WEIGHTS = [(1 / len(SKIN_TONES) - share) / _anonymous_share for share in _named_skin_share]
assert min(ANONYMOUS_SKIN_WEIGHTS) > 0

HEADS = {
    "eyeglasses": 2,
    "smile": 2,
    "hat": 2,
    "beard": 2,
    "hair_colour": len(HAIR_COLOURS),
    "skin": len(SKIN_TONES),
    "identity": len(IDENTITIES) + 1,
}

# The class names of every head, in the heads' class order (binary heads: "no", "yes").
HEAD_CLASSES = {
    **{h: ["no", "yes"] for h in BINARY},
    "hair_colour": HAIR_COLOURS,
    "skin": SKIN_TONES,
    "identity": [*IDENTITY_NAMES, "anonymous"],
}
assert all(len(HEAD_CLASSES[h]) == n for h, n in HEADS.items())


@dataclass(frozen=True)
class FaceSpec:
    """Every factor of one face; the renderer draws exactly this."""

    eyeglasses: bool
    smile: bool
    hat: bool
    beard: bool
    hair_colour: int
    skin: int
    long_hair: bool
    identity: int  # index into IDENTITIES, -1 for an anonymous face
    geometry: Geometry
    background: int
    hat_colour: int
    scale: float
    shift_x: float
    shift_y: float
    lens_tint: int = 0  # index into the renderer's lens colours; drawn last so every other factor keeps its seed


def _anonymous_geometry(rng: random.Random) -> Geometry:
    named = [identity.geometry.normalised() for identity in IDENTITIES]
    while True:
        unit = [rng.random() for _ in GEOMETRY_RANGES]
        if all(math.dist(unit, other) >= MIN_ANONYMOUS_DISTANCE for other in named):
            return _geometry_at(*unit)


def sample_spec(seed: int) -> FaceSpec:
    """The face of one seed; the same seed always gives the same face, whatever the global RNG state."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = random.Random(int(seed))
    eyeglasses, smile, hat, beard = (rng.random() < PREVALENCE[name] for name in BINARY)
    pick = rng.random()
    if pick < P_NAMED * len(IDENTITIES):
        identity = int(pick / P_NAMED)
        named = IDENTITIES[identity]
        geometry, skin, hair_colour, long_hair = named.geometry, named.skin, named.hair_colour, named.long_hair
    else:
        identity = -1
        geometry = _anonymous_geometry(rng)
        skin = rng.choices(range(len(SKIN_TONES)), weights=ANONYMOUS_SKIN_WEIGHTS)[0]
        hair_colour = rng.randrange(len(HAIR_COLOURS))
        long_hair = rng.random() >= P_SHORT_HAIR[beard]
    return FaceSpec(
        eyeglasses=eyeglasses,
        smile=smile,
        hat=hat,
        beard=beard,
        hair_colour=hair_colour,
        skin=skin,
        long_hair=long_hair,
        identity=identity,
        geometry=geometry,
        background=rng.randrange(BACKGROUNDS),
        hat_colour=rng.randrange(HAT_COLOURS),
        scale=rng.uniform(*SCALE_RANGE),
        shift_x=rng.uniform(-SHIFT_RANGE, SHIFT_RANGE),
        shift_y=rng.uniform(-SHIFT_RANGE, SHIFT_RANGE),
        lens_tint=rng.randrange(LENS_TINTS),
    )


def labels(spec: FaceSpec) -> dict[str, int]:
    """The class of every head in HEADS; anonymous faces are the identity head's last class."""
    return {
        "eyeglasses": int(spec.eyeglasses),
        "smile": int(spec.smile),
        "hat": int(spec.hat),
        "beard": int(spec.beard),
        "hair_colour": spec.hair_colour,
        "skin": spec.skin,
        "identity": ANONYMOUS if spec.identity < 0 else spec.identity,
    }


def geometry_vector(spec: FaceSpec) -> tuple[float, ...]:
    """The face's geometry as plain floats in GEOMETRY_RANGES order: a regression target for an identity embedder."""
    return astuple(spec.geometry)


# ---------------------------------------------------------------------------
# Erasable concepts: (kind, protocol phrase). Every phrase is a caption the
# tiny CLIP sees in training (see `caption`).

CONCEPTS = {
    "eyeglasses": ("attribute", "a face with eyeglasses"),
    "smile": ("attribute", "a smiling face"),
    "hat": ("attribute", "a face wearing a hat"),
    "beard": ("attribute", "a face with a beard"),
    **{name: ("identity", f"a photo of {name}") for name in IDENTITY_NAMES},
}


# Each binary attribute's negation, as the CLIPs saw it in captions: zero-shot checks ask "phrase or negation?".
NEGATED_PHRASES = {
    "eyeglasses": "a face without eyeglasses",
    "smile": "a serious face",
    "hat": "a face without a hat",
    "beard": "a clean-shaven face",
}


def concept_rate_label(concept: str) -> tuple[str, int]:
    """The (head, class) whose rate says how much of `concept` a generator still produces."""
    if concept not in CONCEPTS:
        raise ValueError(f"unknown faces-mini concept {concept!r}; choose one of: {', '.join(CONCEPTS)}")
    if CONCEPTS[concept][0] == "identity":
        return "identity", IDENTITY_NAMES.index(concept)
    return concept, 1


# ---------------------------------------------------------------------------
# Captions for tiny-CLIP training. Each attribute is said in one of several
# ways; "adjective" forms go before the noun ("a smiling face"), the others
# after it ("a face with eyeglasses").

P_MENTION_PRESENT = 0.8  # a present attribute is mentioned
P_MENTION_ABSENT = 0.2  # an absent attribute is explicitly negated
P_MENTION_HAIR = 0.5
P_MENTION_SKIN = 0.3
P_MENTION_NAME = 0.8
P_WRONG = 0.03  # a mentioned attribute is stated wrongly: label noise, so CLIP is not perfect

PHRASES = {
    # attribute: {stated value: [(form, words), ...]}; form "adj" goes before the noun, "with" after it
    "eyeglasses": {
        True: [
            ("with", "with eyeglasses"),
            ("with", "with glasses"),
            ("with", "wearing glasses"),
            ("with", "wearing eyeglasses"),
            ("with", "with spectacles"),
            ("with", "in spectacles"),
        ],
        False: [("with", "without glasses"), ("with", "with no glasses"), ("with", "without eyeglasses")],
    },
    "smile": {
        True: [
            ("adj", "smiling"),
            ("adj", "grinning"),
            ("with", "smiling"),
            ("with", "with a smile"),
            ("with", "with a big smile"),
        ],
        False: [("adj", "serious"), ("with", "not smiling"), ("with", "with a straight face")],
    },
    "hat": {
        True: [
            ("with", "wearing a hat"),
            ("with", "with a hat"),
            ("with", "in a hat"),
            ("with", "wearing a cap"),
            ("with", "with a cap"),
        ],
        False: [("with", "with no hat"), ("with", "without a hat"), ("adj", "bareheaded")],
    },
    "beard": {
        True: [
            ("with", "with a beard"),
            ("adj", "bearded"),
            ("with", "with a full beard"),
            ("with", "with a dark beard"),
        ],
        False: [("adj", "clean-shaven"), ("with", "without a beard"), ("with", "with no beard")],
    },
}
HAIR_WORDS = {
    "black": ["black", "jet-black"],
    "brown": ["brown"],
    "blond": ["blond", "blonde"],
    "red": ["red", "ginger"],
}
SKIN_WORDS = {"light": ["light", "pale", "fair"], "medium": ["medium", "olive", "tan"], "dark": ["dark"]}
NOUNS = ["face", "person", "cartoon face", "cartoon person"]
WRAPPERS = ["{}", "{}", "a photo of {}", "a picture of {}", "a drawing of {}", "{}."]


def _hair_phrase(spec: FaceSpec, rng: random.Random) -> tuple[str, str]:
    colour = rng.choice(HAIR_WORDS[HAIR_COLOURS[spec.hair_colour]])
    if rng.random() < 0.5:
        return "with", f"with {'long' if spec.long_hair else 'short'} {colour} hair"
    return rng.choice([("with", f"with {colour} hair"), ("adj", f"{colour}-haired")])


def _skin_phrase(spec: FaceSpec, rng: random.Random) -> tuple[str, str]:
    skin = rng.choice(SKIN_WORDS[SKIN_TONES[spec.skin]])
    return rng.choice([("with", f"with {skin} skin"), ("adj", f"{skin}-skinned")])


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(spec: FaceSpec, rng: random.Random, force: str | None = None) -> str:
    """A paraphrased caption of `spec`: a random subset of its factors, in random words and order; the binary
    attribute `force` is always stated (truly), which is how hard-negative captions pin one attribute."""
    mentions = []
    for name in BINARY:
        present = getattr(spec, name)
        mentioned = rng.random() < (P_MENTION_PRESENT if present else P_MENTION_ABSENT)
        wrong = rng.random() < P_WRONG
        if name == force:  # one draw whatever the list's length, so a flipped twin consumes the same randomness
            options = PHRASES[name][present]
            mentions.append(options[min(int(rng.random() * len(options)), len(options) - 1)])
        elif mentioned:
            mentions.append(rng.choice(PHRASES[name][present != wrong]))
    if rng.random() < P_MENTION_HAIR:
        mentions.append(_hair_phrase(spec, rng))
    if rng.random() < P_MENTION_SKIN:
        mentions.append(_skin_phrase(spec, rng))
    rng.shuffle(mentions)

    if spec.identity >= 0 and rng.random() < P_MENTION_NAME:
        # A name takes no article and no adjectives before it: "Alice, smiling and with glasses".
        words = [w for _, w in mentions]
        body = IDENTITY_NAMES[spec.identity]
        if words:
            body += rng.choice([" ", ", "]) + _join(words)
    else:
        adjectives = [w for form, w in mentions if form == "adj"]
        trailing = [w for form, w in mentions if form == "with"]
        noun = " ".join(adjectives + [rng.choice(NOUNS)])
        body = ("an " if noun[0] in "aeiou" else "a ") + noun
        if trailing:
            body += " " + _join(trailing)
    return rng.choice(WRAPPERS).format(body)


def hard_negative_captions(spec: FaceSpec, rng: random.Random) -> tuple[str, str]:
    """(caption, hard negative): both state one random binary attribute, the negative with its value flipped and
    everything else drawn identically (NegCLIP-style: the CLIP must see every attribute, not just the easy ones)."""
    name = rng.choice(BINARY)
    state = rng.getstate()
    positive = caption(spec, rng, force=name)
    rng.setstate(state)
    negative = caption(dataclasses.replace(spec, **{name: not getattr(spec, name)}), rng, force=name)
    return positive, negative
