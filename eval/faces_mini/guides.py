"""The faces-mini guides for Text-to-Unlearn, from the shipped artefacts: the method's tiny CLIP
(``clip-guide``; evaluation uses the other one), the attribute classifier's feature maps as the perceptual
distance (the LPIPS stand-in), the identity embedder (the ArcFace stand-in), and the attribute classifier's
probability of a concept (only for the mapper's gate).

The default perceptual distance looks through the attribute classifier, which is also the evaluation's judge. Two
others are offered by name (``perceptual_net``), so that what keeps "the rest" need not be the judge: the identity
embedder's feature maps and an untrained conv trunk of fixed seed. (Measured: the judge's distance is only mildly more
tuned to glasses than theirs; README, "Which network measures the rest".)"""

from __future__ import annotations

from pathlib import Path

import torch

from erase.guides import Guides, unit


RANDOM_TRUNK_SEED = 1234


def clip_guides(which: str, folder: Path | None = None, device: str = "cpu") -> tuple:
    """(image -> unit embedding, texts -> unit embedding, content digest) of one of the faces-mini CLIPs, differentiable
    in the images."""
    from erase.data import model_identity
    from eval.clip_alignment import clip_preprocess

    from .assets import load_faces_clip

    model, tokenizer = load_faces_clip(which, folder, device=device)
    model.requires_grad_(False)

    def image(x: torch.Tensor) -> torch.Tensor:
        return unit(model.encode_image(clip_preprocess(model, x)).float())

    @torch.no_grad()
    def text(texts: list[str]) -> torch.Tensor:
        return unit(model.encode_text(tokenizer(texts).to(device)).float())

    return image, text, model_identity(model)[:16]


def faces_mini_guides(which_clip: str = "clip-guide", assets: Path | None = None, device: str = "cpu") -> Guides:
    from erase.data import model_identity

    from .assets import ASSETS_DIR, load_judge
    from .models import AttributeClassifier, AttributeClassifierConfig, perceptual_distance
    from .world import concept_rate_label

    root = Path(assets) if assets is not None else ASSETS_DIR

    image, text, clip_digest = clip_guides(which_clip, root / which_clip, device)
    classifier = load_judge("classifier", root / "classifier", device)
    embedder = load_judge("identity", root / "identity", device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_TRUNK_SEED)
        random_trunk = AttributeClassifier(AttributeClassifierConfig()).to(device).eval().requires_grad_(False)
    nets = {"classifier": classifier, "identity": embedder, "random": random_trunk}
    choices = {name: (lambda a, b, net=net: perceptual_distance(net, a, b)) for name, net in nets.items()}
    described = {"classifier": f"faces-mini attribute classifier feature maps (LPIPS-style) {model_identity(classifier)[:16]}",
                 "identity": f"faces-mini identity embedder feature maps (LPIPS-style) {model_identity(embedder)[:16]}",
                 "random": f"untrained conv trunk of seed {RANDOM_TRUNK_SEED} (LPIPS-style) {model_identity(random_trunk)[:16]}"}

    def identity(x: torch.Tensor) -> torch.Tensor:
        return embedder(x)

    @torch.no_grad()
    def concept_probability(x: torch.Tensor, concept: str) -> torch.Tensor:
        head, cls = concept_rate_label(concept)
        return classifier(x)[head].softmax(1)[:, cls]

    return Guides(clip_image=image, clip_text=text, perceptual=choices["classifier"], identity=identity, concept_probability=concept_probability,
                  perceptual_choices=choices,
                  # each name carries its network's content digest: a rebuilt CLIP or judge is another guide, so mappers cached
                  # for the old one are not reused and a resumed run refuses to mix them
                  names={"clip": f"faces-mini {which_clip} {clip_digest}",
                         "perceptual": described["classifier"], **{f"perceptual:{k}": v for k, v in described.items()},
                         "identity": f"faces-mini identity embedder {model_identity(embedder)[:16]}",
                         "gate_judge": f"faces-mini attribute classifier {model_identity(classifier)[:16]}"})
