"""Text-to-Unlearn acceptance on faces-mini: eyeglasses, smile and one identity, the directional method against
the paper's CLIP-distance baseline.

    python -m bench.faces_mini [--targets attribute:eyeglasses,attribute:smile,identity:Alice] [--modes directional,clip_distance]

Each (target, mode) erases with the ``faces-mini`` preset (the baseline: ``--set mode=clip_distance``) and is
evaluated by ``erase eval --protocol faces-mini`` (held-out CLIP mapper edits, 1,000 seeds). Writes
``bench/results/faces-mini.json`` and ``.md``; the bars: the target's rate drops by >= 80% relative to the
original's on G(w) and on the edited latents, every other attribute's rate moves by <= 5 points, FD rises by
<= 20%, under 10 CPU minutes per concept.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TARGETS = "attribute:eyeglasses,attribute:smile,identity:Alice"
BARS = {"relative_drop": 0.80, "other_points": 5.0, "fd_rise": 0.20, "seconds": 600}
CHECKS = ("drop_plain", "drop_edited", "others", "fd", "time")  # the keys of a row's "meets", one per bar


def other_moves(report: dict, target: str) -> dict[str, float]:
    """|rate change| in points of every class of every head except the target's own head."""
    from eval.faces_mini.world import concept_rate_label

    head, _ = concept_rate_label(target)
    moves = {}
    for h, classes in report["attribute_rates"].items():
        if h == head:
            continue
        for label, rate in classes.items():
            if h in ("eyeglasses", "smile", "hat", "beard") and label == "no":
                continue
            moves[f"{h}={label}"] = round(100 * abs(rate - report["original"]["attribute_rates"][h][label]), 2)
    return moves


def run_one(kind: str, target: str, mode: str, out: Path, preset: str | None, overrides: dict | None = None) -> dict:
    from erase.api import erase_concept
    from erase.errors import EraseError
    from erase.patch import apply_patch
    from erase.request import EraseRequest
    from eval.faces_mini.assets import GENERATOR_DIR
    from eval.faces_mini.guides import faces_mini_guides
    from eval.faces_report import evaluate_faces
    from eval.protocols import load_protocol
    from pipelines.stylegan import StyleGANPipeline

    done = out / "row.json"
    if done.exists():
        return json.loads(done.read_text())
    protocol = load_protocol("faces-mini")
    pipe = StyleGANPipeline.from_pretrained(GENERATOR_DIR)
    request = EraseRequest.from_protocol(protocol, target, kind)
    overrides = {**(overrides or {}), **({"mode": mode} if mode != "directional" else {})}
    t0 = time.time()
    head = {"target": target, "kind": kind, "mode": mode, "preset": preset, "overrides": overrides}
    try:
        patch = erase_concept(pipe, "text_to_unlearn", request, out / "patch", preset=preset, overrides=overrides, progress=False,
                              model_id=str(GENERATOR_DIR), guides=faces_mini_guides(), resume=True)
    except EraseError as e:  # the method refused (its mapper gate): a row that meets no bar, with the reason
        return _saved(done, {**head, "refused": str(e), "erase_seconds": round(time.time() - t0, 1), "meets": dict.fromkeys(CHECKS, False)})
    seconds = time.time() - t0
    apply_patch(pipe, patch)
    r = evaluate_faces(pipe, protocol, target, kind, out / "eval", model_id=str(GENERATOR_DIR), patch=str(out / "patch"))
    t = r["target_rate"]
    moves = other_moves(r, target)
    worst = max(moves, key=moves.get)
    eff = patch.config["efficiency"]
    row = {**head, "target_rate": t,
           "relative_drop_plain": 1 - t["plain"] / t["original_plain"] if t["original_plain"] else None,
           "relative_drop_edited": 1 - t["edited"] / t["original_edited"] if t["original_edited"] else None,
           "worst_other": {"class": worst, "points": moves[worst]}, "fd": r["fd"], "fd_rise": r["fd"]["value"] / r["fd"]["original"] - 1,
           "identity_similarity": r["identity_similarity"]["mean"], "retain_fidelity": r["retain_fidelity"], "gamma": r["gamma"],
           "clip_similarity": r["clip_similarity"], "erase_seconds": round(seconds, 1), "total_seconds": eff["erase_seconds"],
           "peak_memory_bytes": eff["peak_memory_bytes"], "patch_bytes": eff["patch_bytes"], "gate": patch.config.get("info", {}).get("gate")}
    row["meets"] = dict(zip(CHECKS, ((row["relative_drop_plain"] or 0) >= BARS["relative_drop"],
                                     (row["relative_drop_edited"] or 0) >= BARS["relative_drop"],
                                     moves[worst] <= BARS["other_points"], row["fd_rise"] <= BARS["fd_rise"], seconds <= BARS["seconds"]), strict=True))
    return _saved(done, row)


def _saved(path: Path, row: dict) -> dict:
    from erase.files import write_json_atomic

    write_json_atomic(path, row)
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| target | mode | rate G(w): original -> erased | rate asked for it | worst other attribute | FD rise | identity sim. | "
             "PSNR (dB) | gamma | erase time | patch |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['target']} | {r['mode']} | refused: {r['refused']} |  |  |  |  |  |  | {r['erase_seconds']:.0f} s |  |")
            continue
        t = r["target_rate"]
        lines.append(f"| {r['target']} | {r['mode']} | {100 * t['original_plain']:.1f} -> {100 * t['plain']:.1f} | "
                     f"{100 * t['original_edited']:.1f} -> {100 * t['edited']:.1f} | {r['worst_other']['class']} {r['worst_other']['points']:.1f} pts | "
                     f"{100 * r['fd_rise']:+.0f}% | {r['identity_similarity']:.3f} | {r['retain_fidelity']['psnr']:.1f} | "
                     f"{r['gamma']['classifier']['value']:.2f} | {r['erase_seconds']:.0f} s | {r['patch_bytes'] / 1e6:.2f} MB |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Text-to-Unlearn on faces-mini: directional vs CLIP-distance baseline")
    p.add_argument("--targets", default=TARGETS)
    p.add_argument("--modes", default="directional,clip_distance")
    p.add_argument("--preset", default="faces-mini", help="a preset name, or 'none' for the method's defaults")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one method option (repeatable)")
    p.add_argument("--out", default="runs/bench/faces-mini")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from erase.cli.erasing import _parse_set

    overrides = _parse_set(args.set)
    tag = "".join(f"-{k}={v}" for k, v in sorted(overrides.items()))  # runs with other overrides get their own folders
    rows = []
    for spec in args.targets.split(","):
        kind, target = spec.split(":", 1)
        for mode in args.modes.split(","):
            rows.append(run_one(kind, target, mode, Path(args.out) / f"{target}-{mode}{tag}", None if args.preset == "none" else args.preset, overrides))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    from erase.files import write_json_atomic

    Path(args.results).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(args.results) / "faces-mini.json", {"bars": BARS, "rows": rows, "threads": args.threads})
    (Path(args.results) / "faces-mini.md").write_text(markdown(rows) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
