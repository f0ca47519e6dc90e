"""Robustness against retained fidelity: which erasure holds under attack on canvas-mini, and at what cost.

    python -m bench.robust [--run] [--only NAME,...]
    python -m bench.robust --styles runs/robust-a,runs/robust-b     # the robust preset on every style (see below)

Each row is one erasure of Watercolor (a method, its ``canvas-mini`` preset and overrides), evaluated on the full
protocol (UA, IRA, CRA, same-seed retained PSNR) and attacked on its first 10 prompts with the default budget
(``embedding``, and ``unlearndiffatk`` where listed). With ``--run`` the missing steps run through the CLI
(the same commands a user types); without it the existing folders under ``runs/`` are collected. Writes
bench/results/robust.md, .json and a scatter plot (ASR against retained PSNR, the trade-off curve).

``--styles`` collects the preset's check on every style, made with the product's own commands (two halves of the
ten styles side by side, each ``erase batch --method concept_ablation --preset canvas-mini-robust --concepts LIST
--kind style --eval --attack embedding --attack-prompts 5 --out runs/robust-X``, then ``erase attack --patch
runs/robust-X/STYLE --attack unlearndiffatk --prompts 5 --out runs/robust-X-uda-STYLE`` per style) into
bench/results/robust-styles.md, with IRA / CRA changes against the original's rows of bench/results/canvas-mini.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "assets/canvas-mini/pipeline"
TARGET = ("Watercolor", "style")
# name: (method, overrides of its canvas-mini preset, attacks measured)
CONFIGS = {
    "uce-wc": ("uce", [], ("embedding", "unlearndiffatk")),
    "rece-wc": ("rece", [], ("embedding", "unlearndiffatk")),
    "ca-wc": ("concept_ablation", [], ("embedding", "unlearndiffatk")),
    "adv-ca-5": ("concept_ablation", ["adversarial_steps=5"], ("embedding", "unlearndiffatk")),
    "adv-ca-10": ("concept_ablation", ["adversarial_steps=10"], ("embedding",)),
    "adv-ca-5-a300": ("concept_ablation", ["adversarial_steps=5", "alpha=300"], ("embedding",)),
    "adv-ca-5-w5-a300": (
        "concept_ablation",
        ["adversarial_steps=5", "adversarial_weight=5", "alpha=300"],
        ("embedding",),
    ),
    "adv-ca-5-xattn-a300": (
        "concept_ablation",
        ["adversarial_steps=5", "alpha=300", "parameter_group=cross_attention"],
        ("embedding",),
    ),
    "adv-te-5": ("concept_ablation", ["adversarial_steps=5", "text_encoder=true"], ("embedding", "unlearndiffatk")),
    "adv-te-5-lr1e-4": ("concept_ablation", ["adversarial_steps=5", "text_encoder=true", "lr=1e-4"], ("embedding",)),
    "te-ca": ("concept_ablation", ["text_encoder=true"], ("embedding",)),
    "adv-te-5-a300": (
        "concept_ablation",
        ["adversarial_steps=5", "text_encoder=true", "alpha=300"],
        ("embedding", "unlearndiffatk"),
    ),
    "adv-te-5-a1000": (
        "concept_ablation",
        ["adversarial_steps=5", "text_encoder=true", "alpha=1000"],
        ("embedding", "unlearndiffatk"),
    ),
}
SUFFIX = {"embedding": "emb", "unlearndiffatk": "uda"}


def commands(name: str) -> list[list[str]]:
    method, sets, attacks = CONFIGS[name]
    target, kind = TARGET
    out = [
        [
            "run",
            method,
            "--model",
            MODEL,
            "--concept",
            target,
            "--kind",
            kind,
            "--preset",
            "canvas-mini",
            *[a for s in sets for a in ("--set", s)],
            "--out",
            f"runs/{name}",
            "--eval",
            "--threads",
            "1",
            "--quiet",
        ]
    ]
    for attack in attacks:
        out.append(
            [
                "attack",
                "--model",
                MODEL,
                "--patch",
                f"runs/{name}",
                "--target",
                target,
                "--kind",
                kind,
                "--attack",
                attack,
                "--prompts",
                "10",
                "--out",
                f"runs/{name}-{SUFFIX[attack]}",
                "--threads",
                "1",
                "--quiet",
            ]
        )
    return out


def _done(argv: list[str]) -> bool:
    out = Path(ROOT, argv[argv.index("--out") + 1])
    return (out / ("erasure_patch.safetensors" if argv[0] == "run" else "attack.json")).is_file()


def collect(name: str) -> dict | None:
    method, sets, attacks = CONFIGS[name]
    folder = ROOT / "runs" / name
    report = folder / "eval" / "report.json"
    if not report.is_file():
        return None
    t = json.loads(report.read_text())["targets"][0]
    config = json.loads((folder / "erasure_config.json").read_text())
    row = {
        "name": name,
        "method": method,
        "overrides": sets,
        "ua": t["ua"],
        "ira": t["ira"],
        "cra": t["cra"],
        "retained_psnr": t["retain_fidelity"]["psnr"],
        "erase_seconds": config["efficiency"]["erase_seconds"],
    }
    for attack in attacks:
        path = ROOT / "runs" / f"{name}-{SUFFIX[attack]}" / "attack.json"
        if path.is_file():
            r = json.loads(path.read_text())
            row[attack] = {
                "asr": r["asr"],
                "confirmed_asr": r["confirmed_asr"],
                "queries_to_success": r["queries_to_success"],
                "prompts": r["prompts"],
            }
    return row


def markdown(rows: list[dict]) -> str:
    def attack(r, a):
        x = r.get(a)
        return "-" if not x else f"{100 * x['asr']:.0f}% ({100 * x['confirmed_asr']:.0f}%)"

    lines = [
        "| erasure | method | overrides of canvas-mini | UA | IRA | CRA | retained PSNR | "
        "soft-prompt ASR (confirmed) | UnlearnDiffAtk ASR (confirmed) | erase time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['method']} | {', '.join(r['overrides']) or '(preset)'} | {100 * r['ua']:.1f} | "
            f"{100 * r['ira']:.1f} | {100 * r['cra']:.1f} | {r['retained_psnr']:.1f} dB | {attack(r, 'embedding')} | "
            f"{attack(r, 'unlearndiffatk')} | {r['erase_seconds']:.{0 if r['erase_seconds'] >= 10 else 1}f} s |"
        )
    lines += [
        "",
        "Watercolor; UA / IRA / CRA and same-seed retained PSNR on the full protocol (5 seeds); attacks on the first "
        "10 prompts (every object at seed 0) with the default budget (50 timesteps x 40 Adam steps, at most 50 judge "
        "queries per prompt); confirmed: judged as Watercolor on at least half of 4 fresh seeds. The robustness bar: "
        "soft-prompt ASR <= 30% and UnlearnDiffAtk ASR <= 10% with retained PSNR >= 28 dB.",
    ]
    return "\n".join(lines) + "\n"


def scatter(rows: list[dict], path: Path) -> None:
    """Soft-prompt ASR (and confirmed) against retained PSNR, one labelled point per erasure."""
    from PIL import Image, ImageDraw

    from eval.grid import _font, save_png

    w, h, m = 560, 380, 50
    img = Image.new("RGB", (w, h), "white")
    d, font = ImageDraw.Draw(img), _font()
    lo, hi = 20.0, 45.0

    def xy(psnr, asr):
        return m + (psnr - lo) / (hi - lo) * (w - 2 * m), h - m - asr * (h - 2 * m)

    d.line([m, h - m, w - m, h - m], fill="black")
    d.line([m, m, m, h - m], fill="black")
    for v in range(20, 46, 5):
        x, _ = xy(v, 0)
        d.text((x - 8, h - m + 4), str(v), fill="black", font=font)
    for a in (0, 0.3, 0.5, 1.0):
        _, y = xy(lo, a)
        d.text((8, y - 6), f"{100 * a:.0f}%", fill="black", font=font)
    bar_x, _ = xy(28, 0)
    _, bar_y = xy(lo, 0.3)
    d.rectangle([bar_x, bar_y, w - m, h - m], outline=(0, 150, 0))  # where the bar is met
    d.text((bar_x + 4, bar_y + 4), "bar: ASR <= 30%, PSNR >= 28 dB", fill=(0, 120, 0), font=font)
    for r in rows:
        if not r.get("embedding"):
            continue
        x, y = xy(r["retained_psnr"], r["embedding"]["asr"])
        _, yc = xy(r["retained_psnr"], r["embedding"]["confirmed_asr"])
        d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(200, 40, 40))
        d.ellipse([x - 3, yc - 3, x + 3, yc + 3], outline=(40, 40, 200))
        d.text((x + 6, y - 6), r["name"], fill="black", font=font)
    d.text(
        (m, 10),
        "soft-prompt ASR (red: best of 50 queries; blue: confirmed) vs retained PSNR (dB), Watercolor",
        fill="black",
        font=font,
    )
    save_png(img, path)


def styles_table(folders: list[str]) -> str:
    original = json.loads((ROOT / "bench" / "results" / "canvas-mini.json").read_text())["original"]["rows"]
    rows = []
    for folder in folders:
        manifest = ROOT / folder / "manifest.jsonl"
        for line in manifest.read_text().splitlines() if manifest.is_file() else []:
            r = json.loads(line)
            if r.get("status") != "done" or not r.get("metrics"):
                continue
            m, c = r["metrics"], r["concept"]
            uda = ROOT / f"{folder}-uda-{c}" / "attack.json"
            u = json.loads(uda.read_text())["asr"] if uda.is_file() else None
            if "attack" not in m:  # a batch evaluated without --attack: the soft prompt run by erase attack beside it
                emb = ROOT / f"{folder}-emb-{c}" / "attack.json"
                if not emb.is_file():
                    continue
                m = {**m, "attack": json.loads(emb.read_text())}
            erase = json.loads((ROOT / folder / c / "erasure_config.json").read_text())["efficiency"]["erase_seconds"]
            rows.append(
                {
                    "style": c,
                    "ua": 100 * m["ua"],
                    "d_ira": 100 * (m["ira"] - original[c]["ira"]),
                    "d_cra": 100 * (m["cra"] - original[c]["cra"]),
                    "psnr": m["retained_psnr"],
                    "soft": 100 * m["attack"]["asr"],
                    "soft_confirmed": 100 * m["attack"]["confirmed_asr"],
                    "uda": None if u is None else 100 * u,
                    "erase": erase,
                }
            )
    lines = [
        "| style | UA | IRA change | CRA change | retained PSNR | soft-prompt ASR (confirmed) | "
        "UnlearnDiffAtk ASR | erase time |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def line(name, r):
        uda = r.get("uda_text") or ("-" if r["uda"] is None else f"{r['uda']:.0f}%")
        return (
            f"| {name} | {r['ua']:.1f} | {r['d_ira']:+.1f} | {r['d_cra']:+.1f} | {r['psnr']:.1f} dB | "
            f"{r['soft']:.0f}% ({r['soft_confirmed']:.0f}%) | {uda} | {r['erase']:.0f} s |"
        )

    lines += [line(r["style"], r) for r in rows]
    if rows:
        keys = ("ua", "d_ira", "d_cra", "psnr", "soft", "soft_confirmed", "erase")
        mean = {k: statistics.mean(r[k] for r in rows) for k in keys}
        done = [r["uda"] for r in rows if r["uda"] is not None]
        mean["uda"] = statistics.mean(done) if done else None
        if done and len(done) < len(rows):
            mean["uda_text"] = f"{mean['uda']:.0f}% (of {len(done)} styles)"
        lines.append(line(f"**mean of {len(rows)}**", mean))
    lines += [
        "",
        "concept_ablation --preset canvas-mini-robust on every style; attacks on each style's first 5 prompts (seed "
        "0) with the default budget; changes in points against the original (bench/results/canvas-mini.json); erase "
        "times measured while 2-4 jobs shared 2 cores (upper bounds).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--run", action="store_true", help="run the missing erasures, evaluations and attacks (through the CLI)"
    )
    p.add_argument("--only", default=None, help="comma-separated erasure names (default: all)")
    p.add_argument("--results", default=str(ROOT / "bench" / "results" / "robust"))
    p.add_argument(
        "--styles",
        default=None,
        help="comma-separated batch folders of the robust preset on every style: collect them",
    )
    args = p.parse_args(argv)
    if args.styles:
        table = styles_table(args.styles.split(","))
        (ROOT / "bench" / "results" / "robust-styles.md").write_text(table)
        print(table)
        return 0
    names = args.only.split(",") if args.only else list(CONFIGS)
    if args.run:
        import os

        from erase.cli import main as erase_main

        os.chdir(ROOT)
        for name in names:
            for argv_ in commands(name):
                if not _done(argv_) and erase_main(argv_) != 0:
                    raise SystemExit(f"failed: erase {' '.join(argv_)}")
    rows = [r for r in (collect(n) for n in names) if r]
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(json.dumps({"target": TARGET, "rows": rows}, indent=2))
    results.with_suffix(".md").write_text(markdown(rows))
    scatter(rows, results.with_suffix(".png"))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
