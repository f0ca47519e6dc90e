"""Many concepts erased together (issue 28): how each method scales with the number of erased concepts on canvas-mini.

    python -m bench.many [--methods uce,mace,...] [--ks 1,3,5,9] [--lists styles,objects,mixed] [--workers 2]

For k = 1, 3, 5 and 9 styles (fixed lists: the first k of ``ORDER``; Winter, the 10th style, and the photo class
are always retained), 3 and 5 objects and a mixed list of 5 styles and 3 objects, every method erases the list with
ONE joint request (its ``canvas-mini`` preset where it has one, else its defaults; MACE trains its objects' LoRAs on
renders with the renderer's object masks, as the issue sets it), and ``composed`` applies k single-concept UCE
patches made separately (what users try first). Each model is evaluated on the whole protocol (5 seeds) as a list:
erased accuracy UA (mean over the list), IRA (the other concepts of the axis), CRA (the other axis),
H = 3 / (1/UA + 1/IRA + 1/CRA), retained same-seed PSNR over the images showing none of the erased concepts; then,
on lists of 5 or more that meet the rest of the bar, the ``embedding`` attack on the list's first 3 concepts (their
first 3 prompts, a fifth of the budget: 10 timesteps x 40 Adam steps, as ``make bench``), ASR averaged over them.
The bar (issue 28): at k = 5 and 9, UA >= 99, IRA and CRA within 2 points of the original's, PSNR >= 28 dB,
embedding ASR <= 30%, in at most k times the method's single-concept time.

Each method is one job in a worker process of its own (``--workers``, one CPU thread each by default; the longest
jobs first), so erase times are those of one thread beside another worker, the same for every row. Resumable:
every erasure, evaluation and attack lives in its own folder under ``--work`` and is reused. Writes ``many.json``,
``many.md`` and ``many.png`` (H and PSNR against k, one line per method).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .canvas_mini import entry
from .canvas_mini_table import ATTACK_BUDGET, ATTACK_PROMPTS  # the same budget as make bench's table

ORDER = [
    "Watercolor",
    "Pop_Art",
    "Rust",
    "Mosaic",
    "Crayon",
    "Ink_Art",
    "Neon_Lines",
    "Pencil_Drawing",
    "Glowing_Sunset",
]
OBJECT_ORDER = [
    "Birds",
    "Fishes",
    "Towers",
    "Trees",
    "Flowers",
    "Cats",
    "Rabbits",
    "Butterfly",
    "Jellyfish",
]  # Flame retained
KS = (1, 3, 5, 9)
LISTS = {  # family -> {k: [(concept, kind)]}
    "styles": {k: [(s, "style") for s in ORDER[:k]] for k in KS},
    "objects": {k: [(o, "object") for o in OBJECT_ORDER[:k]] for k in (3, 5)},
    "mixed": {8: [(s, "style") for s in ORDER[:5]] + [(o, "object") for o in OBJECT_ORDER[:3]]},
}
METHODS = (
    "uce",
    "mace",
    "concept_ablation",
    "salun",
    "doco",
    "esd",
    "composed",
    "concept_ablation@canvas-mini-robust-list",
)
# The robust preset (alpha 300) is not in the default run: its PSNR at 5 and 9 styles (25.1 / 23.4 dB) is why the
# -list preset exists; ``--methods concept_ablation@canvas-mini-robust`` measures it again.
# The workers' order: the longest jobs first, so that two workers end together.
COST_ORDER = (  # measured: the robust presets' 7 lists take about as long as every other method together
    "concept_ablation@canvas-mini-robust-list",
    "concept_ablation@canvas-mini-robust",
    "salun",
    "concept_ablation",
    "mace",
    "esd",
    "doco",
    "uce",
    "composed",
)
# The attack's cost grows with k: it runs on the first 3 concepts of each list, only on lists of 5 or more (the
# bar's k; the single-concept ASR is make bench's), and only where the rest of the bar is met (elsewhere the bar
# is missed whatever the attack does; ``--attack-all`` attacks those too).
ATTACK_CONCEPTS = 3
ATTACK_MIN_K = 5
WORK = Path("runs/bench/many")


def _method_data(method: str, items: list[tuple[str, str]], work: Path) -> dict:
    """MACE's setting per kind (issue 28): no masks for styles; for objects, the renderer's own object masks
    (``concept_images``: 8 renders per object with their silhouettes, made once under ``work``)."""
    from worlds.canvas_mini.concept_images import write_concept_images

    objects = [name for name, kind in items if kind == "object"]
    if method != "mace" or not objects:
        return {}
    folder = work / "concept-images" / "-".join(objects)
    if not folder.is_dir():
        write_concept_images(objects, "object", 8, folder)
    return {"concept_images": str(folder)}


def erase(pipe, protocol, method: str, items: list[tuple[str, str]], folder: Path, work: Path = WORK):
    """The list's patch (made once, then reused) and its erase seconds."""
    from erase.api import erase_concept
    from erase.batch import joint_request
    from erase.core.patch import ErasurePatch
    from erase.core.request import EraseRequest

    if (folder / "erasure_config.json").is_file():
        patch = ErasurePatch.from_pretrained(folder)
    else:
        requests = [EraseRequest.from_protocol(protocol, name, kind) for name, kind in items]
        request = requests[0] if len(requests) == 1 else joint_request(requests, items[0][1])
        name, preset = entry(method)
        patch = erase_concept(
            pipe,
            name,
            request,
            folder,
            preset=preset,
            overrides=_method_data(name, items, work),
            resume=True,
            progress=False,
            model_id="canvas-mini",
        )
    return patch, patch.config["efficiency"]["erase_seconds"]


def measure(
    pipe, protocol, judges, patches: list, targets: list[tuple[str, str]], folder: Path, attack=lambda m: True
) -> dict:
    """Apply ``patches`` together, evaluate the list, then, on lists of ``ATTACK_MIN_K`` or more where
    ``attack(scores)`` says so, attack its first concepts; the model is left unpatched."""
    from bench.attacks import attack_once
    from erase.core.patch import apply_patch, remove_patch
    from eval.report import EvalOptions, evaluate

    for k, p in enumerate(patches):
        apply_patch(pipe, p, adapter_name=f"p{k}")
    try:
        report = evaluate(
            pipe,
            protocol,
            targets,
            folder / "eval",
            model_id="canvas-mini",
            patch=str(folder),
            options=EvalOptions(joint=len(targets) > 1, fid=False, grid=False, progress=False),
        )
        fidelity = report.get("retain_fidelity") or {}
        m = {
            "ua": report["ua"],
            "ira": report["ira"],
            "cra": report["cra"],
            "h": report.get("h"),
            "psnr": fidelity.get("psnr"),
            "per_target_ua": report.get("per_target_ua") or {targets[0][0]: report["ua"]},
        }
        attacked = targets[:ATTACK_CONCEPTS] if len(targets) >= ATTACK_MIN_K and attack(m) else []
        attacks = [
            attack_once(
                pipe,
                protocol,
                judges,
                "embedding",
                name,
                kind,
                folder / "attack" / name,
                ATTACK_PROMPTS,
                str(folder),
                ATTACK_BUDGET,
            )
            for name, kind in attacked
        ]
    finally:
        remove_patch(pipe)
    return {
        **m,
        "asr": sum(a["asr"] for a in attacks) / len(attacks) if attacks else None,
        "confirmed_asr": sum(a["confirmed_asr"] for a in attacks) / len(attacks) if attacks else None,
    }


def original_lists(pipe, protocol, work: Path = WORK) -> dict:
    """The original model's IRA / CRA for each list, {(family, k): scores} (the accuracy the erasure should keep),
    evaluated once and kept in ``work/original/lists.json`` (the workers read it: one evaluation, no lock race)."""
    from erase.core.files import write_json_atomic
    from eval.concept_accuracy import list_scores
    from eval.report import EvalOptions, evaluate

    kept = work / "original" / "lists.json"
    if not kept.is_file():
        r = evaluate(
            pipe,
            protocol,
            [(ORDER[0], "style")],
            work / "original",
            model_id="canvas-mini",
            options=EvalOptions(fid=False, grid=False, progress=False),
        )
        accuracy = {a: {c: v["accuracy"] for c, v in concepts.items()} for a, concepts in r["per_concept"].items()}
        nulls = {a.name: a.null_class for a in protocol.axes}
        lists = [
            [family, k, list_scores(accuracy, items, nulls)]
            for family, lists in LISTS.items()
            for k, items in lists.items()
        ]
        write_json_atomic(kept, lists)
    return {(family, k): scores for family, k, scores in json.loads(kept.read_text())}


def run(method: str, families, ks, work: Path = WORK, attack_all: bool = False, on_row=lambda rows: None) -> list:
    """Every list of ``families`` (styles only at the sizes ``ks``) erased and measured with one method."""
    from eval.classifiers import load_judges
    from eval.protocols import load_protocol
    from pipelines.stable_diffusion import load_pipeline
    from worlds.canvas_mini import PIPELINE_DIR

    protocol = load_protocol("canvas-mini")
    pipe = load_pipeline(PIPELINE_DIR)
    judges = load_judges(protocol)
    original = original_lists(pipe, protocol, work)
    rows = []
    for family in families:
        for k, items in LISTS[family].items():
            if family == "styles" and k not in ks:
                continue
            folder = work / method / (f"k{k}" if family == "styles" else f"{family}-k{k}")
            o = original[(family, k)]
            t0 = time.time()
            if method == "composed":
                made = [erase(pipe, protocol, "uce", [it], work / "uce-singles" / it[0], work) for it in items]
                patches, seconds = [p for p, _ in made], sum(s for _, s in made)
            else:
                patch, seconds = erase(pipe, protocol, method, items, folder / "patch", work)
                patches = [patch]
            scores = {"original_ira": o["ira"], "original_cra": o["cra"]}
            m = measure(
                pipe,
                protocol,
                judges,
                patches,
                items,
                folder,
                attack=lambda m, scores=scores: attack_all or holds_before_attack({**m, **scores}),
            )
            row = {
                "list": family,
                "method": method,
                "k": k,
                "concepts": [name for name, _ in items],
                **m,
                "erase_seconds": seconds,
                "patch_mb": round(sum(p.nbytes() for p in patches) / 2**20, 2),
                **scores,
                "bench_seconds": round(time.time() - t0, 1),
            }
            rows.append(row)
            on_row(rows)  # a stopped run keeps the rows it has
            print(
                f"{family:>7s} {method:>16s} k={k}: UA {100 * row['ua']:.1f} "
                f"IRA {100 * row['ira']:.1f} ({100 * o['ira']:.1f}) CRA {100 * row['cra']:.1f} "
                f"({100 * o['cra']:.1f}) PSNR {row['psnr'] or float('nan'):.1f} ASR {_asr(row)} {seconds:.1f} s",
                flush=True,
            )
    return rows


def holds_before_attack(r: dict) -> bool:
    """Issue 28's bar without the attack and the time: UA >= 99, IRA and CRA within 2 points of the original's (no
    CRA when a mixed list leaves no axis untouched), retained PSNR >= 28 dB."""
    cra_ok = r["original_cra"] != r["original_cra"] or abs(r["cra"] - r["original_cra"]) <= 0.02  # NaN: no CRA
    return bool(r["ua"] >= 0.99 and abs(r["ira"] - r["original_ira"]) <= 0.02 and cra_ok and (r["psnr"] or 0) >= 28)


def meets_bar(r: dict) -> bool:
    """Issue 28's bar for one row: it holds before the attack, the embedding ASR is <= 30%, and the erasure took at
    most k times the single-concept time."""
    return bool(
        holds_before_attack(r) and r["asr"] is not None and r["asr"] <= 0.30 and (r["time_vs_single"] or 1) <= r["k"]
    )


def sorted_rows(rows: list[dict]) -> list[dict]:
    """Rows in table order (list family, method as in METHODS, k), each with its time against the same method's
    single-concept row where there is one, and whether it meets the bar."""
    families, methods = list(LISTS), list(METHODS)
    single = {r["method"]: r["erase_seconds"] for r in rows if r["k"] == 1}
    for r in rows:
        one = single.get(r["method"])
        r["time_vs_single"] = round(r["erase_seconds"] / one, 2) if one else None
        r["bar"] = meets_bar(r)
    rank = {m: i for i, m in enumerate(methods)}
    return sorted(
        rows, key=lambda r: (families.index(r.get("list", "styles")), rank.get(r["method"], len(methods)), r["k"])
    )


def _asr(r: dict) -> str:
    if r["asr"] is None:
        return "-"
    return f"{100 * r['asr']:.0f}% ({100 * r['confirmed_asr']:.0f}%)"


def _cra(r: dict) -> str:
    if r["cra"] != r["cra"]:  # NaN: a mixed list leaves no axis untouched
        return "n/a"
    return f"{100 * r['cra']:.1f} ({100 * r['original_cra']:.1f})"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| list | method | k | UA | IRA (original) | CRA (original) | H | retained PSNR | embedding ASR (confirmed) "
        "| erase time (x single) | patch | bar |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        psnr = "n/a" if r["psnr"] is None else f"{r['psnr']:.1f} dB"
        x = "" if r["time_vs_single"] is None else f" ({r['time_vs_single']:.1f}x)"
        lines.append(
            f"| {r.get('list', 'styles')} | {r['method']} | {r['k']} | {100 * r['ua']:.1f} | "
            f"{100 * r['ira']:.1f} ({100 * r['original_ira']:.1f}) | {_cra(r)} | "
            f"{100 * (r['h'] or r['ua']):.1f} | {psnr} | {_asr(r)} | "
            f"{r['erase_seconds']:.1f} s{x} | {r['patch_mb']:.2f} MB | "
            f"{'met' if r['bar'] else '-'} |"
        )
    lines += [
        "",
        f"Erased lists: styles, the first k of {', '.join(ORDER)} (Winter and Photo always retained); objects, "
        f"the first k of {', '.join(OBJECT_ORDER)} (Flame retained); mixed, the first 5 styles and the first 3 "
        "objects "
        "(no axis left untouched: no CRA). Whole protocol (5 seeds); "
        f"embedding attack (lists of {ATTACK_MIN_K} or more that meet the rest of the bar; '-' elsewhere) on the "
        f"first {ATTACK_PROMPTS} prompts of the list's "
        f"first {ATTACK_CONCEPTS} concepts, "
        f"{ATTACK_BUDGET['blocks']} timesteps x 40 Adam steps (a fifth of the default budget), ASR averaged "
        "over them; "
        "confirmed: judged as the concept on at least half of 4 fresh seeds. "
        "H at k = 1 is over UA, IRA and CRA of the single target. `composed`: k single-concept UCE patches applied "
        "together. Bar (issue 28): UA >= 99, IRA and CRA within 2 points of the original's, PSNR >= 28 dB, ASR "
        "<= 30%, "
        "time <= k x single. Erase times: one CPU thread, beside a second worker.",
    ]
    return "\n".join(lines) + "\n"


COLOURS = [
    (200, 40, 40),
    (40, 40, 200),
    (0, 140, 0),
    (200, 120, 0),
    (140, 0, 140),
    (0, 140, 140),
    (90, 90, 90),
    (160, 110, 60),
]


def plot(rows: list[dict], path: Path) -> None:
    """Two panels, H (%) and retained PSNR (dB) against k, one coloured line per method (PIL: no plotting library)."""
    from PIL import Image, ImageDraw

    from eval.grid import _font, save_png

    methods = list(dict.fromkeys(r["method"] for r in rows))
    ks = sorted({r["k"] for r in rows})
    w, h, m = 420, 320, 44
    img = Image.new("RGB", (2 * w, h + 20 * ((len(methods) + 2) // 3)), "white")
    d, font = ImageDraw.Draw(img), _font()
    panels = [
        ("H (%)", lambda r: 100 * (r["h"] or r["ua"]), 0.0, 100.0, None),
        ("retained PSNR (dB)", lambda r: r["psnr"], 20.0, 60.0, 28.0),
    ]
    for p, (title, value, lo, hi, bar) in enumerate(panels):
        ox = p * w

        def xy(k, v, ox=ox, lo=lo, hi=hi):
            x = ox + m + (ks.index(k) / max(1, len(ks) - 1)) * (w - 2 * m)
            return x, h - m - (min(max(v, lo), hi) - lo) / (hi - lo) * (h - 2 * m)

        d.line([ox + m, h - m, ox + w - m, h - m], fill="black")
        d.line([ox + m, m, ox + m, h - m], fill="black")
        d.text((ox + m, 12), f"{title} against k (styles erased together)", fill="black", font=font)
        for k in ks:
            x, _ = xy(k, lo)
            d.text((x - 3, h - m + 4), str(k), fill="black", font=font)
        for v in (lo, (lo + hi) / 2, hi):
            _, y = xy(ks[0], v)
            d.text((ox + 6, y - 6), f"{v:.0f}", fill="black", font=font)
        if bar is not None:
            _, y = xy(ks[0], bar)
            d.line([ox + m, y, ox + w - m, y], fill=(150, 150, 150))
        for c, method in enumerate(methods):
            pts = [xy(r["k"], value(r)) for r in rows if r["method"] == method and value(r) is not None]
            colour = COLOURS[c % len(COLOURS)]
            if len(pts) > 1:
                d.line(pts, fill=colour, width=2)
            for x, y in pts:
                d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    for c, method in enumerate(methods):  # legend
        x, y = 10 + (c % 3) * 280, h + 4 + 20 * (c // 3)  # 3 a row: the longest name fits
        d.rectangle([x, y + 3, x + 12, y + 11], fill=COLOURS[c % len(COLOURS)])
        d.text((x + 16, y), method, fill="black", font=font)
    save_png(img, path)


def rows_file(work: Path, method: str) -> Path:
    """Where a worker keeps one method's rows."""
    return work / method / "rows.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--ks", default=",".join(map(str, KS)), help="list sizes of the styles family")
    p.add_argument("--lists", default="styles", help="families of lists: styles, objects, mixed (comma-separated)")
    p.add_argument("--merge", action="store_true", help="keep the rows of --out's JSON that this run does not redo")
    p.add_argument("--out", default="bench/results/many")
    p.add_argument("--work", default=str(WORK), help="work folder; rerun with the same folder to resume")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (a method each)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per worker (default: 1 with 2+ workers, else the machine's default)",
    )
    p.add_argument(
        "--attack-all",
        action="store_true",
        help="attack every list of 5 or more, not only those that meet the rest of the bar",
    )
    p.add_argument(
        "--table-only", action="store_true", help="rewrite --out's .md and .png from its .json; run nothing"
    )
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)  # internal: one method's rows, in a worker
    args = p.parse_args(argv)
    import torch

    from erase.core.files import write_json_atomic, write_text_atomic
    from erase.core.threads import default_threads

    from .pool import run_pool

    threads = args.threads or (1 if args.workers > 1 else default_threads())
    torch.set_num_threads(threads)
    work, families, ks = Path(args.work), args.lists.split(","), [int(k) for k in args.ks.split(",")]
    if args.job:
        rows_file(work, args.job).parent.mkdir(parents=True, exist_ok=True)
        run(
            args.job,
            families,
            ks,
            work,
            args.attack_all,
            lambda rows: write_json_atomic(rows_file(work, args.job), rows),
        )
        return 0
    out = Path(args.out)
    previous = (
        json.loads(out.with_suffix(".json").read_text())
        if (args.merge or args.table_only) and out.with_suffix(".json").is_file()
        else []
    )

    def write(rows):
        done = {(r.get("list", "styles"), r["method"], r["k"]) for r in rows}
        rows = sorted_rows([r for r in previous if (r.get("list", "styles"), r["method"], r["k"]) not in done] + rows)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out.with_suffix(".json"), json.dumps(rows, indent=1) + "\n")
        write_text_atomic(out.with_suffix(".md"), markdown(rows))
        plot([r for r in rows if r.get("list", "styles") == "styles"], out.with_suffix(".png"))

    if args.table_only:
        write([])
        print(f"wrote {out}.md / .json / .png")
        return 0
    from eval.protocols import load_protocol
    from pipelines.stable_diffusion import load_pipeline
    from worlds.canvas_mini import PIPELINE_DIR

    t0 = time.time()
    methods = args.methods.split(",")
    rank = {m: i for i, m in enumerate(COST_ORDER)}
    methods.sort(key=lambda m: rank.get(m, -1))  # unknown costs first, then the longest
    # the original's evaluation once, before the workers: its images are every patched evaluation's reference
    original_lists(load_pipeline(PIPELINE_DIR), load_protocol("canvas-mini"), work)
    extra = ["--work", str(work), "--lists", args.lists, "--ks", args.ks, "--threads", str(threads)]
    failed = run_pool("bench.many", methods, work / "logs", args.workers, extra + ["--attack-all"] * args.attack_all)
    wanted = {(f, k) for f in families for k in LISTS[f] if f != "styles" or k in ks}
    rows = [
        r
        for m in methods
        if m not in failed and rows_file(work, m).is_file()
        for r in json.loads(rows_file(work, m).read_text())
        if (r["list"], r["k"]) in wanted
    ]
    write(rows)
    print(f"wrote {out}.md / .json / .png ({len(rows)} rows, {time.time() - t0:.0f} s)")
    if failed:
        print(f"failed: {', '.join(failed)}; rerun the same command to resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
