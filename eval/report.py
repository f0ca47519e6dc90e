"""Evaluate a (possibly erased) pipeline on a protocol and write report.json, report.md and a grid.

    evaluate(pipe, protocol, targets=[("Watercolor", "style")], out_dir="runs/eval", model_id="...")

The answer set is generated once per output folder (resumable, with the
protocol's sampler) and scored for every target given, streamed a batch of
PNGs at a time (``eval.scoring``). An output folder belongs to one run (model,
patch, protocol); pointing another run at it, or at a folder holding files an
evaluation did not write, is refused, so nothing is ever overwritten by a
different experiment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from erase.core.files import hold_folder, write_json_atomic, write_text_atomic
from erase.core.patch import applied_patches

from .answer_set import check_answer_set, generate_answer_set, read_images
from .concept_accuracy import list_scores, macro_average, null_class_rule
from .grid import image_grid, save_png
from .original_answers import original_answer_set
from .protocols import Protocol, ProtocolError
from .run_folder import (  # noqa: F401 (re-exported)
    OutputFolderError,
    check_output_folder,
    claim_output_folder,
    run_identity,
    versions,
)
from .scoring import Judging, prepare_judging, score_answer_set


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
    templates: list[str] | None = None  # other prompt templates, evaluated separately (report["ood"])
    fidelity: bool = True  # same-seed retain fidelity against the original model, when a patch is applied
    lpips_weights: str | None = None  # real models: local AlexNet / VGG weights for LPIPS
    lpips_net: str = "alex"
    attack: str | None = None  # an attack of eval.attacks run on every target: its ASR beside UA (report["attack"])
    attack_prompts: int | None = None  # attack only the first N prompts of each target (recorded)
    attack_options: dict | None = None  # the attack's option overrides
    joint: bool = (
        False  # the targets were erased together by one patch: ua / ira / cra / h of the list at the top level
    )


def evaluate(
    pipe,
    protocol: Protocol,
    targets: list[tuple[str, str]],
    out_dir: str | Path,
    *,
    model_id: str,
    patch: str | None = None,
    options: EvalOptions | None = None,
    judging: Judging | None = None,
) -> dict:
    """Generate (or reuse) the answer set, score every target, write the report; returns the report dict.

    Judges, CLIP and the FID set-up are loaded (``prepare_judging``, or passed in as ``judging``) before
    the output folder is claimed, so bad input never leaves a folder behind.
    """
    opt = options or EvalOptions()
    if opt.batch_size < 1:
        raise ProtocolError(f"batch size must be at least 1, got {opt.batch_size}")
    judging = judging or prepare_judging(protocol, targets, opt)
    if judging.protocol != protocol or judging.targets != list(targets):
        raise ProtocolError("the judging passed to evaluate() was prepared for another protocol or other targets")
    out_dir = Path(out_dir)
    if protocol.template is None:  # a GAN world: its answers rendered from latent seeds, its metrics
        from .latent_report import evaluate_latent

        return evaluate_latent(
            pipe, protocol, targets, out_dir, model_id=model_id, patch=patch, opt=opt, judging=judging
        )
    with hold_folder(
        out_dir, "erase eval"
    ):  # two evaluations into one folder: the second is refused, naming the first
        claim_output_folder(out_dir, run_identity(model_id, patch, protocol))
        return _evaluate_claimed(
            pipe, protocol, targets, out_dir, model_id=model_id, patch=patch, opt=opt, judging=judging
        )


def _evaluate_claimed(
    pipe,
    protocol: Protocol,
    targets,
    out_dir: Path,
    *,
    model_id: str,
    patch: str | None,
    opt: EvalOptions,
    judging: Judging,
) -> dict:
    t0 = time.time()
    original, fidelity_note = _original_for_fidelity(pipe, protocol, opt)
    t_original = time.time() - t0
    if original is None and opt.fidelity:  # the unpatched model: its cached answer set, when there is one
        from .original_answers import reuse_original

        reuse_original(pipe, protocol, out_dir / "images")
    gen_stats = generate_answer_set(
        pipe, protocol, out_dir / "images", batch_size=opt.batch_size, progress=opt.progress
    )
    t_gen = time.time() - t0 - t_original
    check_answer_set(protocol, out_dir / "images")
    if opt.fidelity and original is None:
        from .original_answers import remember_original

        remember_original(pipe, protocol, out_dir / "images")
    scores = score_answer_set(
        judging,
        out_dir / "images",
        batch_size=opt.batch_size,
        progress=opt.progress,
        original=original,
        joint=opt.joint,
    )
    report = build_report(
        protocol,
        scores,
        model_id=model_id,
        patch=patch,
        gen_stats=gen_stats,
        seconds={
            "original": round(t_original, 1),
            "generate": round(t_gen, 1),
            **scores.seconds,
            "total": round(time.time() - t0, 1),
        },
    )
    if fidelity_note:
        report["retain_fidelity"] = None
        report["retain_fidelity_note"] = fidelity_note
    if opt.joint:
        report.update(joint_block(protocol, report, targets, scores.joint_fidelity))
    if opt.grid and len(protocol.axes) == 2:
        report["grid"] = _write_grid(protocol, out_dir, model_id)
    if opt.templates:
        report["ood"] = evaluate_templates(
            pipe, protocol, targets, out_dir / "ood", opt.templates, model_id=model_id, patch=patch, options=opt
        )
    if opt.attack:
        from .attacks.run import attack_block

        report["attack"] = attack_block(
            pipe, protocol, targets, judging.judges, out_dir, opt, model_id=model_id, patch=patch
        )
    write_json_atomic(out_dir / "report.json", report)
    write_text_atomic(out_dir / "report.md", render_markdown(report))
    return report


def _original_for_fidelity(pipe, protocol: Protocol, opt: EvalOptions) -> tuple[Path | None, str | None]:
    """The original model's answer set when ``pipe`` carries a patch (generated once,
    cached), else why there is none."""
    if not opt.fidelity:
        return None, "skipped (--no-fidelity)"
    if not applied_patches(pipe):
        return (
            None,
            "the evaluated model carries no patch: it is the original (its answer set is cached for later patches)",
        )

    return original_answer_set(pipe, protocol, batch_size=opt.batch_size, progress=opt.progress), None


def evaluate_templates(
    pipe,
    protocol: Protocol,
    targets: list[tuple[str, str]],
    out_dir: Path,
    templates: list[str],
    *,
    model_id: str,
    patch: str | None,
    options: EvalOptions,
) -> dict:
    """UA / IRA / CRA with each of ``templates`` instead of the protocol's (out-of-distribution prompts).

    Each template is a protocol override (recorded as a deviation in its own report under
    ``out_dir/template-K``); accuracy only (no FID, CLIP or grid). Returns the per-template scores and
    their mean, with the same keys as the main report (first target at the top level, all in ``targets``).
    """
    sub_opt = replace(options, fid=False, grid=False, templates=None, fidelity=False)
    keys = ("ua", "ira", "cra")
    per_template = []
    for k, template in enumerate(templates):
        sub = protocol.with_overrides(template=template)
        r = evaluate(pipe, sub, targets, out_dir / f"template-{k}", model_id=model_id, patch=patch, options=sub_opt)
        per_target = [{"target": t["target"], "kind": t["kind"], **{m: t[m] for m in keys}} for t in r["targets"]]
        per_template.append({"template": template, **{m: per_target[0][m] for m in keys}, "targets": per_target})
    mean_targets = [
        {
            "target": name,
            "kind": kind,
            **{m: sum(p["targets"][i][m] for p in per_template) / len(per_template) for m in keys},
        }
        for i, (name, kind) in enumerate(targets)
    ]
    return {
        "templates": list(templates),
        "per_template": per_template,
        "mean": {**{m: mean_targets[0][m] for m in keys}, "targets": mean_targets},
        "note": "accuracy with each template in place of the protocol's; images under ood/template-K",
    }


def _write_grid(protocol: Protocol, out_dir: Path, model_id: str) -> str:
    """grid.png: the first seed's image of every (first-axis concept, second-axis concept),
    labelled; returns its name."""
    seed = protocol.seeds[0]
    rows, cols = protocol.axes
    cells = [
        read_images(out_dir / "images", [(r, c, seed) for c in cols.concepts], protocol.resolution)
        for r in rows.concepts
    ]
    save_png(image_grid(cells, rows.concepts, cols.concepts, title=f"{model_id} seed {seed}"), out_dir / "grid.png")
    return "grid.png"


def build_report(
    protocol: Protocol, scores, *, model_id: str, patch: str | None, gen_stats: dict, seconds: dict
) -> dict:
    """report.json's content: the first target's numbers at the top level, every target under ``targets``."""
    per_concept = {
        axis: {
            name: {"accuracy": float(a), "true_prob": float(p), "n": int(n)}
            for name, a, p, n in zip(
                scores.classes[axis], r["accuracy"].tolist(), r["true_prob"].tolist(), r["count"].tolist()
            )
        }
        for axis, r in scores.metrics.items()
    }
    first = scores.per_target[0]
    sampler = gen_stats.get("sampler", {})
    report = {
        "protocol": protocol.to_dict(),
        "model": str(model_id),
        "patch": patch,
        "target": first["target"],
        "kind": first["kind"],
        "ua": first["ua"],
        "ira": first["ira"],
        "cra": first["cra"],
        "targets": scores.per_target,
        "macro": macro_average(scores.per_target),
        **{f"{axis}_accuracy": r["overall"] for axis, r in scores.metrics.items()},
        "per_concept": per_concept,
        "confusion": {
            axis: {"classes": scores.classes[axis], "matrix": r["confusion"].tolist()}
            for axis, r in scores.metrics.items()
        },
        "fid": first.get("fid"),
        "fid_clip": first.get("fid_clip"),
        "clip_score": first.get("clip_score"),
        "confidence": first.get("confidence"),
        "retain_fidelity": first.get("retain_fidelity"),
        "photo_class_rule": null_class_rule(protocol),
        "sampler": sampler,
        "deviations": list(protocol.deviations),
        "images": {k: v for k, v in gen_stats.items() if k != "sampler"},
        "versions": versions(),
        "seconds": seconds,
    }
    return report


def joint_block(protocol: Protocol, report: dict, targets: list[tuple[str, str]], fidelity: dict | None) -> dict:
    """A list erased by one patch: the list's UA / IRA / CRA / H replace the first target's at the top level
    (``list_scores``; each target's own numbers stay under ``targets``), and retain fidelity is the one over the
    images that show none of the erased concepts."""
    accuracy = {
        axis: {c: v["accuracy"] for c, v in concepts.items()} for axis, concepts in report["per_concept"].items()
    }
    scores = list_scores(accuracy, list(targets), {a.name: a.null_class for a in protocol.axes})
    block = {
        **{k: scores[k] for k in ("ua", "ira", "cra", "h")},
        "per_target_ua": scores["per_target_ua"],
        "erased": [name for name, _ in targets],
        "joint": True,
    }
    if fidelity is not None:
        block["retain_fidelity"] = fidelity
    return block


def summary_lines(report: dict) -> list[str]:
    """The report in a line per target, as the CLI prints it."""
    if "targets" not in report:  # a latent-seeded protocol's report: its world says it in one line
        from .latent_report import summary

        return [summary(report)]
    attacked = {(a["target"], a["kind"]): a for a in (report.get("attack") or {}).get("targets", [])}
    lines = []
    if report.get("joint"):
        lines.append(
            f"{len(report['erased'])} concepts erased together: UA {100 * report['ua']:.1f}  IRA "
            f"{100 * report['ira']:.1f}  CRA {100 * report['cra']:.1f}  H {100 * report['h']:.1f}"
        )
    for t in report["targets"]:
        fidelity, hit = t.get("retain_fidelity"), attacked.get((t["target"], t["kind"]))
        kept = f"  retained PSNR {fidelity['psnr']:.1f} dB" if fidelity and fidelity.get("psnr") is not None else ""
        asr = f"  ASR {100 * hit['asr']:.1f} ({hit['attack']})" if hit else ""
        lines.append(
            f"{t['target']:>16s} ({t['kind']}): UA {100 * t['ua']:5.1f}{asr}  IRA {100 * t['ira']:5.1f}  CRA "
            f"{100 * t['cra']:5.1f}{kept}"
        )
    return lines


def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}"


def _fidelity_markdown(report: dict) -> list[str]:
    """The first target's same-seed retain fidelity, per retained concept (worst PSNR first)."""
    f = report.get("retain_fidelity")
    if not f:
        note = report.get("retain_fidelity_note")
        return ["", f"Same-seed retain fidelity: {note}."] if note else []
    perc = f.get("perceptual_space") or "none"

    def num(x, fmt):
        return "n/a" if x is None or x != x else format(x, fmt)

    lines = [
        "",
        "## Same-seed retain fidelity",
        "",
        f"Every retained prompt's image against the original model's image with the same seed and sampler ({f['n']} "
        f"images, {f['identical']} identical; the target's own prompts excluded). PSNR in {f['psnr_unit']}; "
        f"perceptual: {perc} (0 = same).",
        "",
        f"Mean PSNR {num(f['psnr'], '.1f')} dB, perceptual {num(f['perceptual'], '.4f')}; in-domain "
        f"({report['kind']}s) {num(f['in_domain']['psnr'], '.1f')} dB / {num(f['in_domain']['perceptual'], '.4f')}, "
        f"cross-domain {num(f['cross_domain']['psnr'], '.1f')} dB / {num(f['cross_domain']['perceptual'], '.4f')}.",
        "",
        "| retained concept | axis | PSNR (dB) | perceptual | images |",
        "|---|---|---|---|---|",
    ]
    rows = [(v["psnr"], c, axis, v) for axis, cs in f["per_concept"].items() for c, v in cs.items()]
    for _, c, axis, v in sorted(rows, key=lambda r: r[0]):
        lines.append(f"| {c} | {axis} | {num(v['psnr'], '.1f')} | {num(v['perceptual'], '.4f')} | {v['n']} |")
    return lines


def render_markdown(report: dict) -> str:
    p = report["protocol"]
    axes = [a["name"] for a in p["axes"]]
    sizes = " x ".join(f"{len(a['concepts'])} {a['name']}s" for a in p["axes"])
    sampler = report.get("sampler") or {}
    applied = (
        f" (applied {sampler['applied']}; the pipeline carries {sampler['pipeline_scheduler']})" if sampler else ""
    )
    lines = [
        f"# Evaluation report: {report['model']}" + (f" + patch {report['patch']}" if report["patch"] else ""),
        "",
        f"Protocol **{p['name']}**: {sizes} x {len(p['seeds'])} seeds, "
        f"{p['sampler']}{applied} {p['steps']} steps, eta {p['eta']}, guidance {p['guidance']}, {p['resolution']} px.",
        "",
        "| target | kind | UA | ASR under attack | IRA | CRA | judge confidence (target / IRA / CRA) | "
        "retained PSNR (dB) | FID (feature space) | FID (CLIP space) | CLIP score |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    attacked = {(a["target"], a["kind"]): a for a in (report.get("attack") or {}).get("targets", [])}
    for t in report["targets"]:
        hit = attacked.get((t["target"], t["kind"]))
        asr_s = f"{_pct(hit['asr'])} ({hit['attack']})" if hit else "not attacked"
        fid, fid_clip, conf, fidelity = t.get("fid"), t.get("fid_clip"), t.get("confidence"), t.get("retain_fidelity")
        fid_s = f"{fid['value']:.2f} ({fid['feature_space']})" if fid else "n/a"
        fid_clip_s = f"{fid_clip['value']:.3f}" if fid_clip else "n/a"
        conf_s = f"{conf['target']:.3f} / {conf['ira']:.3f} / {conf['cra']:.3f}" if conf else "n/a"
        psnr_s = f"{fidelity['psnr']:.1f}" if fidelity and fidelity.get("psnr") is not None else "n/a"
        clip_s = f"{t['clip_score']['value']:.2f}" if t.get("clip_score") else "n/a"
        lines.append(
            f"| {t['target']} | {t['kind']} | {_pct(t['ua'])} | {asr_s} | {_pct(t['ira'])} | {_pct(t['cra'])} | "
            f"{conf_s} | {psnr_s} | {fid_s} | {fid_clip_s} | {clip_s} |"
        )
    m = report["macro"]
    if len(report["targets"]) > 1:
        lines.append(f"| macro | | {_pct(m['ua'])} | | {_pct(m['ira'])} | {_pct(m['cra'])} | | | | | |")
    lines.append("")
    if report.get("clip_score"):
        lines.append(f"CLIP score scale: {report['clip_score']['scale']}; model {report['clip_score']['model']}.")
    if report.get("fid"):
        lines.append(f"FID: both sides leave out the target's images; reference: {report['fid']['reference']}.")
    if report.get("fid_clip"):
        lines.append(f"Second FID in {report['fid_clip']['feature_space']}, same images.")
    lines += _fidelity_markdown(report)
    lines += [
        "",
        "Overall accuracy: " + ", ".join(f"{a} {_pct(report[f'{a}_accuracy'])}%" for a in axes) + ".",
        "",
        "## Per-concept accuracy (%)",
    ]
    for a in axes:
        lines += ["", f"| {a} | acc | true-class prob |", "|---|---|---|"]
        lines += [
            f"| {n} | {_pct(v['accuracy'])} | {v['true_prob']:.3f} |" for n, v in report["per_concept"][a].items()
        ]
    lines += ["", f"Null classes: {report['photo_class_rule']}.", ""]
    if report.get("ood"):
        ood = report["ood"]
        lines += [
            "## Out-of-distribution prompts",
            "",
            "Each template replaces the protocol's (accuracy only; first target).",
            "",
            "| template | UA | IRA | CRA |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {p['template']} | {_pct(p['ua'])} | {_pct(p['ira'])} | {_pct(p['cra'])} |" for p in ood["per_template"]
        ]
        m = ood["mean"]
        lines += [
            f"| **mean of {len(ood['per_template'])}** | {_pct(m['ua'])} | {_pct(m['ira'])} | {_pct(m['cra'])} |",
            "",
        ]
    if report.get("attack"):
        from .attacks.report import attack_block_markdown

        lines += attack_block_markdown(report["attack"])
    if report["deviations"]:
        lines += ["## Deviations from the protocol", ""] + [f"- {d}" for d in report["deviations"]] + [""]
    s = report["seconds"]
    lines += [
        f"Time: original's answer set {s.get('original', 0)} s, generation {s['generate']} s, "
        f"classification {s['classify']} s, retain fidelity {s.get('fidelity', 0)} s, scoring "
        f"{s.get('score', 'n/a')} s, total {s['total']} s.",
        "",
    ]
    if report.get("grid"):
        lines += [f"![grid]({report['grid']})", ""]
    return "\n".join(lines)
