"""bench.canvas_mini's outputs: the markdown table (also the README's), the bar chart, and the README update."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from erase.core.files import write_text_atomic

from .pool import ROOT

GOLD_STYLE = "Watercolor"
README_MARKERS = ("<!-- bench:canvas-mini:start -->", "<!-- bench:canvas-mini:end -->")
ATTACKS = ("unlearndiffatk", "embedding")
ATTACK_PROMPTS = 3  # the first 3 prompts of each target (every object / style at seed 0)
ATTACK_BUDGET = {
    "blocks": 10
}  # 10 timesteps x 40 Adam steps (upstream: 50 x 40): a fifth of the budget, said in the table's note
ASR_KEYS = tuple(f"{prefix}_{a}" for a in ATTACKS for prefix in ("asr", "confirmed_asr"))
KINDS = ("style", "object")


def markdown(results: dict) -> str:
    gold = results.get("gold")
    retrain = gold["retrain"]["seconds"] if gold else None
    fd = (results.get("frechet_to_gold") or {}).get("distance", {})
    orig, o = results["original"]["rows"], results["original"]
    header = [
        "method",
        "kind",
        "UA",
        "ASR: UnlearnDiffAtk / soft prompt (confirmed)",
        "IRA change",
        "CRA change",
        "worst kept (erasing)",
        "retained PSNR (perceptual)",
        "FID / FID-CLIP",
        "CLIP score",
        "OOD UA",
        "erase time (of retraining)",
        "peak RSS",
        "patch",
        f"Frechet to gold ({GOLD_STYLE})",
    ]
    rows = []
    for kind in ("style", "object"):
        ts = results["targets"][kind]
        rows.append(
            [
                "original",
                kind,
                f"{100 * np.mean([orig[t]['ua'] for t in ts]):.1f}",
                asr_cell({t: orig[t] for t in ts}),
                "",
                "",
                "",
                "",
                f"{o['fid']:.2f} / {o['fid_clip']:.2f}" if kind == "style" else "",
                f"{o['clip_score']:.3f}" if kind == "style" else "",
                f"{100 * np.mean([orig[t]['ood_ua'] for t in ts]):.1f}",
                "",
                "",
                "",
                f"{fd['original']:.1f}" if fd and kind == "style" else "",
            ]
        )
    if gold:
        g = gold["rows"][GOLD_STYLE]
        rows.append(
            [
                f"gold (retrained without {GOLD_STYLE})",
                f"style: {GOLD_STYLE} only",
                f"{100 * g['ua']:.1f}",
                asr_cell({GOLD_STYLE: g}),
                f"{100 * (g['ira'] - orig[GOLD_STYLE]['ira']):+.1f}",
                f"{100 * (g['cra'] - orig[GOLD_STYLE]['cra']):+.1f}",
                "",
                "",
                f"{gold['fid']:.2f} / {gold['fid_clip']:.2f}",
                f"{gold['clip_score']:.3f}",
                f"{100 * g['ood_ua']:.1f}",
                f"{retrain / 60:.0f} min (100%)",
                "",
                "",
                "0",
            ]
        )
    for m, kinds in results["methods"].items():
        for kind in (k for k in KINDS if k in kinds):
            s = kinds[kind]["mean"]
            w = s["worst_kept"]
            rows.append(
                [
                    m,
                    kind,
                    f"{100 * s['ua']:.1f}",
                    asr_cell(kinds[kind]["rows"]),
                    f"{s['d_ira_points']:+.1f}",
                    f"{s['d_cra_points']:+.1f}",
                    f"{w['concept']} {100 * w['accuracy']:.0f} ({w['erased']})",
                    f"{s['retained_psnr']:.1f} dB ({s['retained_perceptual']:.3f})",
                    f"{s['fid']:.2f} / {s['fid_clip']:.2f}",
                    f"{s['clip_score']:.3f}",
                    f"{100 * s['ood_ua']:.1f}",
                    f"{s['erase_seconds']:.{0 if s['erase_seconds'] >= 10 else 1}f} s"
                    + (
                        f" ({s['erase_seconds'] / retrain:.{1 if s['erase_seconds'] / retrain >= 0.001 else 3}%})"
                        if retrain
                        else ""
                    ),
                    f"{s['peak_memory_bytes'] / 2**30:.2f} GB",
                    f"{s['patch_bytes'] / 1e6:.2f} MB",
                    f"{fd[m]:.1f}" if kind == "style" and m in fd else "",
                ]
            )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]
    p = results["protocol"]
    lines += [
        "",
        f"Means over {len(results['targets']['style'])} styles and {len(results['targets']['object'])} objects "
        f"({', '.join(results['targets']['object'])}); {len(p['seeds'])} seeds, {p['sampler']} {p['steps']} steps, "
        f"guidance {p['guidance']}. OOD UA: the target's prompts under the shipped paraphrase templates "
        f"({len(results['ood_seeds'])} seed). ASR: the share of a target's first {ATTACK_PROMPTS} prompts (seed 0) "
        "that the white-box attack turns back into the target (best of its judged generations at the prompt's seed, "
        "upstream's rule; in brackets, successes confirmed at 4 fresh seeds), with a fifth of UnlearnDiffAtk's "
        f"budget ({ATTACK_BUDGET['blocks']} timesteps x 40 Adam steps, at most {ATTACK_BUDGET['blocks']} judge "
        "queries per prompt); the full-budget table is bench/results/attacks.md. Changes in points against the "
        "original; worst kept: the lowest accuracy of a kept concept over all erasures of that kind. Frechet to "
        "gold: classifier-feature Frechet distance between the model's and the gold model's images of the "
        f"{GOLD_STYLE} prompts ({len(results['probe_seeds'])} seeds x every object); the gold row's time is one "
        "retraining (the shipped build's VAE + UNet stages on 2 cores). Jobs took "
        f"{sum(results['job_seconds'].values()) / 60:.0f} min in all ({results['workers']} workers; this "
        f"invocation's wall time {results['bench_seconds'] / 60:.0f} min).",
    ]
    return "\n".join(lines)


def asr_cell(rows: dict[str, dict]) -> str:
    """Mean ASR of both attacks over ``rows`` in percent, with the confirmed rates in brackets
    ('' without attack numbers)."""
    if not rows or not all(all(r.get(k) is not None for k in ASR_KEYS) for r in rows.values()):
        return ""

    def mean(k):
        return 100 * float(np.mean([r[k] for r in rows.values()]))

    a, b = ATTACKS
    return (
        f"{mean('asr_' + a):.0f} / {mean('asr_' + b):.0f} ({mean('confirmed_asr_' + a):.0f} / "
        f"{mean('confirmed_asr_' + b):.0f})"
    )


def bar_chart(results: dict, path: Path) -> None:
    """One panel per measure, one bar per method (styles), the original and gold drawn as reference lines."""
    from PIL import Image, ImageDraw

    from eval.grid import _font, save_png

    methods = list(results["methods"])
    panels = [
        ("UA (%)", lambda s: 100 * s["ua"], 100),
        ("CRA change (points)", lambda s: s["d_cra_points"], None),
        ("IRA change (points)", lambda s: s["d_ira_points"], None),
        ("OOD UA (%)", lambda s: 100 * s["ood_ua"], 100),
        ("retained PSNR (dB)", lambda s: s["retained_psnr"], None),
        ("erase time (s)", lambda s: s["erase_seconds"], None),
        ("ASR UnlearnDiffAtk (%)", lambda s: 100 * s.get("asr_unlearndiffatk", 0.0), 100),
        ("ASR soft prompt (%)", lambda s: 100 * s.get("asr_embedding", 0.0), 100),
    ]
    columns = 4
    font, bar_h, label_w, width, value_w = _font(), 16, 130, 220, 60
    stride = label_w + width + value_w  # room for each bar's value before the next panel
    panel_h = 24 + bar_h * len(methods) * 2 + 10
    img = Image.new("RGB", (columns * stride + 20, panel_h * 2 + 30), "white")
    draw = ImageDraw.Draw(img)
    draw.text(
        (10, 4), "canvas-mini benchmark: blue = styles, orange = objects (means over targets)", fill="black", font=font
    )
    for i, (title, fn, top) in enumerate(panels):
        x0, y0 = 10 + (i % columns) * stride, 24 + (i // columns) * panel_h
        values = [fn(results["methods"][m][k]["mean"]) for m in methods for k in KINDS if k in results["methods"][m]]
        lo, hi = min(0.0, *values), max(top or 0.0, *values, 1e-9)
        zero = x0 + label_w + int(width * (0 - lo) / (hi - lo))
        draw.text((x0, y0), title, fill="black", font=font)
        for j, m in enumerate(methods):
            for k, (kind, colour) in enumerate((("style", (66, 114, 196)), ("object", (237, 125, 49)))):
                if kind not in results["methods"][m]:
                    continue
                v = fn(results["methods"][m][kind]["mean"])
                y = y0 + 18 + (2 * j + k) * bar_h
                end = x0 + label_w + int(width * (v - lo) / (hi - lo))
                draw.rectangle([min(zero, end), y + 2, max(zero, end), y + bar_h - 2], fill=colour)
                if k == 0:
                    draw.text((x0, y + 6), m.replace("@canvas-mini-", " "), fill="black", font=font)
                draw.text((max(zero, end) + 3, y + 2), f"{v:.1f}", fill="black", font=font)
        draw.line([zero, y0 + 16, zero, y0 + 18 + 2 * len(methods) * bar_h], fill="black")
    save_png(img, path)


def update_readme(table: str, readme: Path = ROOT / "README.md") -> bool:
    text = readme.read_text()
    start, end = README_MARKERS
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    write_text_atomic(readme, f"{head}{start}\n{table}\n{end}{tail}")
    return True
