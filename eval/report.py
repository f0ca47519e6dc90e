"""Evaluate a (possibly erased) pipeline on a protocol and write report.json, report.md and a grid.

    evaluate(pipe, protocol, targets=[("Watercolor", "style")], out_dir="runs/eval", model_id="...")

The answer set is generated once per output folder (resumable) and scored for
every target given. An output folder belongs to one run (model, patch,
protocol); pointing another run at it is refused, so no report is ever
overwritten by a different experiment.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .answer_set import generate_answer_set, load_answer_set
from .classifiers import batched_logits, load_judges
from .concept_accuracy import PHOTO_RULE, ConceptAccuracy, macro_average, unlearning_scores
from .protocols import Protocol, ProtocolError

CACHE_DIR = Path(os.environ.get("ERASEKIT_CACHE", Path.home() / ".cache" / "erasekit"))


class OutputFolderError(RuntimeError):
    """The output folder belongs to another run."""


@dataclass
class EvalOptions:
    batch_size: int = 64
    fid: bool = True
    clip: str | None = None  # open_clip spec; None = the protocol's default (tiny CLIP on canvas-mini)
    clip_weights: str | None = None
    fid_weights: str | None = None
    fid_reference: str | None = None  # folder of real images (unlearncanvas)
    style_classifier: str | None = None
    object_classifier: str | None = None
    device: str = "cpu"
    progress: bool = True
    grid: bool = True


def versions() -> dict:
    import diffusers
    import torchmetrics
    import transformers

    from erase import __version__

    return {
        "erasekit": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torchmetrics": torchmetrics.__version__,
        "python": platform.python_version(),
    }


def check_output_folder(out_dir: Path, identity: dict) -> None:
    """Raise if the folder holds another run's results (run.json differs, or a report without run.json)."""
    run_file = out_dir / "run.json"
    if run_file.exists():
        try:
            existing = json.loads(run_file.read_text())
        except json.JSONDecodeError:
            existing = None
        if existing != identity:
            raise OutputFolderError(f"output folder {out_dir} holds another run's results; choose a new --out folder")
    elif (out_dir / "report.json").exists():
        raise OutputFolderError(f"output folder {out_dir} holds a report from another run; choose a new --out folder")


def claim_output_folder(out_dir: Path, identity: dict) -> None:
    """Refuse a folder of another run; otherwise (re)claim it by writing run.json."""
    check_output_folder(out_dir, identity)
    if (out_dir / "run.json").exists():
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".run.json.tmp"
    tmp.write_text(json.dumps(identity, indent=2))
    os.replace(tmp, out_dir / "run.json")


def run_identity(model_id: str, patch: str | None, protocol: Protocol) -> dict:
    return {"model": str(model_id), "patch": patch, "patch_sha256": _patch_sha(patch), "protocol": protocol.to_dict()}


def _patch_sha(patch: str | None) -> str | None:
    """Hash of the patch file, so a folder evaluated with one patch is never reused for another."""
    if patch is None:
        return None
    f = Path(patch) / "erasure_patch.safetensors"
    if not f.exists():
        return None
    st = f.stat()
    return _file_sha256(str(f.resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=16)
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:
    """SHA-256 of a file, computed once per (path, modification time, size): the CLI pre-check and the run share it."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _update_generated(fid, images: torch.Tensor, batch_size: int) -> None:
    for i in range(0, len(images), batch_size):
        fid.update(images[i : i + batch_size], real=False)


def _fid_canvas_mini(protocol: Protocol, judges, images, keep: torch.Tensor, batch_size: int) -> dict:
    from eval.canvas_mini.data import render_set

    from .fid import ClassifierFeatures, load_or_compute_reference, make_fid, module_fingerprint, stats_key

    feats = ClassifierFeatures(judges["style"], judges["object"])
    fid = make_fid(feats, image_size=protocol.resolution)
    per_pair = len(protocol.seeds)
    reference = {"world": "canvas-mini renders", "seed_range": "fid", "per_pair": per_pair}

    def real_images():
        rs = render_set("fid", per_pair)
        return rs.float_images()

    key = stats_key(module_fingerprint(feats), reference)
    hit = load_or_compute_reference(fid, key, CACHE_DIR, real_images, batch_size)
    _update_generated(fid, images[keep], batch_size)
    return {
        "value": float(fid.compute()),
        "feature_space": feats.name,
        "reference": "fresh canvas-mini renders, all style x object pairs, "
        f"{per_pair} per pair (reference statistics cache {'hit' if hit else 'miss'})",
        "generated": "answer set without the target concept's images",
        "n_generated": int(keep.sum()),
    }


def _fid_folder(protocol: Protocol, opt: "EvalOptions", target: str, images, keep: torch.Tensor, batch_size: int = 64) -> dict:
    """Standard-Inception FID against a folder of real images (path components naming the target are left out)."""
    from .fid import load_or_compute_reference, make_fid, stats_key
    from .images import image_files, load_images

    root = Path(opt.fid_reference)
    files = image_files(root, recursive=True, exclude=target)
    if not files:
        raise FileNotFoundError(f"no reference images under {root} (besides the target's); pass --fid-reference FOLDER of real images")
    fid = make_fid(weights=opt.fid_weights)
    r = protocol.resolution
    reference = {"folder": str(root.resolve()), "files": len(files), "excluded": target, "resolution": r,
                 "weights": str(Path(opt.fid_weights).resolve()), "size": Path(opt.fid_weights).stat().st_size}

    hit = load_or_compute_reference(fid, stats_key("inception-2048", reference), CACHE_DIR, lambda: load_images(files, r), batch_size)
    _update_generated(fid, images[keep], batch_size)
    return {"value": float(fid.compute()), "feature_space": "standard FID Inception pool3 (2048-d), torchmetrics",
            "reference": f"{len(files)} real images under {root} without '{target}' (cache {'hit' if hit else 'miss'})",
            "generated": "answer set without the target concept's images", "n_generated": int(keep.sum())}


def _concept_text(target: str, kind: str) -> str:
    name = target.replace("_", " ")
    return f"An image in {name} style." if kind == "style" else f"A {name} image."


def evaluate(
    pipe,
    protocol: Protocol,
    targets: list[tuple[str, str]],
    out_dir: str | Path,
    *,
    model_id: str,
    patch: str | None = None,
    options: EvalOptions | None = None,
) -> dict:
    """Generate (or reuse) the answer set, score every target, write the report; returns the report dict."""
    opt = options or EvalOptions()
    if not targets:
        raise ProtocolError("give at least one target (--target NAME --kind style|object)")
    for name, kind in targets:
        protocol.check_target(name, kind)
    out_dir = Path(out_dir)
    claim_output_folder(out_dir, run_identity(model_id, patch, protocol))
    t0 = time.time()

    judges = load_judges(protocol, opt.style_classifier, opt.object_classifier, opt.device)
    gen_stats = generate_answer_set(pipe, protocol, out_dir / "images", batch_size=opt.batch_size, progress=opt.progress)
    t_gen = time.time() - t0
    images, s_idx, o_idx = load_answer_set(protocol, out_dir / "images")

    t1 = time.time()
    metrics = {"style": ConceptAccuracy(protocol.styles), "object": ConceptAccuracy(protocol.objects)}
    metrics["style"].update(batched_logits(judges["style"], images), s_idx)
    metrics["object"].update(batched_logits(judges["object"], images), o_idx)
    results = {k: m.compute() for k, m in metrics.items()}
    t_cls = time.time() - t1
    per_concept = {
        kind: {
            name: {"accuracy": float(a), "true_prob": float(p), "n": int(n)}
            for name, a, p, n in zip(metrics[kind].classes, r["accuracy"].tolist(), r["true_prob"].tolist(), r["count"].tolist())
        }
        for kind, r in results.items()
    }
    acc = {kind: {n: v["accuracy"] for n, v in d.items()} for kind, d in per_concept.items()}

    clip = None
    if protocol.classifiers == "canvas-mini" or opt.clip:
        from .clip_alignment import CLIPAlignment, load_open_clip

        if opt.clip:
            model, tok = load_open_clip(opt.clip, opt.clip_weights, opt.device)
            clip_name = opt.clip
        else:
            from eval.canvas_mini import CLIP_DIR, load_clip

            model, tok = load_clip()
            clip_name = f"canvas-mini tiny open_clip ({CLIP_DIR.name})"
        clip = CLIPAlignment(model, tok)
        img_feats = clip.image_features(images)
        prompts = [protocol.prompt(s, o) for s, o, _ in protocol.answer_set()]
        prompt_cos = (img_feats * clip.text_features(prompts)).sum(-1)

    per_target = []
    for name, kind in targets:
        scores = unlearning_scores(acc["style"], acc["object"], name, kind, protocol.photo_class)
        idx = protocol.concepts(kind).index(name)
        is_target = (s_idx if kind == "style" else o_idx) == idx
        entry = {"target": name, "kind": kind, **scores}
        if clip is not None:
            entry["clip_score"] = {"value": float((100 * prompt_cos[~is_target].clamp(min=0)).mean()), "model": clip_name,
                                   "images": "answer set without the target's images, each against its own prompt"}
            concept = clip.text_features([_concept_text(name, kind)])[0]
            entry["concept_similarity"] = {"text": _concept_text(name, kind), "target_images": float((img_feats[is_target] @ concept).mean()),
                                           "other_images": float((img_feats[~is_target] @ concept).mean()), "model": clip_name}
        if opt.fid and protocol.classifiers == "canvas-mini":
            entry["fid"] = _fid_canvas_mini(protocol, judges, images, ~is_target, 256)
        elif opt.fid and opt.fid_weights and opt.fid_reference:
            entry["fid"] = _fid_folder(protocol, opt, name, images, ~is_target)
        elif opt.fid:
            entry["fid"] = None
            entry["fid_note"] = "standard-Inception FID needs --fid-weights and --fid-reference (not given)"
        per_target.append(entry)

    first = per_target[0]
    report = {
        "protocol": protocol.to_dict(),
        "model": str(model_id),
        "patch": patch,
        "target": first["target"],
        "kind": first["kind"],
        "ua": first["ua"],
        "ira": first["ira"],
        "cra": first["cra"],
        "targets": per_target,
        "macro": macro_average(per_target),
        "style_accuracy": results["style"]["overall"],
        "object_accuracy": results["object"]["overall"],
        "per_concept": per_concept,
        "confusion": {k: {"classes": metrics[k].classes, "matrix": r["confusion"].tolist()} for k, r in results.items()},
        "fid": first.get("fid"),
        "clip_score": first.get("clip_score"),
        "photo_class_rule": PHOTO_RULE,
        "deviations": list(protocol.deviations),
        "images": gen_stats,
        "versions": versions(),
        "seconds": {"generate": round(t_gen, 1), "classify": round(t_cls, 2), "total": round(time.time() - t0, 1)},
    }
    if opt.grid:
        from .grid import image_grid, save_png

        seed = protocol.seeds[0]
        by_key = {(s, o, sd): i for i, (s, o, sd) in enumerate(protocol.answer_set())}
        cells = [[(images[by_key[(s, o, seed)]].permute(1, 2, 0) * 255).round().byte().numpy() for o in protocol.objects] for s in protocol.styles]
        save_png(image_grid(cells, protocol.styles, protocol.objects, title=f"{model_id} seed {seed}"), out_dir / "grid.png")
        report["grid"] = "grid.png"
    _write_json(out_dir / "report.json", report)
    tmp = out_dir / ".report.md.tmp"
    tmp.write_text(render_markdown(report))
    os.replace(tmp, out_dir / "report.md")
    return report


def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}"


def render_markdown(report: dict) -> str:
    p = report["protocol"]
    lines = [
        f"# Evaluation report: {report['model']}" + (f" + patch {report['patch']}" if report["patch"] else ""),
        "",
        f"Protocol **{p['name']}**: {len(p['styles'])} styles x {len(p['objects'])} objects x {len(p['seeds'])} seeds, "
        f"{p['sampler']} {p['steps']} steps, guidance {p['guidance']}, {p['resolution']} px.",
        "",
        "| target | kind | UA | IRA | CRA | FID (feature space) | CLIP score |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in report["targets"]:
        fid = t.get("fid")
        fid_s = f"{fid['value']:.2f} ({fid['feature_space']})" if fid else "n/a"
        clip_s = f"{t['clip_score']['value']:.2f}" if t.get("clip_score") else "n/a"
        lines.append(f"| {t['target']} | {t['kind']} | {_pct(t['ua'])} | {_pct(t['ira'])} | {_pct(t['cra'])} | {fid_s} | {clip_s} |")
    m = report["macro"]
    if len(report["targets"]) > 1:
        lines.append(f"| macro | | {_pct(m['ua'])} | {_pct(m['ira'])} | {_pct(m['cra'])} | | |")
    lines += [
        "",
        f"Overall style accuracy {_pct(report['style_accuracy'])}%, object accuracy {_pct(report['object_accuracy'])}%.",
        "",
        "## Per-concept accuracy (%)",
        "",
        "| style | acc | true-class prob |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {_pct(v['accuracy'])} | {v['true_prob']:.3f} |" for n, v in report["per_concept"]["style"].items()]
    lines += ["", "| object | acc | true-class prob |", "|---|---|---|"]
    lines += [f"| {n} | {_pct(v['accuracy'])} | {v['true_prob']:.3f} |" for n, v in report["per_concept"]["object"].items()]
    lines += ["", f"Photo class: {report['photo_class_rule']}.", ""]
    if report["deviations"]:
        lines += ["## Deviations from the protocol", ""] + [f"- {d}" for d in report["deviations"]] + [""]
    s = report["seconds"]
    lines += [f"Time: generation {s['generate']} s, classification {s['classify']} s, total {s['total']} s.", ""]
    if report.get("grid"):
        lines += [f"![grid]({report['grid']})", ""]
    return "\n".join(lines)
