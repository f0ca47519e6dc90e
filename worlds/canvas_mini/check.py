"""Measure the shipped canvas-mini artefacts against their acceptance bars.

    python -m worlds.canvas_mini.check [--assets assets/canvas-mini] [--seeds 5]

Writes ``quality.json`` into the assets folder (unless ``--no-write``) and
exits 1 when a bar is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from erase.core.files import write_json_atomic
from eval.clip_alignment import clip_preprocess
from eval.generate import generate, to_tensor

from .assets import ASSETS_DIR, load_classifier, load_clip
from .data import SEED_BASE, render_set
from .world import OBJECTS, STYLES, caption

BARS = {
    "classifier_style_renders": 0.97,
    "classifier_object_renders": 0.97,
    "generation_style": 0.90,
    "generation_object": 0.90,
    "classifier_pair_agreement": 0.95,
    "clip_retrieval_top1": 0.80,
}
GENERATION = {"steps": 50, "guidance": 7.5, "seeds": 5}


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Argmax predictions for float images (N, 3, H, W) in [0, 1]."""
    return torch.cat([model(images[i : i + batch]).argmax(1) for i in range(0, len(images), batch)])


@torch.no_grad()
def clip_retrieval(model, tokenizer, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 image-to-caption retrieval over all style x object captions."""
    import torch.nn.functional as F

    captions = [caption(s, o) for s in STYLES for o in OBJECTS]
    txt = F.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    img = F.normalize(model.encode_image(clip_preprocess(model, images)), dim=-1)
    return (img @ txt.T).argmax(1).eq(labels).float().mean().item()


def run_check(
    assets: str | Path = ASSETS_DIR,
    seeds: int = GENERATION["seeds"],
    per_pair: int = 10,
    write: bool = True,
    progress: bool = True,
) -> dict:
    from diffusers import StableDiffusionPipeline

    assets = Path(assets)
    t0 = time.time()
    clf = {k: load_classifier(k, assets / "classifiers") for k in ("style", "object")}
    fresh = render_set("check", per_pair, progress=progress)
    x = fresh.float_images()
    q: dict = {"renders": len(fresh), "render_seeds_from": SEED_BASE["check"]}
    q["classifier_style_renders"] = predict(clf["style"], x).eq(fresh.style).float().mean().item()
    q["classifier_object_renders"] = predict(clf["object"], x).eq(fresh.obj).float().mean().item()

    pipe = StableDiffusionPipeline.from_pretrained(str(assets / "pipeline"))
    with torch.no_grad():  # the VAE's ceiling: fresh renders sent through it and back
        vae = pipe.vae
        rec = vae.decode(vae.encode(x * 2 - 1).latent_dist.mode()).sample
        rec = ((rec.clamp(-1, 1) + 1) / 2 * 255).round() / 255
    q["vae_roundtrip_style"] = predict(clf["style"], rec).eq(fresh.style).float().mean().item()
    q["vae_roundtrip_object"] = predict(clf["object"], rec).eq(fresh.obj).float().mean().item()

    pairs = [(si, oi) for si in range(len(STYLES)) for oi in range(len(OBJECTS))]
    prompts = [caption(STYLES[si], OBJECTS[oi]) for si, oi in pairs for _ in range(seeds)]
    seed_list = [k for _ in pairs for k in range(seeds)]
    t_gen = time.time()
    images = to_tensor(
        generate(
            pipe, prompts, seed_list, steps=GENERATION["steps"], guidance=GENERATION["guidance"], progress=progress
        )
    )
    q["generation_seconds"] = round(time.time() - t_gen, 1)
    s_true = torch.tensor([si for si, _ in pairs for _ in range(seeds)])
    o_true = torch.tensor([oi for _, oi in pairs for _ in range(seeds)])
    s_pred, o_pred = predict(clf["style"], images), predict(clf["object"], images)
    q["generations"] = len(images)
    q["generation_settings"] = {**GENERATION, "seeds": seeds, "prompt": "A {object} image in {style} style."}
    q["generation_style"] = s_pred.eq(s_true).float().mean().item()
    q["generation_object"] = o_pred.eq(o_true).float().mean().item()
    q["generation_style_per_style"] = {
        STYLES[i]: s_pred[s_true == i].eq(i).float().mean().item() for i in range(len(STYLES))
    }
    q["generation_object_per_object"] = {
        OBJECTS[i]: o_pred[o_true == i].eq(i).float().mean().item() for i in range(len(OBJECTS))
    }

    b_dir = assets / "classifiers_b"
    if (b_dir / "style.json").exists():
        s_b = predict(load_classifier("style", b_dir), images)
        o_b = predict(load_classifier("object", b_dir), images)
        q["classifier_pair_agreement_style"] = s_b.eq(s_pred).float().mean().item()
        q["classifier_pair_agreement_object"] = o_b.eq(o_pred).float().mean().item()
        q["classifier_pair_agreement"] = min(
            q["classifier_pair_agreement_style"], q["classifier_pair_agreement_object"]
        )
        q["classifier_b_generation_style"] = s_b.eq(s_true).float().mean().item()
        q["classifier_b_generation_object"] = o_b.eq(o_true).float().mean().item()

    if (assets / "clip" / "open_clip_config.json").exists():
        model, tokenizer = load_clip(assets / "clip")
        q["clip_retrieval_top1"] = clip_retrieval(model, tokenizer, x, fresh.style * len(OBJECTS) + fresh.obj)

    q["passed"] = {k: q[k] >= bar for k, bar in BARS.items() if k in q}
    q["check_seconds"] = round(time.time() - t0, 1)
    if write:
        write_json_atomic(assets / "quality.json", q)
    return q


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Measure the canvas-mini artefacts against their acceptance bars.")
    p.add_argument("--assets", default=str(ASSETS_DIR))
    p.add_argument("--seeds", type=int, default=GENERATION["seeds"], help="seeds per prompt for the generation check")
    p.add_argument("--no-write", action="store_true", help="do not update quality.json")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    q = run_check(args.assets, seeds=args.seeds, write=not args.no_write)
    for k, bar in BARS.items():
        if k in q:
            print(f"{k:32s} {q[k] * 100:6.2f}%  (bar {bar * 100:.0f}%)  {'ok' if q[k] >= bar else 'FAIL'}")
    for k in ("vae_roundtrip_style", "vae_roundtrip_object"):
        print(f"{k:32s} {q[k] * 100:6.2f}%")
    return 0 if all(q["passed"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
