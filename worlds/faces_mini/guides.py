"""The networks Text-to-Unlearn consults on faces-mini, and the evaluation's own, kept apart.

Guides are not judges: a method trained against the network that scores it learns to fool that network. So the
method's guides (``faces_mini_guides``) are networks the evaluation never loads:

* ``clip-guide``, the method's tiny CLIP (the evaluation asks with ``clip-judge``);
* ``guide-classifier``, an attribute classifier of its own seed, widths and renders: the mapper's gate (does the
  edit add the concept?) and the concept's probability (which faces have it);
* ``guide-classifier-b``, a second one (the same renders, another seed and widths): the other attributes that an
  edit or an erasure keeps (``other_attributes``). Not the first, because the generator was sharpened through the
  first (``worlds.faces_mini.sharpen``): a KL through that network recoloured the erased faces' lips lavender
  (eyeglasses, 300 seeds: local palette drift 2.5x the original's), through this one they stay mostly red (1.8x);
* ``guide-identity``, an identity embedder of its own seed, widths and renders (the ArcFace stand-in);
* perceptual distances (LPIPS-style) through an untrained conv trunk of fixed seed (the default: the probe found
  it worked as well as anything tried), or through either guide network's feature maps.

``evaluation_guides`` builds what the evaluation's own mapper needs (``clip-judge`` and the evaluation's identity
embedder); ``JUDGE_ASSETS`` names every asset only the evaluation may read (tests/test_text_to_unlearn_guides.py checks
that training reads none of them).
"""

from __future__ import annotations

from pathlib import Path

import torch

from erase.core.data import model_identity
from erase.core.guides import Guides, unit
from eval.clip_alignment import clip_preprocess

from .assets import ASSETS_DIR, load_faces_clip, load_judge
from .models import AttributeClassifier, AttributeClassifierConfig, perceptual_distance
from .world import HEADS, concept_rate_label

RANDOM_TRUNK_SEED = 1234
JUDGE_ASSETS = ("classifier", "classifier_b", "identity", "clip-judge")  # the evaluation's networks: never a guide
GUIDE_ASSETS = ("clip-guide", "guide-classifier", "guide-classifier-b", "guide-identity")


def clip_guides(which: str, folder: Path | None = None, device: str = "cpu") -> tuple:
    """(image -> unit embedding, texts -> unit embedding, content digest) of one of the faces-mini CLIPs,
    differentiable in the images."""
    model, tokenizer = load_faces_clip(which, folder, device=device)
    model.requires_grad_(False)

    def image(x: torch.Tensor) -> torch.Tensor:
        return unit(model.encode_image(clip_preprocess(model, x)).float())

    @torch.no_grad()
    def text(texts: list[str]) -> torch.Tensor:
        return unit(model.encode_text(tokenizer(texts).to(device)).float())

    return image, text, _digest(model)


def _digest(net) -> str:
    return model_identity(net)[:16]


def faces_mini_guides(assets: Path | None = None, device: str = "cpu") -> Guides:
    """Text-to-Unlearn's guides on faces-mini: none of them is a network the evaluation uses."""
    root = Path(assets) if assets is not None else ASSETS_DIR
    image, text, clip_digest = clip_guides("clip-guide", root / "clip-guide", device)
    classifier = load_judge("guide-classifier", root / "guide-classifier", device)
    keeper = load_judge("guide-classifier-b", root / "guide-classifier-b", device)
    embedder = load_judge("guide-identity", root / "guide-identity", device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_TRUNK_SEED)
        random_trunk = AttributeClassifier(AttributeClassifierConfig()).to(device).eval().requires_grad_(False)
    nets = {"random": random_trunk, "guide-classifier": classifier, "guide-identity": embedder}
    choices = {name: (lambda a, b, net=net: perceptual_distance(net, a, b)) for name, net in nets.items()}
    described = {
        "random": f"untrained conv trunk of seed {RANDOM_TRUNK_SEED} (LPIPS-style) {_digest(random_trunk)}",
        "guide-classifier": f"faces-mini guide attribute classifier feature maps (LPIPS-style) {_digest(classifier)}",
        "guide-identity": f"faces-mini guide identity embedder feature maps (LPIPS-style) {_digest(embedder)}",
    }

    def concept_probability(x: torch.Tensor, concept: str) -> torch.Tensor:  # differentiable (a removing mapper)
        head, cls = concept_rate_label(concept)
        return classifier(x)[head].softmax(1)[:, cls]

    def other_attributes(x: torch.Tensor, concept: str) -> torch.Tensor:
        """Log-probabilities of every head but the concept's (identity included for attributes), concatenated."""
        own, _ = concept_rate_label(concept)
        logits = keeper(x)
        return torch.cat([logits[h].log_softmax(1) for h in HEADS if h != own], dim=1)

    return Guides(
        clip_image=image,
        clip_text=text,
        perceptual=choices["random"],
        identity=embedder,
        concept_probability=concept_probability,
        other_attributes=other_attributes,
        perceptual_choices=choices,
        # each name carries its network's content digest: a rebuilt guide is another guide, so mappers cached
        # for the old one are not reused and a resumed run refuses to mix them
        names={
            "clip": f"faces-mini clip-guide {clip_digest}",
            "perceptual": described["random"],
            **{f"perceptual:{k}": v for k, v in described.items()},
            "identity": f"faces-mini guide identity embedder {_digest(embedder)}",
            "gate_judge": f"faces-mini guide attribute classifier {_digest(classifier)}",
            "other_attributes": f"faces-mini second guide attribute classifier {_digest(keeper)}",
        },
    )


def evaluation_guides(assets: Path | None = None, device: str = "cpu") -> Guides:
    """What the evaluation's own mapper needs (it asks for the target with an edit the method never saw): the
    held-out ``clip-judge`` and the evaluation's identity embedder. Never handed to a method."""
    root = Path(assets) if assets is not None else ASSETS_DIR
    image, text, clip_digest = clip_guides("clip-judge", root / "clip-judge", device)
    embedder = load_judge("identity", root / "identity", device)
    return Guides(
        clip_image=image,
        clip_text=text,
        identity=embedder,
        names={
            "clip": f"faces-mini clip-judge {clip_digest}",
            "identity": f"faces-mini identity embedder {_digest(embedder)}",
        },
    )
