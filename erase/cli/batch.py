"""``erase batch``: erase every concept of a list, one patch each (or one joint patch), resumable and shardable.

    erase batch --model PATH --method salun --preset canvas-mini --concepts styles.txt --kind style --out DIR --eval

Under ``accelerate launch`` or ``torchrun`` with N processes (``-m erase batch ...``), each takes every N-th concept.

See ``erase.batch`` for the folder layout and what makes a job finished.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from ..core.files import check_writable
from .common import UsageError, _common_model_args, _threads, command, default_device


@command(
    "batch",
    "erase many concepts (one patch each, or --joint), resumable, sharded across "
    "processes; optional evaluation summary",
)
def _batch(p):
    _common_model_args(p)
    p.add_argument("--method", required=True, help="erasure method (see `erase methods`)")
    p.add_argument("--preset", default=None, help="method preset")
    p.add_argument(
        "--concepts", required=True, help="text file: one concept per line (blank lines and # comments ignored)"
    )
    p.add_argument("--kind", required=True, help="axis of the concepts: style or object on canvas-mini")
    p.add_argument("--protocol", default="canvas-mini", help="protocol the concepts belong to (prompts, evaluation)")
    p.add_argument("--out", required=True, help="batch folder: manifest.jsonl, batch.json, one folder per concept")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a method option for every job")
    p.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    p.add_argument("--joint", action="store_true", help="one patch that erases every concept together (DIR/joint)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the batch in --out: finished jobs whose patches verify are kept",
    )
    p.add_argument(
        "--eval",
        action="store_true",
        help="evaluate each patch on the protocol; summary.md / summary.json / heatmap.png",
    )
    p.add_argument("--eval-seeds", type=int, default=None, help="with --eval: only the first N protocol seeds")
    p.add_argument(
        "--attack",
        default=None,
        help="with --eval: also attack each erased concept (unlearndiffatk, embedding, textual_inversion); "
        "its success rate goes beside UA in the summary and the heat map",
    )
    p.add_argument(
        "--attack-prompts",
        type=int,
        default=None,
        help="with --attack: attack only the first N prompts of each concept",
    )
    p.add_argument("--attack-set", action="append", metavar="KEY=VALUE", help="with --attack: change an attack option")
    p.add_argument(
        "--save-pipelines",
        action="store_true",
        help="also save each erased pipeline (plain diffusers folder with a model card)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")

    def run(args):
        from eval.protocols import load_protocol

        from ..api import resolve_config
        from ..batch import claim_folder, joint_request, process_rank, rank_lock, read_concepts, run_jobs, shard
        from ..core.request import EraseRequest
        from .checks import validate_common_args
        from .erasing import _parse_set, check_model_path

        validate_common_args(args)
        check_model_path(args.model)
        if args.patch:
            raise UsageError("--patch is for eval and grid; erase batch starts from the model itself")
        if args.eval_seeds is not None and args.eval_seeds < 1:
            raise UsageError(f"--eval-seeds must be at least 1, got {args.eval_seeds}")
        attack_options = _parse_set(args.attack_set)
        if args.attack:
            from eval.attacks import make_attack

            if not args.eval:
                raise UsageError("--attack needs --eval (the attack runs on each evaluated patch)")
            make_attack(args.attack, attack_options)
            if args.attack_prompts is not None and args.attack_prompts < 1:
                raise UsageError(f"--attack-prompts must be at least 1, got {args.attack_prompts}")
        elif args.attack_prompts is not None or attack_options:
            raise UsageError("--attack-prompts and --attack-set need --attack NAME")
        protocol = load_protocol(args.protocol)
        if args.kind not in protocol.axis_names:
            raise UsageError(
                f"protocol {protocol.name!r} has no {args.kind!r} axis; its concept kinds are: "
                f"{', '.join(protocol.axis_names)}"
            )
        if args.eval and protocol.template is None:
            raise UsageError(
                f"erase batch --eval sums up UA / IRA / CRA of a prompted protocol; {protocol.name!r} is "
                f"latent-seeded: drop --eval and evaluate each patch with erase eval --protocol {protocol.name}"
            )
        concepts = read_concepts(args.concepts, protocol.concepts(args.kind), args.kind)
        overrides = _parse_set(args.set)
        if args.steps is not None:
            overrides["steps"] = args.steps
        # bad options fail here, before any folder exists
        cfg = resolve_config(args.method, args.preset, overrides, args.kind)
        requests = {c: EraseRequest.from_protocol(protocol, c, args.kind, seed=args.seed) for c in concepts}
        if args.joint:
            requests = {"joint": joint_request(list(requests.values()), args.kind)}
        out = Path(args.out)
        check_writable("--out", out, folder=True)
        rank, world = process_rank()

        identity = {
            "model": str(args.model_id),
            "method": args.method,
            "preset": args.preset,
            "config": asdict(cfg),
            "kind": args.kind,
            "protocol": protocol.name,
            "joint": args.joint,
            "seed": args.seed,
        }
        claim_folder(out, {**identity, "concepts": concepts}, resume=args.resume, rank=rank)
        mine = {c: r for c, r in requests.items() if c in shard(list(requests), rank, world)}
        _threads(args)
        with rank_lock(out, rank):
            pipe = _load_pipe(args, rank)
            evaluate_fn = _evaluator(pipe, protocol, args, out) if args.eval else None
            records = run_jobs(
                pipe,
                method=args.method,
                preset=args.preset,
                overrides=overrides,
                requests=mine,
                out=out,
                concepts=list(requests),
                model_id=args.model_id,
                evaluate_fn=evaluate_fn,
                progress=not args.quiet,
                log=(lambda s: None) if args.quiet else (lambda s: print(f"[rank {rank}] {s}" if world > 1 else s)),
            )
            if args.save_pipelines:
                _save_pipelines(pipe, out, mine, args, records)
        if args.eval:
            _write_summary(out, protocol, args.kind, list(requests))
        done = sum(1 for r in records if r.get("status") == "done")
        mine_note = f" (this process: {len(mine)} of them)" if world > 1 else ""
        print(f"{done}/{len(requests)} jobs done so far{mine_note}; manifest: {out / 'manifest.jsonl'}")

    return run


def _load_pipe(args, rank: int):
    from pipelines.stable_diffusion import load_pipeline

    device = default_device(args)
    if device.startswith("cuda") and ":" not in device:
        import torch

        device = f"cuda:{rank % max(1, torch.cuda.device_count())}"  # one device per process
    return load_pipeline(args.model, device=device, dtype=args.dtype, xformers=args.xformers)


def _evaluator(pipe, protocol, args, out: Path):
    """A function (concept, patch, folder) -> metrics: the patch applied, evaluated,
    removed; the original first, once."""
    from eval.report import EvalOptions, evaluate
    from pipelines.stable_diffusion import apply_patch, remove_patch

    from ..batch import process_rank
    from ..core.files import write_json_atomic
    from .erasing import _parse_set

    if args.eval_seeds:
        protocol = protocol.with_overrides(seeds=protocol.seeds[: args.eval_seeds])
    opts = EvalOptions(progress=not args.quiet, grid=False, device=default_device(args))
    # the original is only evaluated; each patch is also attacked when --attack asks for it
    attacked = replace(
        opts, attack=args.attack, attack_prompts=args.attack_prompts, attack_options=_parse_set(args.attack_set)
    )
    rank = process_rank()[0]  # each process evaluates the original in its own folder; the answer-set cache is shared
    original = evaluate(
        pipe,
        protocol,
        [(protocol.concepts(args.kind)[0], args.kind)],
        out / f".original-eval-rank{rank}",
        model_id=args.model_id,
        options=opts,
    )
    if rank == 0:
        write_json_atomic(out / "original.json", {"per_concept": original["per_concept"], "fid": original.get("fid")})

    def fn(concept: str, patch, folder: Path) -> dict:
        targets = [
            (c, args.kind)
            for c in (patch.config["request"]["concept"].split("+") if concept == "joint" else [concept])
        ]
        apply_patch(pipe, patch)
        try:
            r = evaluate(
                pipe, protocol, targets, folder / "eval", model_id=args.model_id, patch=str(folder), options=attacked
            )
        finally:
            remove_patch(pipe)
        names = [t[0] for t in targets]
        kept = {
            c: v["accuracy"]
            for c, v in r["per_concept"][args.kind].items()
            if c not in names and c != protocol.null_class(args.kind)
        }
        worst = min(kept, key=kept.get) if kept else None
        fidelity = r.get("retain_fidelity") or {}
        return {
            "ua": r["macro"]["ua"],
            "ira": r["macro"]["ira"],
            "cra": r["macro"]["cra"],
            "worst_kept": {"concept": worst, "accuracy": kept.get(worst)} if worst else None,
            "retained_psnr": fidelity.get("psnr"),
            "retained_perceptual": fidelity.get("perceptual"),
            "fid": (r.get("fid") or {}).get("value"),
            "accuracy": {c: v["accuracy"] for c, v in r["per_concept"][args.kind].items()},
            "eval_seconds": r["seconds"]["total"],
            **_attack_metrics(r),
        }

    return fn


def _attack_metrics(report: dict) -> dict:
    """The attack's mean success rates over the targets of one evaluation (empty without --attack)."""
    block = report.get("attack")
    if not block:
        return {}
    rows = block["targets"]
    confirmed = [t["confirmed_asr"] for t in rows if t["confirmed_asr"] is not None]
    return {
        "attack": {
            "name": block["attack"],
            "asr": sum(t["asr"] for t in rows) / len(rows),
            "confirmed_asr": sum(confirmed) / len(confirmed) if confirmed else None,
            "pre_attack_rate": sum(t["pre_attack_rate"] for t in rows) / len(rows),
            "prompts": rows[0]["prompts"],
        }
    }


def _save_pipelines(pipe, out: Path, jobs: dict, args, records: list[dict]) -> None:
    from erase.core.patch import ErasurePatch
    from pipelines.stable_diffusion import apply_patch, remove_patch, save_erased

    by_concept = {r["concept"]: r for r in records}
    for concept in jobs:
        target = out / concept / "pipeline"
        if target.exists():
            continue
        apply_patch(pipe, ErasurePatch.from_pretrained(out / concept))
        try:
            save_erased(pipe, target, metrics=(by_concept.get(concept) or {}).get("metrics"))
        finally:
            remove_patch(pipe)


def _write_summary(out: Path, protocol, kind: str, concepts: list[str]) -> None:
    """summary.json, summary.md (one row per concept) and heatmap.png (accuracy per erased x judged concept)."""
    from ..batch import read_manifest
    from ..core.files import write_json_atomic

    rows = [r for r in read_manifest(out) if r.get("status") == "done" and r.get("metrics")]
    if not rows:
        return
    write_json_atomic(out / "summary.json", {"kind": kind, "protocol": protocol.name, "rows": rows})

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}"

    attack = next((r["metrics"]["attack"]["name"] for r in rows if r["metrics"].get("attack")), None)
    asr_head = f" ASR ({attack}, confirmed) |" if attack else ""
    lines = [
        f"# Batch erasure summary ({len(rows)} of {len(concepts)} concepts)",
        "",
        f"| concept | UA |{asr_head} IRA | CRA | worst kept | retained PSNR (dB) | FID | seconds |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if attack else ""),
    ]
    for r in rows:
        m = r["metrics"]
        a = m.get("attack")
        asr = (f" {pct(a['asr'])} ({pct(a['confirmed_asr'])}) |" if a else " not attacked |") if attack else ""
        worst = f"{m['worst_kept']['concept']} {pct(m['worst_kept']['accuracy'])}" if m.get("worst_kept") else "n/a"
        psnr = f"{m['retained_psnr']:.1f}" if m.get("retained_psnr") is not None else "n/a"
        fid = f"{m['fid']:.2f}" if m.get("fid") is not None else "n/a"
        lines.append(
            f"| {r['concept']} | {pct(m['ua'])} |{asr} {pct(m['ira'])} | {pct(m['cra'])} | {worst} | {psnr} | "
            f"{fid} | {r['seconds']:.0f} |"
        )
    lines += ["", "![accuracy per erased and judged concept](heatmap.png)", ""]
    tmp = out / ".summary.md.tmp"
    tmp.write_text("\n".join(lines))
    tmp.replace(out / "summary.md")
    judged = protocol.concepts(kind)
    values = [[r["metrics"]["accuracy"].get(c, float("nan")) for c in judged] for r in rows]
    if attack:  # one more column: the attack's success rate on that row's erased concept
        judged = judged + [f"ASR {attack}"]
        values = [v + [(r["metrics"].get("attack") or {}).get("asr", float("nan"))] for v, r in zip(values, rows)]
    heatmap([r["concept"] for r in rows], judged, values, out / "heatmap.png")


def heatmap(row_labels: list[str], col_labels: list[str], values: list[list[float]], path: Path) -> None:
    """Accuracy per (erased concept, judged concept) as coloured cells with the value in each (white 0 -> blue 100)."""
    from PIL import Image, ImageDraw

    from eval.grid import _font, save_png

    cell, font = 34, _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = max(int(probe.textlength(s, font=font)) for s in row_labels) + 10
    top = max(int(probe.textlength(s, font=font)) for s in col_labels) + 10
    img = Image.new("RGB", (left + cell * len(col_labels) + 4, top + cell * len(row_labels) + 20), "white")
    draw = ImageDraw.Draw(img)
    for j, label in enumerate(col_labels):  # vertical column labels
        txt = Image.new("RGB", (top, 14), "white")
        ImageDraw.Draw(txt).text((2, 1), label, fill="black", font=font)
        img.paste(txt.rotate(90, expand=True), (left + j * cell + cell // 2 - 7, 2))
    for i, label in enumerate(row_labels):
        draw.text((4, top + i * cell + cell // 2 - 6), label, fill="black", font=font)
        for j, v in enumerate(values[i]):
            x, y = left + j * cell, top + i * cell
            shade = (200, 200, 200) if v != v else (int(255 - 215 * v), int(255 - 155 * v), 255)
            draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=shade)
            draw.text(
                (x + 4, y + cell // 2 - 6),
                "-" if v != v else f"{100 * v:.0f}",
                fill="black" if v < 0.6 or v != v else "white",
                font=font,
            )
    draw.text(
        (4, img.height - 16),
        "rows: erased concept; columns: judged concept; cells: accuracy (%), or attack success (%)",
        fill="black",
        font=font,
    )
    save_png(img, path)
