"""Text-to-Unlearn acceptance and ablation on faces-mini: eyeglasses, smile and one identity.

    python -m bench.faces_mini [--targets attribute:eyeglasses,attribute:smile,identity:Alice]
                               [--variants default,paper,...] [--seeds N] [--no-write]

Each (target, variant) erases with the variant's preset and overrides (``VARIANTS``: the paper's configuration,
each option of the redesign added to it alone, the default ``faces-mini`` preset, the CLIP-distance baseline) and
is evaluated by ``erase eval --protocol faces-mini`` (held-out CLIP mapper edits, 1,000 seeds). Rows are resumable
(``row.json`` per run folder), so shards can run in parallel with ``--no-write`` and a last run gathers them.
Writes ``bench/results/faces-mini.json`` and ``.md``. The bars (``BARS``, issue 25): the target's rate drops by >=
80% relative to the original's (60% for an identity) on G(w) and on the edited latents, every other attribute's
rate moves by <= 5 points, FD against concept-free renders <= 1.2x the original's, identity similarity >= 0.95 on
seeds whose original lacks the target, palette drift <= 2x the original's (globally, and in each pixel's tile:
``worlds.faces_mini.palette``), under 10 CPU minutes per concept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TARGETS = "attribute:eyeglasses,attribute:smile,identity:Alice"
MODEL_ID = "faces-mini"  # the shipped generator by its name: results record no machine's path
# issue 25's bars: the target's rate falls by >= 80% relative (60% for an identity) on G(w) and on edited latents,
# every other attribute moves <= 5 points, FD against concept-free renders <= 1.2x the original's, identity
# similarity >= 0.95 on latents whose original lacks the concept, palette drift <= 2x the original's, < 10 minutes
BARS = {
    "relative_drop": 0.80,
    "relative_drop_identity": 0.60,
    "other_points": 5.0,
    "fd_ratio": 1.2,
    "identity_similarity": 0.95,
    "palette_ratio": 2.0,
    "seconds": 600,
}
# the ablation: the paper's configuration, each option of the redesign added to it alone, the default (the
# faces-mini preset) and the paper's CLIP-distance baseline; each a (preset, overrides) pair
VARIANTS = {
    "paper": ("paper", {}),
    "paper+colour": ("paper", {"colour_augment": True}),
    "paper+unedited-anchor": ("paper", {"anchor": "unedited"}),
    "paper+keep-plain": ("paper", {"preserve_unedited": 1.0}),
    "paper+clean-mapper": ("paper", {"mapper_identity": 1.0}),
    "paper+attributes": ("paper", {"lambda_attributes": 2.0}),
    "paper+adaptive": ("paper", {"layers": "adaptive", "adaptive_every": 20}),
    # the counterpart under a linear probe in W (refused where the concept is not linear there: eyeglasses, smile)
    "paper+probe": ("paper", {"mode": "probe"}),
    "default": ("faces-mini", {}),
    "clip_distance": ("paper", {"mode": "clip_distance"}),
}
GRID_VARIANTS = ("default", "paper")
# the evaluation a row's figures come from; a stored row of an earlier one is evaluated again (its patch is kept) into
# its own folder, eval-<N>: 2 = the local palette drift, and the identity's held-out mapper with L2 0.3 (2026-12-07)
EVALUATION = 2
EDIT_REALISES = (
    0.30  # the evaluation's edit must raise the original's rate of the target this much for its drop to count
)
# ... and draw the world's images: at most this times the plain images' palette drift. Chosen after measuring the
# original's asked-for images (sharpened generator: eyeglasses 1.2x, smile 4.5x, as its edit recolours hair off the
# palette; Alice's pastel blobs 21.5x; on the GAN: attributes 0.9-2.3x, Alice 45-64x)
EDIT_PALETTE = 10.0
CHECKS = (
    "drop_plain",
    "drop_edited",
    "others",
    "fd",
    "identity",
    "palette",
    "time",
)  # the keys of a row's "meets", one per bar


def other_moves(report: dict, target: str) -> dict[str, float]:
    """|rate change| in points of every class of every head except the target's own head."""
    from worlds.faces_mini.world import concept_rate_label

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


def run_one(
    kind: str,
    target: str,
    mode: str,
    out: Path,
    preset: str | None,
    overrides: dict | None = None,
    seeds: int | None = None,
) -> dict:
    from erase.api import erase_concept
    from erase.core.errors import EraseError
    from erase.core.patch import ErasurePatch, apply_patch
    from erase.core.request import EraseRequest
    from eval.protocols import load_protocol
    from pipelines.stylegan import StyleGANPipeline
    from worlds.faces_mini.assets import GENERATOR_DIR
    from worlds.faces_mini.guides import faces_mini_guides

    done = out / "row.json"
    stored = json.loads(done.read_text()) if done.exists() else None
    if stored is not None and ("refused" in stored or stored.get("evaluation") == EVALUATION):
        return judged_again(stored)  # a finished row: judged again, so that a change of the bars applies to it
    protocol = load_protocol("faces-mini")
    if seeds is not None and seeds < len(protocol.seeds):
        protocol = protocol.with_overrides(seeds=protocol.seeds[:seeds])
    pipe = StyleGANPipeline.from_pretrained(GENERATOR_DIR)
    if stored is not None:  # a row of an earlier evaluation: its kept patch evaluated again
        apply_patch(pipe, ErasurePatch.from_pretrained(out / "patch"))
        row = {**stored, **figures(pipe, protocol, target, kind, out)}
        return _saved(done, {**row, "meets": bars_met(row)})
    request = EraseRequest.from_protocol(protocol, target, kind)
    overrides = {**(overrides or {}), **({"mode": mode} if mode != "directional" else {})}
    t0 = time.time()
    head = {
        "target": target,
        "kind": kind,
        "mode": mode,
        "preset": preset,
        "overrides": overrides,
        "generator": generator_record(GENERATOR_DIR),
        "threads": torch.get_num_threads(),
    }
    try:
        patch = erase_concept(
            pipe,
            "text_to_unlearn",
            request,
            out / "patch",
            preset=preset,
            overrides=overrides,
            progress=False,
            model_id=MODEL_ID,
            guides=faces_mini_guides(),
            resume=True,
        )
    except EraseError as e:  # the method refused (its mapper gate): a row that meets no bar, with the reason
        return _saved(
            done,
            {
                **head,
                "refused": str(e),
                "erase_seconds": round(time.time() - t0, 1),
                "meets": dict.fromkeys(CHECKS, False),
            },
        )
    seconds = time.time() - t0
    apply_patch(pipe, patch)
    eff = patch.config["efficiency"]
    row = {
        **head,
        "mode": patch.config["method_config"]["mode"],  # as resolved: a preset's for_kind fields may set it
        **figures(pipe, protocol, target, kind, out),
        "erase_seconds": round(seconds, 1),
        "total_seconds": eff["erase_seconds"],
        "peak_memory_bytes": eff["peak_memory_bytes"],
        "patch_bytes": eff["patch_bytes"],
        "gate": patch.config.get("info", {}).get("gate"),
    }
    row["meets"] = bars_met(row)
    return _saved(done, row)


def figures(pipe, protocol, target: str, kind: str, out: Path) -> dict:
    """The row's evaluation figures for a patched ``pipe`` (``erase eval`` into ``eval_folder(out)``: images already
    there are read, not rendered again)."""
    from eval.report import EvalOptions, evaluate

    r = evaluate(
        pipe,
        protocol,
        [(target, kind)],
        eval_folder(out),
        model_id=MODEL_ID,
        patch=str(out / "patch"),
        options=EvalOptions(progress=False),
    )
    t = r["target_rate"]
    moves = other_moves(r, target)
    worst = max(moves, key=moves.get)
    pd, local = r["palette_drift"], r["local_palette_drift"]
    return {
        "evaluation": EVALUATION,
        "seeds": len(protocol.seeds),
        "target_rate": t,
        "relative_drop_plain": 1 - t["plain"] / t["original_plain"] if t["original_plain"] else None,
        "relative_drop_edited": 1 - t["edited"] / t["original_edited"] if t["original_edited"] else None,
        "worst_other": {"class": worst, "points": moves[worst]},
        "other_moves": moves,
        "fd": r["fd"],
        "fd_ratio": r["fd"]["value"] / r["fd"]["original"],
        "identity_similarity": r["identity_similarity"]["mean"],
        "identity_similarity_without_target": r["identity_similarity"]["without_target"],
        "palette_drift": pd,
        "palette_ratio": _to_original(pd),
        "local_palette_drift": local,
        "local_palette_ratio": _to_original(local),
        "retain_fidelity": r["retain_fidelity"],
        "gamma": r["gamma"],
        "recognised": r["recognised"],
        "clip_similarity": r["clip_similarity"],
    }


def _to_original(drift: dict) -> float:
    """A drift of the erased plain images as a multiple of the original's."""
    return drift["plain"] / max(drift["original_plain"], 1e-6)


def eval_folder(out: Path) -> Path:
    """Where a row's evaluation of today's kind (``EVALUATION``) lives in its run folder."""
    return out / f"eval-{EVALUATION}"


def bars_met(row: dict) -> dict[str, bool | None]:
    """Each bar of ``BARS`` for one row. The drop on asked-for latents cannot be measured where the evaluation's edit
    does not realise the target on the original (the held-out CLIP's mapper cannot draw Alice: 7.5% plain, 0.1%
    asked for): None, not a miss. "Realises" is the method's own gate: at least 30 points above the plain rate, on
    images of the world: the original's asked-for images drift off the world's palette by at most EDIT_PALETTE times
    its plain images' (on the sharpened generator the held-out mapper asks for Alice with pastel blobs the judge
    calls Alice: 24.2% of their pixels off the palette against 1.1%, 21.5x)."""
    drop = BARS["relative_drop_identity"] if row["kind"] == "identity" else BARS["relative_drop"]
    t, pd = row["target_rate"], row["palette_drift"]
    faces = pd["original_edited"] <= EDIT_PALETTE * max(pd["original_plain"], 1e-6)
    realised = t["original_edited"] - t["original_plain"] >= EDIT_REALISES and faces
    edited = row["relative_drop_edited"] if realised else None
    return dict(
        zip(
            CHECKS,
            (
                _at_least(row["relative_drop_plain"], drop),
                _at_least(edited, drop),
                row["worst_other"]["points"] <= BARS["other_points"],
                row["fd_ratio"] <= BARS["fd_ratio"],
                (row["identity_similarity_without_target"] or 0) >= BARS["identity_similarity"],
                _palette_met(row),
                row["erase_seconds"] <= BARS["seconds"],
            ),
            strict=True,
        )
    )


def _palette_met(row: dict) -> bool:
    """Palette drift at most BARS["palette_ratio"] times the original's, globally and (rows since 2026-12-07:
    where it was measured) in every pixel's tile."""
    local = row.get("local_palette_ratio")
    return row["palette_ratio"] <= BARS["palette_ratio"] and (local is None or local <= BARS["palette_ratio"])


def judged_again(row: dict) -> dict:
    """A stored row against today's bars (a refused row meets none, as it was written)."""
    return row if "refused" in row else {**row, "meets": bars_met(row)}


def _at_least(value: float | None, bar: float) -> bool | None:
    return None if value is None else value >= bar


def _saved(path: Path, row: dict) -> dict:
    from erase.core.files import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, row)
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| target | variant | rate G(w): original -> erased | rate asked for it | worst other attribute | "
        "FD / original | identity sim. (without target) | palette drift (original) | local palette drift (original) "
        "| PSNR (dB) | erase time | peak memory | patch | bars met | generator |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        variant = r.get("variant") or r["mode"]
        generator = _generator_name(r.get("generator"))
        if "refused" in r:
            lines.append(
                f"| {r['target']} | {variant} | refused: {r['refused']} |  |  |  |  |  |  |  | "
                f"{r['erase_seconds']:.0f} s |  |  | 0/{len(CHECKS)} | {generator} |"
            )
            continue
        t, pd = r["target_rate"], r["palette_drift"]
        met = [k for k, v in r["meets"].items() if v]
        measured = [k for k, v in r["meets"].items() if v is not None]
        lines.append(
            f"| {r['target']} | {variant} | {100 * t['original_plain']:.1f} -> {100 * t['plain']:.1f} | "
            f"{100 * t['original_edited']:.1f} -> {100 * t['edited']:.1f} | "
            f"{r['worst_other']['class']} {r['worst_other']['points']:.1f} pts | {r['fd_ratio']:.2f}x | "
            f"{r['identity_similarity_without_target'] or 0:.3f} | "
            f"{_drift(pd)} | {_drift(r.get('local_palette_drift'))} | {r['retain_fidelity']['psnr']:.1f} | "
            f"{r['erase_seconds']:.0f} s | {r['peak_memory_bytes'] / 2**20:.0f} MiB | "
            f"{r['patch_bytes'] / 1e6:.2f} MB | {len(met)}/{len(measured)} | {generator} |"
        )
    return "\n".join(lines)


def _drift(drift: dict | None) -> str:
    return "not measured" if drift is None else f"{100 * drift['plain']:.2f}% ({100 * drift['original_plain']:.2f}%)"


def generator_record(folder: Path) -> dict:
    """Which generator a row ran on: its weights' digest, and whether it is the sharpened one (README)."""
    from erase.core.files import file_sha256

    digest = file_sha256(folder / "generator.safetensors")[:12]
    return {"digest": digest, "sharpened": (folder / "sharpen.json").exists()}


def _generator_name(record: dict | None) -> str:
    return "" if record is None else ("sharpened" if record["sharpened"] else "GAN") + f" {record['digest'][:7]}"


def updated_rows(previous: Path, rows: list[dict]) -> list[dict]:
    """The rows of an earlier ``faces-mini.json`` with this run's rows in place of those of the same target and
    variant, the others kept (judged again against today's bars); ordered by target, then ``VARIANTS``."""
    if not previous.is_file():
        raise SystemExit(f"--update keeps the rows of {previous}, which does not exist; run without --update")
    new = {(r["target"], r["variant"]): r for r in rows}
    kept = [r for r in json.loads(previous.read_text())["rows"] if (r["target"], r["variant"]) not in new]
    kept = [judged_again(r) for r in kept]
    targets = list(dict.fromkeys(r["target"] for r in [*kept, *rows]))
    order = list(VARIANTS)
    return sorted(
        [*kept, *rows],
        key=lambda r: (targets.index(r["target"]), order.index(r["variant"]) if r["variant"] in order else len(order)),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Text-to-Unlearn on faces-mini: the default, the paper's configuration, each option alone, "
        "and the CLIP-distance baseline"
    )
    p.add_argument("--targets", default=TARGETS, help="comma-separated kind:name, e.g. attribute:eyeglasses")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override one method option in every variant (repeatable)"
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="only the first N protocol seeds (recorded in each row; default: all 1,000)",
    )
    p.add_argument("--out", default="runs/bench/faces-mini")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    p.add_argument(
        "--update",
        action="store_true",
        help="keep the rows of the results' faces-mini.json that this run does not redo (same target and variant)",
    )
    p.add_argument(
        "--no-write",
        action="store_true",
        help="run (or resume) the rows without writing bench/results (parallel shards)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from erase.cli.erasing import _parse_set

    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    bad = [t for t in args.targets.split(",") if ":" not in t]
    if bad:
        p.error(f"--targets takes kind:name (e.g. attribute:eyeglasses,identity:Alice); got {bad}")
    overrides = _parse_set(args.set)
    tag = "".join(f"-{k}={v}" for k, v in sorted(overrides.items())) + (f"-seeds{args.seeds}" if args.seeds else "")
    rows = []
    for spec in args.targets.split(","):
        kind, target = spec.split(":", 1)
        for variant in args.variants.split(","):
            preset, extra = VARIANTS[variant]
            over = {**extra, **overrides}
            row = run_one(
                kind,
                target,
                over.get("mode", "directional"),
                Path(args.out) / f"{target}-{variant}{tag}",
                preset,
                over,
                seeds=args.seeds,
            )
            rows.append({**row, "variant": variant})
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    if args.no_write:
        return 0
    from erase.core.files import write_json_atomic

    Path(args.results).mkdir(parents=True, exist_ok=True)
    ran = rows  # only this run's rows have their run folders (and grids) under --out
    if args.update:
        rows = updated_rows(Path(args.results) / "faces-mini.json", rows)
    write_json_atomic(
        Path(args.results) / "faces-mini.json",
        {
            "bars": BARS,
            "variants": {k: {"preset": v[0], "overrides": v[1]} for k, v in VARIANTS.items()},
            "rows": rows,
        },
    )
    (Path(args.results) / "faces-mini.md").write_text(markdown(rows) + "\n")
    for row in ran:  # the grids of the same seeds before and after, for the README: the default and the paper's
        grid = eval_folder(Path(args.out) / f"{row['target']}-{row['variant']}{tag}") / "grid.png"
        if row["variant"] in GRID_VARIANTS and grid.exists():
            shutil.copyfile(grid, Path(args.results) / f"faces-mini-{row['target']}-{row['variant']}.png")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
