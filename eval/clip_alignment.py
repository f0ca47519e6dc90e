"""CLIP alignment with open_clip: image-prompt CLIP score and similarity to an erased concept.

torchmetrics' CLIPScore does not work with transformers 5 and only takes hub
names, so this computes the same quantity with open_clip directly:
CLIP score = 100 * max(cos(image, text), 0), averaged over images (the
definition of Hessel et al., as torchmetrics uses it).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from erase.core.errors import EraseError

# How the CLIP score is scaled, stated next to every value in a report.
CLIP_SCORE_SCALE = "100 * max(cosine(image, prompt), 0): cosine x 100, negatives clamped to 0 (range 0-100)"


def clip_preprocess(model, images: torch.Tensor) -> torch.Tensor:
    """Float images (N, 3, H, W) in [0, 1] -> the model's input size and normalisation."""
    import open_clip

    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    if tuple(images.shape[-2:]) != tuple(size):
        images = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


class CLIPError(EraseError):
    """The CLIP model for alignment scores cannot be loaded as given."""


def load_open_clip(spec: str, weights: str | Path | None = None, device: str = "cpu"):
    """Load an open_clip model offline.

    ``spec`` is ``local-dir:FOLDER`` (open_clip_config.json + open_clip_model.safetensors), a folder path
    (same thing), or an architecture name such as ``ViT-B-32`` with ``weights`` a local checkpoint file
    (read by open_clip with ``weights_only=True``).
    """
    import open_clip

    if Path(spec).is_dir():
        spec = f"local-dir:{spec}"
    if spec.startswith("local-dir:"):
        folder = Path(spec[len("local-dir:") :])
        if not (folder / "open_clip_config.json").exists():
            raise CLIPError(f"{folder} holds no open_clip_config.json; point --clip at an open_clip model folder")
        pretrained = None
    else:
        if spec not in open_clip.list_models():
            raise CLIPError(
                f"unknown open_clip architecture {spec!r} for --clip; pass a local-dir:FOLDER or "
                "one of open_clip.list_models()"
            )
        if weights is None:
            raise CLIPError(
                f"CLIP architecture {spec!r} needs local weights (--clip-weights FILE); nothing is downloaded"
            )
        if not Path(weights).is_file():
            raise CLIPError(f"CLIP weights not found at {weights}; pass an existing file with --clip-weights")
        pretrained = str(weights)
    try:
        model, _, _ = open_clip.create_model_and_transforms(spec, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(spec)
    except Exception as e:  # noqa: BLE001 - open_clip raises many kinds for a bad file; the user gets one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CLIPError(
            f"cannot load CLIP model {spec!r}" + (f" with weights {weights}" if weights else "") + f": {first[:200]}"
        ) from e
    return model.eval(), tokenizer


class CLIPAlignment:
    """Batched open_clip scoring: image embeddings computed once, compared with any texts."""

    def __init__(self, model, tokenizer, batch_size: int = 256):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        dev = next(self.model.parameters()).device
        feats = [
            self.model.encode_image(clip_preprocess(self.model, images[i : i + self.batch_size].to(dev))).float()
            for i in range(0, len(images), self.batch_size)
        ]
        return F.normalize(torch.cat(feats), dim=-1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        dev = next(self.model.parameters()).device
        unique = sorted(set(texts))
        emb = F.normalize(self.model.encode_text(self.tokenizer(unique).to(dev)).float(), dim=-1)
        index = {t: i for i, t in enumerate(unique)}
        return emb[[index[t] for t in texts]]

    def cosine(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Per-image cosine similarity to its paired text (len(texts) == len(images))."""
        if len(texts) != len(images):
            raise ValueError(f"{len(images)} images but {len(texts)} texts; pass one text per image")
        return (self.image_features(images) * self.text_features(texts).to(images.device)).sum(-1)

    def clip_score(self, images: torch.Tensor, prompts: list[str]) -> float:
        """Mean of 100 * max(cos, 0) between each image and its prompt (higher = better aligned)."""
        return (100 * self.cosine(images, prompts).clamp(min=0)).mean().item()

    def concept_similarity(self, images: torch.Tensor, concept_text: str) -> float:
        """Mean cosine similarity of images to one concept text (lower after erasure = concept gone)."""
        return self.cosine(images, [concept_text] * len(images)).mean().item()


class ClipSums(Metric):
    """CLIP alignment of one erased target over a streamed answer set (a torchmetrics Metric, summed across
    processes): the CLIP score of the images that are not the target's, and the mean cosine of the target's and
    of the other images to the target concept's text feature ``concept``.

    ``update(feats, prompt_cos, is_target)``: unit image features (N, D), each image's cosine to its own prompt
    (N,), and which images are the target's (N,). ``compute()`` -> {"clip_score", "target_images",
    "other_images"} (NaN where no image counted). Sums are float64, as the report has always added them.
    """

    full_state_update = False

    def __init__(self, concept: torch.Tensor, **kwargs):
        super().__init__(**kwargs)
        self.concept = concept
        for name in ("score_sum", "n_other", "sim_target", "n_target", "sim_other"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, feats: torch.Tensor, prompt_cos: torch.Tensor, is_target: torch.Tensor) -> None:
        sim = feats @ self.concept.to(feats.device)
        other = ~is_target
        self.score_sum += (100 * prompt_cos[other].clamp(min=0)).sum().double()
        self.n_other += other.sum().double()
        self.sim_target += sim[is_target].sum().double()
        self.n_target += is_target.sum().double()
        self.sim_other += sim[other].sum().double()

    def compute(self) -> dict[str, float]:
        def mean(total, n):
            return float(total / n) if n > 0 else float("nan")

        return {
            "clip_score": mean(self.score_sum, self.n_other),
            "target_images": mean(self.sim_target, self.n_target),
            "other_images": mean(self.sim_other, self.n_other),
        }
