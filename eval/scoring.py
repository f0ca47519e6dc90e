"""Scoring an answer set, streamed: judges, axis metrics, FID and CLIP, one batch of PNGs at a time.

``prepare_judging`` loads everything that can fail on user input (judges, CLIP,
FID weights and reference folder) before any output is written;
``score_answer_set`` then reads the answer set ``batch_size`` images at a
time as uint8, converts one batch to float, and feeds every metric from it.
Peak memory is one batch of images plus the metrics' fixed-size states,
whatever the number of images.

FID (UnlearnCanvas's rule): the target concept's images are left out of both
sides, the generated answer set and the reference set, and the reference
statistics are cached under a key that names what was excluded. On canvas-mini
a second FID is computed in the tiny CLIP's image-embedding space.

Given the original model's answer set (``original=``), the same stream also
measures same-seed retain fidelity (``eval.fidelity``): each erased image is
compared with the original's image of the same prompt and seed.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from erase.core.data import cache_dir

from .answer_set import iter_answer_set, progress_bar, read_images
from .axis_metrics import check_axis_metrics, make_axis_metric
from .classifiers import batched_logits, load_judges
from .clip_alignment import CLIP_SCORE_SCALE, CLIPAlignment, ClipSums, load_open_clip
from .concept_accuracy import axis_scores
from .fid import (
    ClassifierFeatures,
    CLIPFeatures,
    FIDError,
    check_inception_weights,
    load_or_compute_reference,
    make_fid,
    module_fingerprint,
    stats_key,
)
from .fidelity import ClassifierFeatureDistance, RetainFidelity, load_lpips, psnr
from .images import image_files, load_images
from .original_answers import recorded_hashes
from .protocols import Protocol, ProtocolError
from .worlds import world_of


@dataclass
class Judging:
    """Everything that scores an answer set, loaded and checked before anything is generated."""

    protocol: Protocol
    targets: list[tuple[str, str]]
    judges: dict
    clip: object | None = None  # CLIPAlignment
    clip_name: str | None = None
    fid: str | None = None  # "world" (its real images, classifier features), "folder" (standard Inception) or None
    fid_note: str | None = None
    fid_reference: str | None = None
    fid_weights: str | None = None
    distance: object | None = None  # perceptual distance for retain fidelity (None: PSNR only)
    fidelity_note: str | None = None


def prepare_judging(protocol: Protocol, targets: list[tuple[str, str]], opt) -> Judging:
    """Check the targets and load the judges, CLIP and the FID set-up; raises EraseError on bad input."""
    if not targets:
        raise ProtocolError("give at least one target (--target NAME --kind style|object)")
    for name, kind in targets:
        protocol.check_target(name, kind)
    if protocol.template is None:
        from .latent_report import check_latent_request

        check_latent_request(protocol, targets, opt)
    check_axis_metrics(protocol)
    judges = load_judges(protocol, opt.style_classifier, opt.object_classifier, opt.device)
    judging = Judging(protocol, list(targets), judges)
    _prepare_clip(judging, opt)
    _prepare_fid(judging, opt)
    _prepare_fidelity(judging, opt)
    return judging


def _prepare_fidelity(judging: Judging, opt) -> None:
    """The perceptual distance of retain fidelity: LPIPS from local weights, or canvas-mini's
    classifier-feature distance."""
    if not getattr(opt, "fidelity", True):
        return

    if getattr(opt, "lpips_weights", None):
        judging.distance = load_lpips(opt.lpips_weights, getattr(opt, "lpips_net", "alex"), opt.device)
    elif getattr(world_of(judging.protocol), "judge_distance", False):
        judging.distance = ClassifierFeatureDistance(judging.judges["style"], judging.judges["object"])
    else:
        judging.fidelity_note = "perceptual distance needs --lpips-weights (local AlexNet / VGG weights); PSNR only"


def _prepare_clip(judging: Judging, opt) -> None:
    world = world_of(judging.protocol)
    if judging.protocol.template is None or not ((world is not None and world.clip is not None) or opt.clip):
        return

    if opt.clip:
        model, tok = load_open_clip(opt.clip, opt.clip_weights, opt.device)
        judging.clip_name = opt.clip
    else:
        model, tok, judging.clip_name = world.clip(opt.device)
    judging.clip = CLIPAlignment(model, tok)


def _prepare_fid(judging: Judging, opt) -> None:
    if not opt.fid:
        return
    world = world_of(judging.protocol)
    if world is not None and world.real_image is not None:
        if opt.fid_weights or opt.fid_reference:
            raise FIDError(
                f"--fid-weights / --fid-reference are for real models; {world.name}'s FID uses its "
                "classifier features (drop them)"
            )
        judging.fid = "world"
        return
    if not (opt.fid_weights and opt.fid_reference):
        judging.fid_note = "standard-Inception FID needs --fid-weights and --fid-reference (not given)"
        return

    check_inception_weights(opt.fid_weights)
    root = Path(opt.fid_reference)
    if not root.is_dir():
        raise FIDError(f"--fid-reference {root} is not a folder; pass a folder of real reference images")
    for name, _ in judging.targets:
        if not image_files(root, recursive=True, exclude=name):
            raise FIDError(
                f"no reference images under {root} besides the target {name!r}'s; pass "
                "--fid-reference FOLDER of real images"
            )
    judging.fid, judging.fid_reference, judging.fid_weights = "folder", str(root), str(opt.fid_weights)


# -- FID references -------------------------------------------------------------------------------
@dataclass
class FIDPlan:
    """One target's FID: the metric (reference statistics loaded) and how the reference was made."""

    metric: object
    report: dict


def _world_reference(judging: Judging, target: str, kind: str, batch_size: int, progress: bool) -> list[FIDPlan]:
    """The world's real images of every (style, object) pair but the target's, ``len(seeds)`` per pair (fresh
    renders on canvas-mini), in the classifiers' feature space and, with the world's CLIP loaded, in its embedding
    space (made once for both)."""
    protocol = judging.protocol
    spaces = [ClassifierFeatures(judging.judges["style"], judging.judges["object"])]
    if judging.clip is not None:
        spaces.append(CLIPFeatures(judging.clip, judging.clip_name))
    world = world_of(protocol)
    per_pair = len(protocol.seeds)
    jobs = [
        (s, o, k)
        for s, o in itertools.product(protocol.styles, protocol.objects)
        if (s if kind == "style" else o) != target
        for k in range(per_pair)
    ]
    excluded = {"axis": kind, "concept": target}
    reference = {**world.real_images, "per_pair": per_pair, "excluded": excluded}
    rendered: list[torch.Tensor] = []  # uint8 batches, kept for the second feature space (550 images: 7 MB)

    def batches():
        if rendered:
            yield from (b.float().div_(255.0) for b in rendered)
            return
        with progress_bar(len(jobs), "erase eval: FID reference", enabled=progress) as bar:
            for i in range(0, len(jobs), batch_size):
                arrays = [world.real_image({"style": s, "object": o}, k) for s, o, k in jobs[i : i + batch_size]]
                bar.update(len(arrays))
                rendered.append(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous())
                yield rendered[-1].float().div_(255.0)

    plans = []
    for feats in spaces:
        fid = make_fid(feats, image_size=protocol.resolution)
        hit = load_or_compute_reference(fid, stats_key(module_fingerprint(feats), reference), cache_dir(), batches)
        plans.append(
            FIDPlan(
                fid,
                {
                    "feature_space": feats.name,
                    "reference": (
                        f"fresh canvas-mini renders of every style x object pair except those of {kind} {target!r}, "
                        f"{per_pair} per pair (reference statistics cache {'hit' if hit else 'miss'})"
                    ),
                    "n_reference": len(jobs),
                    "excluded": excluded,
                    "generated": "answer set without the target concept's images",
                },
            )
        )
    return plans


def _folder_reference(judging: Judging, target: str, kind: str, batch_size: int, progress: bool) -> list[FIDPlan]:
    """Standard-Inception FID against a folder of real images; paths with a component named
    after the target are left out."""
    root, weights, r = Path(judging.fid_reference), Path(judging.fid_weights), judging.protocol.resolution
    files = image_files(root, recursive=True, exclude=target)
    fid = make_fid(weights=weights)
    excluded = {"axis": kind, "concept": target}
    reference = {
        "folder": str(root.resolve()),
        "files": len(files),
        "excluded": excluded,
        "resolution": r,
        "weights": str(weights.resolve()),
        "size": weights.stat().st_size,
    }

    def batches():
        with progress_bar(len(files), "erase eval: FID reference", enabled=progress) as bar:
            for i in range(0, len(files), batch_size):
                bar.update(len(files[i : i + batch_size]))
                yield load_images(files[i : i + batch_size], r)

    hit = load_or_compute_reference(fid, stats_key("inception-2048", reference), cache_dir(), batches)
    return [
        FIDPlan(
            fid,
            {
                "feature_space": "standard FID Inception pool3 (2048-d), torchmetrics",
                "reference": (
                    f"{len(files)} real images under {root} without '{target}' (cache {'hit' if hit else 'miss'})"
                ),
                "n_reference": len(files),
                "excluded": excluded,
                "generated": "answer set without the target concept's images",
            },
        )
    ]


# -- CLIP accumulators ------------------------------------------------------------------------------
def concept_text(target: str, kind: str) -> str:
    name = target.replace("_", " ")
    return f"An image in {name} style." if kind == "style" else f"A {name} image."


# -- the streamed scoring loop -------------------------------------------------------------------------
@dataclass
class Scores:
    metrics: dict  # axis name -> computed metric dict
    classes: dict  # axis name -> concept list
    per_target: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    joint_fidelity: dict | None = None  # the targets erased together: retain fidelity over images showing none of them


def score_answer_set(
    judging: Judging,
    folder: str | Path,
    *,
    batch_size: int = 64,
    progress: bool = True,
    original: str | Path | None = None,
    joint: bool = False,
) -> Scores:
    """Stream the answer set once and return the axis metrics and every target's UA / IRA / CRA, judge
    confidence, CLIP and FID; with ``original`` (the original model's answer set), retain fidelity too."""
    protocol, t0 = judging.protocol, time.time()
    metrics = {a.name: make_axis_metric(a) for a in protocol.axes}
    fids = _fid_plans(judging, batch_size, progress)
    clip_sums = _clip_sums(judging)
    axes = {a.name: a.concepts for a in protocol.axes}
    fidelity = [RetainFidelity(axes, name, kind) for name, kind in judging.targets] if original is not None else []
    if fidelity and joint:  # one more: the images that show none of the targets erased together
        fidelity.append(RetainFidelity(axes, *judging.targets[0], also=judging.targets[1:]))
    hashes = recorded_hashes(original) if original is not None else None
    t_ref, t_judge, t_fidelity = time.time() - t0, 0.0, 0.0
    with progress_bar(len(protocol.answer_set()), "erase eval: scoring", enabled=progress) as bar:
        for batch in iter_answer_set(protocol, folder, batch_size):
            t_judge += _score_batch(judging, batch, metrics, fids, clip_sums, batch_size)
            if fidelity:
                t_fidelity += _fidelity_batch(judging, batch, Path(original), fidelity, hashes)
            bar.update(len(batch.entries))
    results = {axis: m.compute() for axis, m in metrics.items()}
    per_target = [_target_entry(judging, results, i, clip_sums, fids, fidelity) for i in range(len(judging.targets))]
    seconds = {
        "reference": round(t_ref, 2),
        "classify": round(t_judge, 2),
        "fidelity": round(t_fidelity, 2),
        "score": round(time.time() - t0, 2),
    }
    joint_fidelity = _fidelity_entry(judging, fidelity[-1]) if fidelity and joint else None
    return Scores(
        results, {axis: protocol.concepts(axis) for axis in protocol.axis_names}, per_target, seconds, joint_fidelity
    )


def _fidelity_entry(judging: Judging, metric) -> dict:
    return {
        **metric.compute(),
        "psnr_unit": "dB (identical images count as 100)",
        "perceptual_space": judging.distance.name if judging.distance is not None else None,
        **({"note": judging.fidelity_note} if judging.fidelity_note else {}),
    }


def _target_entry(judging: Judging, results: dict, i: int, clip_sums: list, fids: list, fidelity: list) -> dict:
    """One target's numbers: UA / IRA / CRA, the judges' confidence beside them, CLIP, FID(s), retain fidelity."""
    protocol, (name, kind) = judging.protocol, judging.targets[i]
    nulls = {a.name: a.null_class for a in protocol.axes}
    accuracy = {axis: dict(zip(protocol.concepts(axis), r["accuracy"].tolist())) for axis, r in results.items()}
    entry = {"target": name, "kind": kind, **axis_scores(accuracy, name, kind, nulls)}
    if all("true_prob" in r for r in results.values()):
        prob = axis_scores(
            {axis: dict(zip(protocol.concepts(axis), r["true_prob"].tolist())) for axis, r in results.items()},
            name,
            kind,
            nulls,
        )
        entry["confidence"] = {
            "target": 1.0 - prob["ua"],
            "ira": prob["ira"],
            "cra": prob["cra"],
            "meaning": "mean softmax probability of the true class: of the target's images (target), of the other "
            "concepts of its axis (ira) and of the other axes (cra)",
        }
    if clip_sums:
        entry.update(_clip_entry(judging, clip_sums[i], name, kind))
    entry.update(_fid_entry(judging, fids[i][0] if fids[i] else None))
    if len(fids[i]) > 1:
        entry["fid_clip"] = _fid_entry(judging, fids[i][1])["fid"]
    if fidelity:
        entry["retain_fidelity"] = _fidelity_entry(judging, fidelity[i])
    return entry


def _fidelity_batch(judging: Judging, batch, original: Path, fidelity: list, hashes: dict | None) -> float:
    """Compare one batch of erased images with the original's images of the same entries (each checked against the
    cache's recorded hash as it is read); returns its seconds."""
    t0 = time.time()
    ref = read_images(original, batch.entries, judging.protocol.resolution, hashes)
    ref = torch.from_numpy(np.stack(ref)).permute(0, 3, 1, 2).float().div_(255.0)
    x = batch.float_images()
    p = psnr(ref, x)
    d = judging.distance(ref, x) if judging.distance is not None else torch.full((len(x),), float("nan"))
    for metric in fidelity:
        metric.update(p, d, batch.labels)
    return time.time() - t0


def _score_batch(judging: Judging, batch, metrics: dict, fids: list, clip_sums: list, batch_size: int) -> float:
    """Feed one batch (converted to float here, and only here) to every metric; returns the judges' seconds."""
    protocol, x = judging.protocol, batch.float_images()
    t0 = time.time()
    for axis in protocol.axis_names:
        metrics[axis].update(batched_logits(judging.judges[axis], x, batch_size), batch.labels[axis])
    seconds = time.time() - t0
    is_target = [batch.labels[kind] == protocol.concepts(kind).index(name) for name, kind in judging.targets]
    if clip_sums:
        feats = judging.clip.image_features(x)
        prompt_cos = (feats * judging.clip.text_features(batch.prompts)).sum(-1)
        for sums, mask in zip(clip_sums, is_target):
            sums.update(feats, prompt_cos, mask)
    for plans, mask in zip(fids, is_target):
        for plan in plans:
            if (~mask).any():
                plan.metric.update(x[~mask], real=False)  # the generated side leaves the target's images out
    return seconds


def _fid_entry(judging: Judging, plan: FIDPlan | None) -> dict:
    if plan is not None:
        fid = plan.metric
        return {
            "fid": {"value": float(fid.compute()), **plan.report, "n_generated": int(fid.fake_features_num_samples)}
        }
    if judging.fid_note:
        return {"fid": None, "fid_note": judging.fid_note}
    return {}


def _fid_plans(judging: Judging, batch_size: int, progress: bool) -> list[list[FIDPlan]]:
    """Per target, one FID plan per feature space (canvas-mini: classifier features, then CLIP embeddings)."""
    make = {"world": _world_reference, "folder": _folder_reference}.get(judging.fid)
    return [make(judging, name, kind, max(batch_size, 64), progress) if make else [] for name, kind in judging.targets]


def _clip_sums(judging: Judging) -> list[ClipSums]:
    if judging.clip is None:
        return []
    return [ClipSums(judging.clip.text_features([concept_text(name, kind)])[0]) for name, kind in judging.targets]


def _clip_entry(judging: Judging, sums: ClipSums, name: str, kind: str) -> dict:
    c = sums.compute()
    return {
        "clip_score": {
            "value": c["clip_score"],
            "scale": CLIP_SCORE_SCALE,
            "model": judging.clip_name,
            "images": "answer set without the target's images, each against its own prompt",
        },
        "concept_similarity": {
            "text": concept_text(name, kind),
            "target_images": c["target_images"],
            "other_images": c["other_images"],
            "model": judging.clip_name,
            "scale": "mean cosine similarity (-1 to 1), not x100",
        },
    }
