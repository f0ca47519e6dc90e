"""``erase eval`` and ``erase grid``: the evaluation subcommands of the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError, _common_model_args, _load, _protocol, _threads, command


@command("eval", "evaluate a model (optionally with a patch) on a protocol: UA / IRA / CRA, FID, CLIP, grid, report")
def _eval(p: argparse.ArgumentParser):
    _common_model_args(p)
    p.add_argument("--protocol", default="canvas-mini", help="canvas-mini, unlearncanvas, or a JSON/YAML protocol file")
    p.add_argument("--target", action="append", required=True, help="concept that was erased (repeat for several targets of one model)")
    p.add_argument("--kind", action="append", choices=["style", "object"], required=True, help="kind of each --target (repeat, or give once for all)")
    p.add_argument("--out", required=True, help="output folder (report.json, report.md, grid.png, images/); refused if it holds another run")
    p.add_argument("--seeds", type=int, default=None, help="use only the first N protocol seeds (recorded as a deviation)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (recorded as a deviation)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (recorded as a deviation)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-fid", action="store_true", help="skip FID")
    p.add_argument("--fid-weights", default=None, help="FID Inception weights file (real models)")
    p.add_argument("--fid-reference", default=None, help="folder of real reference images for FID (real models; folders named after the target are skipped)")
    p.add_argument("--clip", default=None, help="open_clip model: a local-dir:FOLDER or an architecture name with --clip-weights")
    p.add_argument("--clip-weights", default=None)
    p.add_argument("--style-classifier", default=None, help="unlearncanvas: local style50.pth (ViT-L/16, 51 classes)")
    p.add_argument("--object-classifier", default=None, help="unlearncanvas: local style50_cls.pth (ViT-L/16, 20 classes)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    def run(args):
        from eval.report import EvalOptions, evaluate

        kinds = args.kind if len(args.kind) == len(args.target) else args.kind[:1] * len(args.target)
        if len(args.kind) not in (1, len(args.target)):
            raise UsageError("give --kind once, or once per --target")
        protocol = _protocol(args)
        targets = list(zip(args.target, kinds))
        for name, kind in targets:  # validate before any model is loaded or folder written
            protocol.check_target(name, kind)
        from eval.report import check_output_folder, run_identity

        check_output_folder(Path(args.out), run_identity(args.model, args.patch, protocol))
        _threads(args)
        pipe, device = _load(args)
        opts = EvalOptions(batch_size=args.batch_size, fid=not args.no_fid, clip=args.clip, clip_weights=args.clip_weights,
                           fid_weights=args.fid_weights, fid_reference=args.fid_reference, style_classifier=args.style_classifier,
                           object_classifier=args.object_classifier, device=device, progress=not args.quiet)
        report = evaluate(pipe, protocol, targets, args.out, model_id=args.model, patch=args.patch, options=opts)
        for t in report["targets"]:
            print(f"{t['target']:>16s} ({t['kind']}): UA {100 * t['ua']:5.1f}  IRA {100 * t['ira']:5.1f}  CRA {100 * t['cra']:5.1f}")
        print(f"report: {Path(args.out) / 'report.md'}")

    return run


@command("grid", "draw a labelled grid of generations (rows = styles, columns = objects), optionally original vs erased")
def _grid(p: argparse.ArgumentParser):
    _common_model_args(p)
    p.add_argument("--out", required=True, help="PNG file to write (refused if it exists, unless --overwrite)")
    p.add_argument("--protocol", default="canvas-mini")
    p.add_argument("--styles", default=None, help="comma-separated subset of styles (rows)")
    p.add_argument("--objects", default=None, help="comma-separated subset of objects (columns)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--compare", action="store_true", help="with --patch: original and erased side by side, same seeds")
    p.add_argument("--overwrite", action="store_true")

    def run(args):
        from eval.generate import generate
        from eval.grid import compare_grid, image_grid, save_png
        from eval.protocols import load_protocol

        out = Path(args.out)
        if out.suffix.lower() != ".png":
            raise UsageError(f"--out must be a .png file, got {out}")
        if out.exists() and not args.overwrite:
            raise UsageError(f"{out} exists; pass --overwrite or choose another file")
        if args.compare and not args.patch:
            raise UsageError("--compare needs --patch")
        protocol = load_protocol(args.protocol)
        styles = args.styles.split(",") if args.styles else protocol.styles
        objects = args.objects.split(",") if args.objects else protocol.objects
        unknown = [s for s in styles if s not in protocol.styles] + [o for o in objects if o not in protocol.objects]
        if unknown:
            raise UsageError(f"{unknown[0]!r} is not a style or object of protocol {protocol.name!r}")
        _threads(args)
        steps = args.steps or protocol.steps
        prompts = [protocol.prompt(s, o) for s in styles for o in objects]

        def rows(pipe):
            imgs = generate(pipe, prompts, [args.seed] * len(prompts), steps=steps, guidance=protocol.guidance,
                            height=protocol.resolution, width=protocol.resolution, progress=False)
            return [list(imgs[i * len(objects) : (i + 1) * len(objects)]) for i in range(len(styles))]

        if args.compare:
            patch_path, args.patch = args.patch, None
            pipe, _ = _load(args)
            original = rows(pipe)
            from erase.patch import ErasurePatch
            from pipelines.stable_diffusion import apply_patch

            apply_patch(pipe, ErasurePatch.from_pretrained(patch_path), scale=args.scale)
            img = compare_grid(original, rows(pipe), styles, objects)
        else:
            pipe, _ = _load(args)
            img = image_grid(rows(pipe), styles, objects, title=f"{args.model} seed {args.seed}")
        save_png(img, out)
        print(f"wrote {out}")

    return run


