"""The ``erase`` command line. Every subcommand maps onto the Python API.

    erase eval --model PATH --protocol canvas-mini --target Watercolor --kind style --out DIR
    erase grid --model PATH --out grid.png
    erase run salun --model PATH --concept Watercolor --kind style --out DIR
    erase methods

Errors are one line on stderr and exit code 2; nothing is written on bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

COMMANDS: dict[str, tuple] = {}


def command(name: str, help: str):
    """Register a subcommand: the decorated function adds arguments and returns the runner."""

    def deco(fn):
        COMMANDS[name] = (help, fn)
        return fn

    return deco


class UsageError(Exception):
    """Bad input the user can fix; printed as one line, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from eval.canvas_mini.assets import AssetError
    from eval.classifiers import ClassifierError
    from eval.protocols import ProtocolError
    from eval.report import OutputFolderError
    from pipelines.stable_diffusion import PipelineLoadError

    from erase.errors import EraseError

    return (UsageError, EraseError, AssetError, ClassifierError, ProtocolError, OutputFolderError, PipelineLoadError, FileNotFoundError)


def _threads(args) -> None:
    import torch

    torch.set_num_threads(args.threads)


def _common_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="diffusers pipeline folder, cached hub id (org/name) or single-file checkpoint")
    p.add_argument("--patch", default=None, help="erasure patch folder to apply before generating (erasure_patch.safetensors + erasure_config.json)")
    p.add_argument("--scale", type=float, default=1.0, help="patch strength (0 = original model, 1 = as trained)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="model precision (fp16/bf16 on GPU; default fp32)")
    p.add_argument("--xformers", action="store_true", help="use xformers attention (GPU, when installed); default PyTorch SDPA")


def _load(args):
    import torch

    from pipelines.stable_diffusion import load_pipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(args.model, device=device, dtype=args.dtype, xformers=args.xformers)
    if args.patch:
        from erase.patch import ErasurePatch
        from pipelines.stable_diffusion import apply_patch

        apply_patch(pipe, ErasurePatch.from_pretrained(args.patch), scale=args.scale)
    return pipe, device


def _protocol(args):
    from eval.protocols import load_protocol

    protocol = load_protocol(args.protocol)
    overrides = {}
    if args.seeds is not None:
        if args.seeds < 1:
            raise UsageError("--seeds must be at least 1")
        overrides["seeds"] = protocol.seeds[: args.seeds] if args.seeds <= len(protocol.seeds) else list(range(args.seeds))
    if args.steps is not None:
        overrides["steps"] = args.steps
    if getattr(args, "guidance", None) is not None:
        overrides["guidance"] = args.guidance
    return protocol.with_overrides(**overrides)


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


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    _register_optional_commands()
    parser = argparse.ArgumentParser(
        prog="erase",
        description="erasekit: erase concepts (styles, objects, identities) from generative image models, "
        "and prove it with numbers. Every subcommand works offline on the shipped canvas-mini model.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runners = {}
    for name, (help_text, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        runners[name] = fn(p)
    return parser, runners


def _register_optional_commands() -> None:
    """Subcommands that live next to their subsystem (erasure methods) register on import."""
    try:
        import erase.commands  # noqa: F401
    except ImportError:
        pass


def main(argv=None) -> int:
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        runners[args.command](args)
    except _user_errors() as e:
        print(f"erase {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"erase {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    # run through the importable module, so subcommands registered by erase.commands share its registry
    from erase.cli import main as _main

    sys.exit(_main())
