"""Measure the faces-mini artefacts; writes ``quality.json`` next to them.

    python -m worlds.faces_mini.check [--out assets/faces-mini]

* judges on held-out renders: accuracy per head (attribute classifier, the second one, the identity head);
* the generator at truncation 1.0, judged by the attribute classifier on ``samples`` images: every binary
  attribute's and hair colour's rate against the renders', the share of samples confident (max softmax > 0.9)
  on each head and on every head at once, the rates among all-heads-confident samples, the two classifiers'
  agreement on the samples, and the Frechet distance in the classifier's feature space against renders next to
  its renders-vs-renders floor; the bars (``BARS``) are the rates and the per-head confidence of the heads an
  erasure is judged by;
* both tiny CLIPs: zero-shot accuracy on each binary attribute (the protocol's phrase vs its negation, e.g.
  "a smiling face" vs "a serious face").
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from erase.core.files import write_json_atomic
from eval.clip_alignment import CLIPAlignment
from eval.fid import frechet_distance
from eval.grid import save_png
from pipelines.stylegan import StyleGANPipeline

from .assets import ASSETS_DIR, load_faces_clip, load_judge
from .render import render_set
from .world import BINARY, CONCEPTS, HEADS, NEGATED_PHRASES, SEED_BASE, concept_rate_label

CHECK_RENDERS = 4000
# the generator's bars (issue 25): every attribute's rate within 8 points of the data's, and confident samples (max
# softmax > 0.9) on the heads an erasure is judged by. The all-heads share (compounding seven per-head shortfalls),
# the rates among all-heads-confident samples and the second classifier's agreement are reported, not bars.
BARS = {"rate_points": 8.0, "confident_heads": {"eyeglasses": 0.80, "smile": 0.80, "identity": 0.60}}
# each tiny CLIP must tell every binary attribute from its negation zero-shot this often (a guide blind to smile
# cannot erase it); the judges must name every head on held-out renders this often
CLIP_ZERO_SHOT_BAR = 0.85
JUDGE_ACCURACY_BAR = 0.98


@torch.no_grad()
def judge_all(judge, x: torch.Tensor, batch: int = 500) -> dict[str, torch.Tensor]:
    """Softmax probabilities per head of float images in [0, 1]."""
    out: dict[str, list] = {}
    for i in range(0, len(x), batch):
        for h, v in judge(x[i : i + batch]).items():
            out.setdefault(h, []).append(v.softmax(1))
    return {h: torch.cat(v) for h, v in out.items()}


@torch.no_grad()
def head_accuracy(judge, x: torch.Tensor, labels: dict) -> dict[str, float]:
    """An attribute classifier's accuracy on every head of float images in [0, 1] against their labels."""
    pred = judge_all(judge, x)
    return {h: float(pred[h].argmax(1).eq(labels[h]).float().mean()) for h in HEADS}


@torch.no_grad()
def identity_accuracy(embedder, x: torch.Tensor, labels: dict) -> float:
    """How often the identity embedder's own head names the identity (a named one or "anonymous")."""
    return float(embedder.identity_head(embedder.raw(x)).argmax(1).eq(labels["identity"]).float().mean())


def features(judge, x: torch.Tensor, batch: int = 500) -> np.ndarray:
    return torch.cat([judge.features(x[i : i + batch]) for i in range(0, len(x), batch)]).double().numpy()


def confident_mask(probs: dict[str, torch.Tensor], threshold: float = 0.9) -> torch.Tensor:
    """Samples whose every head's max softmax exceeds ``threshold``."""
    return torch.stack([p.max(1).values > threshold for p in probs.values()]).all(0)


def rates(pred: dict[str, torch.Tensor], mask: torch.Tensor | None = None) -> dict[str, float]:
    """Binary attributes' and hair colours' rates (in [0, 1]) among the images where ``mask`` holds."""
    sel = (lambda t: t[mask]) if mask is not None else (lambda t: t)
    out = {h: float(sel(pred[h]).eq(1).float().mean()) for h in BINARY}
    out.update(
        {f"hair_colour={k}": float(sel(pred["hair_colour"]).eq(k).float().mean()) for k in range(HEADS["hair_colour"])}
    )
    return out


def reference_features(
    judge, real: torch.Tensor | None = None, progress: bool = False, without: str | None = None
) -> np.ndarray:
    """``judge``'s features of ``CHECK_RENDERS`` held-out renders (``real`` instead, when given); with ``without``
    (a concept) only renders that lack it, so that a generator which no longer draws the concept is compared with
    the world it should now be."""
    if real is None:
        real = renders_without(without, CHECK_RENDERS, SEED_BASE["check"], progress)
    return features(judge, real)


def fd_floor(judge, real_features: np.ndarray, n: int, without: str | None = None) -> float:
    """The Frechet distance of ``n`` other renders to the reference: what a perfect generator scores with n samples."""
    return frechet_distance(features(judge, renders_without(without, n, SEED_BASE["fd"])), real_features)


def fd_reference(
    judge, n_floor: int, real: torch.Tensor | None = None, progress: bool = False, without: str | None = None
):
    """(fd, floor): ``fd(x)`` is the Frechet distance of images ``x`` to the reference renders
    (``reference_features``) in ``judge``'s feature space; ``floor`` is ``fd_floor`` for ``n_floor`` renders."""
    real_features = reference_features(judge, real, progress, without)

    def fd(x: torch.Tensor) -> float:
        return frechet_distance(features(judge, x), real_features)

    return fd, fd_floor(judge, real_features, n_floor, without)


def renders_without(concept: str | None, n: int, first_seed: int, progress: bool = False) -> torch.Tensor:
    """``n`` float renders in [0, 1] that lack ``concept`` (the first such seeds from ``first_seed`` on); with no
    concept, the renders of seeds first_seed .. first_seed + n - 1."""
    if concept is None:
        return render_set(n, first_seed, progress=progress)[0].float() / 255
    head, cls = concept_rate_label(concept)
    kept, seed = [], first_seed
    while sum(len(k) for k in kept) < n:
        chunk = max(256, n)
        images, labels = render_set(chunk, seed, progress=progress)
        kept.append(images[labels[head] != cls])
        seed += chunk
    return torch.cat(kept)[:n].float() / 255


def generator_samples(out: Path, n: int) -> torch.Tensor:
    pipe = StyleGANPipeline.from_pretrained(out / "generator")
    return pipe(seeds=list(range(n)), truncation_psi=1.0, output_type="pt")


def clip_zero_shot(which: str, folder: Path, x: torch.Tensor, labels: dict) -> dict[str, float]:
    model, tokenizer = load_faces_clip(which, folder)
    scorer = CLIPAlignment(model, tokenizer)
    img = scorer.image_features(x)
    out = {}
    for h in BINARY:
        phrase = CONCEPTS[h][1]
        txt = scorer.text_features([phrase, NEGATED_PHRASES[h]])
        pred = (img @ txt.T).argmax(1).eq(0).long()
        out[h] = float(pred.eq(labels[h]).float().mean())
    return out


def run_check(out: Path, work: Path | None = None, recipe=None, progress: bool = False) -> dict:
    n = recipe.check_samples if recipe is not None else 1000
    images, labels = render_set(CHECK_RENDERS, SEED_BASE["check"], progress=progress)
    x_real = images.float() / 255
    clf, clf_b, ident = (load_judge(k, out / k) for k in ("classifier", "classifier_b", "identity"))
    quality: dict = {"judges": {}}
    for name, judge in (("classifier", clf), ("classifier_b", clf_b)):
        quality["judges"][name] = head_accuracy(judge, x_real, labels)
    quality["judges"]["identity"] = identity_accuracy(ident, x_real, labels)
    worst = min(min(v.values()) if isinstance(v, dict) else v for v in quality["judges"].values())
    quality["judges"] = {**quality["judges"], "bar": JUDGE_ACCURACY_BAR, "meets": worst >= JUDGE_ACCURACY_BAR}
    data = rates({h: labels[h] for h in HEADS})
    quality["data_rates"] = data
    if (out / "generator" / "config.json").exists():
        x = generator_samples(out, n)
        probs = judge_all(clf, x)
        pred = {h: p.argmax(1) for h, p in probs.items()}
        confident = confident_mask(probs)
        per_head = {h: float((p.max(1).values > 0.9).float().mean()) for h, p in probs.items()}
        gen = rates(pred)
        conf_rates = rates(pred, confident)
        pred_b = {h: p.argmax(1) for h, p in judge_all(clf_b, x).items()}
        fd_of, floor = fd_reference(clf, n, x_real, progress)
        fd = fd_of(x)
        dev = {k: round(100 * abs(gen[k] - data[k]), 1) for k in gen}
        conf_dev = {k: round(100 * abs(conf_rates[k] - data[k]), 1) for k in gen}
        agreement = {h: float(pred[h].eq(pred_b[h]).float().mean()) for h in HEADS}
        quality["generator"] = {
            "samples": n,
            "truncation_psi": 1.0,
            "rates": gen,
            "deviation_points": dev,
            "confident": float(confident.float().mean()),
            "confident_per_head": per_head,
            "confident_rates": conf_rates,
            "confident_deviation_points": conf_dev,
            "judge_agreement": agreement,
            "fd": fd,
            "fd_floor_renders": floor,
            "bars": BARS,
            "meets": {
                "rates": max(dev.values()) <= BARS["rate_points"],
                "confident_heads": all(per_head[h] >= bar for h, bar in BARS["confident_heads"].items()),
            },
        }
    if all((out / c / "open_clip_config.json").exists() for c in ("clip-guide", "clip-judge")):
        zs = {
            c: clip_zero_shot(c, out / c, x_real[:1000], {h: labels[h][:1000] for h in BINARY})
            for c in ("clip-guide", "clip-judge")
        }
        quality["clip_zero_shot"] = {
            **zs,
            "bar": CLIP_ZERO_SHOT_BAR,
            "meets": min(min(v.values()) for v in zs.values()) >= CLIP_ZERO_SHOT_BAR,
        }
    write_json_atomic(out / "quality.json", quality)
    return quality


def sample_grid(out: Path, path: Path, n: int = 48, per_row: int = 16) -> Path:
    """Generator samples (seeds 0..n-1, truncation 1) above a row of renders, 3x nearest-neighbour upscaled."""
    from PIL import Image

    fake = generator_samples(out, n)
    real = render_set(per_row, SEED_BASE["check"])[0].float() / 255
    rows = [torch.cat(list(x.permute(0, 2, 3, 1)), dim=1) for x in (*fake.split(per_row), real)]
    arr = (torch.cat(rows, dim=0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return save_png(Image.fromarray(arr).resize((arr.shape[1] * 3, arr.shape[0] * 3), Image.NEAREST), path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="measure the faces-mini artefacts (writes quality.json)")
    p.add_argument("--out", default=str(ASSETS_DIR))
    p.add_argument("--grid", default=None, help="also write a PNG of generator samples above a row of renders")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(json.dumps(run_check(Path(args.out), progress=True), indent=2))
    if args.grid:
        print(f"sample grid: {sample_grid(Path(args.out), Path(args.grid))}")


if __name__ == "__main__":
    main()
