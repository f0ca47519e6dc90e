"""``erase eval`` and ``erase grid``: the evaluation subcommands of the CLI.

Both validate every option before loading a model or writing a byte: bad input
is one line on stderr and exit code 2, with no output folder or file created.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.files import check_writable
from .checks import check_finite, check_positive, validate_common_args
from .common import (
    UsageError,
    _common_model_args,
    _load,
    _protocol,
    _threads,
    command,
    default_device,
)

SAMPLER_HELP = "sampler to use instead of the protocol's (recorded as a deviation): "


def _sampler_names() -> list[str]:
    from eval.samplers import SAMPLERS

    return list(SAMPLERS)


@command("eval", "evaluate a model (optionally with a patch) on a protocol: UA / IRA / CRA, FID, CLIP, grid, report")
def _eval(p: argparse.ArgumentParser):
    _common_model_args(p)
    p.add_argument(
        "--protocol",
        default="canvas-mini",
        help="canvas-mini, faces-mini, unlearncanvas, or a JSON/YAML protocol file",
    )
    p.add_argument(
        "--target",
        action="append",
        default=None,
        help="concept that was erased (repeat for several targets of one model)",
    )
    p.add_argument(
        "--targets",
        default=None,
        help="concepts erased TOGETHER by one patch, A,B,C (each of --kind, or kind:name): "
        "report ua / ira / cra / h of the list (ira: the concepts left on those axes, cra: the other axes)",
    )
    p.add_argument(
        "--kind",
        action="append",
        required=True,
        help="axis of each --target: style or object on canvas-mini and unlearncanvas, attribute or identity on "
        "faces-mini (repeat, or give once for all)",
    )
    p.add_argument(
        "--out",
        required=True,
        help=(
            "output folder (report.json, report.md, grid.png, images/); refused if it holds another run or other files"
        ),
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted evaluation in --out (same model, patch and protocol): "
        "the images already generated are kept",
    )
    p.add_argument(
        "--seeds", type=int, default=None, help="use only the first N protocol seeds (recorded as a deviation)"
    )
    p.add_argument("--steps", type=int, default=None, help="sampler steps (recorded as a deviation)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (recorded as a deviation)")
    p.add_argument(
        "--sampler", default=None, choices=_sampler_names(), help=SAMPLER_HELP + ", ".join(_sampler_names())
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per generation and scoring batch")
    p.add_argument("--no-fid", action="store_true", help="skip FID")
    p.add_argument("--fid-weights", default=None, help="FID Inception weights file (real models)")
    p.add_argument(
        "--fid-reference",
        default=None,
        help="folder of real reference images for FID (real models; folders named after the target are skipped)",
    )
    p.add_argument(
        "--clip", default=None, help="open_clip model: a local-dir:FOLDER or an architecture name with --clip-weights"
    )
    p.add_argument(
        "--clip-weights", default=None, help="local weights file for an open_clip architecture given with --clip"
    )
    p.add_argument("--style-classifier", default=None, help="unlearncanvas: local style50.pth (ViT-L/16, 51 classes)")
    p.add_argument(
        "--object-classifier", default=None, help="unlearncanvas: local style50_cls.pth (ViT-L/16, 20 classes)"
    )
    p.add_argument(
        "--templates",
        default=None,
        help="file of other prompt templates (one per line, {style} and {object}): "
        "out-of-distribution UA / IRA / CRA, reported under 'ood'",
    )
    p.add_argument(
        "--no-fidelity",
        action="store_true",
        help="with --patch: skip same-seed retain fidelity against the original model "
        "(whose answer set is otherwise generated once per model and protocol, and cached)",
    )
    p.add_argument(
        "--lpips-weights",
        default=None,
        help="real models: local torchvision AlexNet / VGG16 weights (or a saved lpips.LPIPS "
        "state dict) for the LPIPS distance of retain fidelity; canvas-mini uses its classifiers' feature maps",
    )
    p.add_argument("--lpips-net", default="alex", choices=["alex", "vgg"], help="backbone of --lpips-weights")
    p.add_argument(
        "--attack",
        default=None,
        help="also attack every target (white-box prompt search) and report its success rate "
        "beside UA: unlearndiffatk, embedding or textual_inversion",
    )
    p.add_argument(
        "--attack-prompts",
        type=int,
        default=None,
        help="with --attack: attack only the first N prompts of each target (recorded)",
    )
    p.add_argument(
        "--attack-set",
        action="append",
        metavar="KEY=VALUE",
        help="with --attack: change an attack option, e.g. blocks=10",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    def run(args):
        from eval.attacks import make_attack
        from eval.protocols import load_templates
        from eval.report import EvalOptions, check_output_folder, evaluate, run_identity, summary_lines
        from eval.scoring import prepare_judging

        from .erasing import _parse_set

        validate_common_args(args)
        check_positive("--batch-size", args.batch_size)
        if args.steps is not None:
            check_positive("--steps", args.steps)
        check_finite("--guidance", args.guidance)
        attack_options = _parse_set(args.attack_set)
        if args.attack:
            make_attack(args.attack, attack_options)  # unknown attack or option: refused before anything loads
            if args.attack_prompts is not None:
                check_positive("--attack-prompts", args.attack_prompts)
        elif args.attack_prompts is not None or attack_options:
            raise UsageError("--attack-prompts and --attack-set need --attack NAME")
        if bool(args.target) == bool(args.targets):
            raise UsageError(
                "give --target NAME (repeatable; each target its own erasure) or --targets A,B,C "
                "(erased together), one of them"
            )
        protocol = _protocol(args).with_overrides(sampler=args.sampler)
        if args.targets:
            if len(args.kind) != 1:
                raise UsageError("with --targets give --kind once (or kind:name in the list)")
            from .erasing import parse_concept_list

            args.target, args.kind = map(list, zip(*parse_concept_list(args.targets, args.kind[0], protocol)))
        if len(args.kind) not in (1, len(args.target)):
            raise UsageError("give --kind once, or once per --target")
        kinds = args.kind if len(args.kind) == len(args.target) else args.kind[:1] * len(args.target)
        templates = load_templates(args.templates, protocol) if args.templates else None
        targets = list(zip(args.target, kinds))
        for name, kind in targets:
            protocol.check_target(name, kind)
        out = Path(args.out)
        check_writable("--out", out, folder=True)
        check_output_folder(out, run_identity(args.model_id, args.patch, protocol), resume=args.resume)
        _threads(args)
        opts = EvalOptions(
            templates=templates,
            batch_size=args.batch_size,
            fid=not args.no_fid,
            clip=args.clip,
            clip_weights=args.clip_weights,
            fid_weights=args.fid_weights,
            fid_reference=args.fid_reference,
            style_classifier=args.style_classifier,
            object_classifier=args.object_classifier,
            device=default_device(args),
            progress=not args.quiet,
            fidelity=not args.no_fidelity,
            lpips_weights=args.lpips_weights,
            lpips_net=args.lpips_net,
            attack=args.attack,
            attack_prompts=args.attack_prompts,
            attack_options=attack_options,
            joint=bool(args.targets),
        )
        judging = prepare_judging(
            protocol, targets, opts
        )  # judges, CLIP, FID set-up: all checked before the model loads
        pipe, _ = _load(args)
        report = evaluate(
            pipe, protocol, targets, out, model_id=args.model_id, patch=args.patch, options=opts, judging=judging
        )
        for line in summary_lines(report):
            print(line)
        print(f"report: {out / 'report.md'}")

    return run


@command(
    "grid", "draw a labelled grid of generations (rows = styles, columns = objects), optionally original vs erased"
)
def _grid(p: argparse.ArgumentParser):
    _common_model_args(p)
    p.add_argument("--out", required=True, help="PNG file to write (refused if it exists, unless --overwrite)")
    p.add_argument(
        "--protocol",
        default="canvas-mini",
        help="canvas-mini, unlearncanvas, or a JSON/YAML protocol file (its sampler, guidance and size are used)",
    )
    p.add_argument("--styles", default=None, help="comma-separated subset of styles (rows)")
    p.add_argument("--objects", default=None, help="comma-separated subset of objects (columns)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the protocol's)")
    p.add_argument(
        "--sampler",
        default=None,
        choices=_sampler_names(),
        help="sampler to use instead of the protocol's: " + ", ".join(_sampler_names()),
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="with --patch: original and erased side by side, same seeds; each row is "
        "labelled with its same-seed PSNR",
    )
    p.add_argument(
        "--max-rows",
        type=int,
        default=None,
        help="with --compare: keep only the N rows that changed most (lowest PSNR first)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    def run(args):
        from eval.grid import compare_grid, image_grid, save_png
        from eval.protocols import load_protocol

        validate_common_args(args)
        if args.steps is not None:
            check_positive("--steps", args.steps)
        out = Path(args.out)
        if out.suffix.lower() != ".png":
            raise UsageError(f"--out must be a .png file, got {out}")
        check_writable("--out", out, folder=False)
        if out.exists() and not args.overwrite:
            raise UsageError(f"{out} exists; pass --overwrite or choose another file")
        if args.compare and not args.patch:
            raise UsageError("--compare needs --patch")
        if args.max_rows is not None:
            check_positive("--max-rows", args.max_rows)
            if not args.compare:
                raise UsageError("--max-rows needs --compare (rows are ranked by how much the patch changed them)")
        protocol = load_protocol(args.protocol).with_overrides(steps=args.steps, sampler=args.sampler)
        rows_axis, cols_axis = _grid_axes(protocol)
        styles = args.styles.split(",") if args.styles else rows_axis.concepts
        objects = args.objects.split(",") if args.objects else cols_axis.concepts
        unknown = [s for s in styles if s not in rows_axis.concepts] + [
            o for o in objects if o not in cols_axis.concepts
        ]
        if unknown:
            raise UsageError(
                f"{unknown[0]!r} is not a {rows_axis.name} or {cols_axis.name} of protocol {protocol.name!r}"
            )
        _threads(args)
        if args.compare:
            patch_path, args.patch = args.patch, None
            pipe, _ = _load(args)
            original = _grid_rows(pipe, protocol, styles, objects, args.seed)
            from erase.core.patch import ErasurePatch
            from pipelines.stable_diffusion import apply_patch

            apply_patch(pipe, ErasurePatch.from_pretrained(patch_path), scale=args.scale)
            erased = _grid_rows(pipe, protocol, styles, objects, args.seed)
            order, labels = _rank_rows(original, erased, styles, args.max_rows)
            img = compare_grid([original[i] for i in order], [erased[i] for i in order], labels, objects)
        else:
            pipe, _ = _load(args)
            img = image_grid(
                _grid_rows(pipe, protocol, styles, objects, args.seed),
                styles,
                objects,
                title=f"{args.model_id} seed {args.seed}",
            )
        save_png(img, out)
        print(f"wrote {out}")

    return run


def _rank_rows(
    original: list[list], erased: list[list], names: list[str], max_rows: int | None
) -> tuple[list[int], list[str]]:
    """Row order and labels of a comparison grid: each row's mean same-seed PSNR in its label; with ``max_rows``,
    only the rows that changed most, lowest PSNR first."""
    import numpy as np
    import torch

    from eval.fidelity import psnr

    def tensor(row):
        return torch.from_numpy(np.stack(row)).permute(0, 3, 1, 2).float() / 255

    values = [float(psnr(tensor(o), tensor(e)).mean()) for o, e in zip(original, erased)]
    order = sorted(range(len(names)), key=values.__getitem__)[:max_rows] if max_rows else list(range(len(names)))
    return order, [f"{names[i]} {values[i]:.1f} dB" for i in order]


def _grid_axes(protocol):
    """Rows and columns of a grid: the protocol's two axes (styles x objects on canvas-mini and unlearncanvas)."""
    if len(protocol.axes) != 2 or protocol.template is None:
        raise UsageError(
            f"erase grid draws two-axis text-prompt protocols; {protocol.name!r} has axes "
            f"{', '.join(protocol.axis_names)}"
        )
    return protocol.axes


def _grid_rows(pipe, protocol, rows: list[str], cols: list[str], seed: int) -> list[list]:
    """One generated image per (row concept, column concept), all with ``seed``, using the protocol's sampler."""
    from eval.generate import protocol_images

    prompts = [protocol.prompt(r, c) for r in rows for c in cols]
    imgs = protocol_images(pipe, protocol, prompts, [seed] * len(prompts))
    return [list(imgs[i * len(cols) : (i + 1) * len(cols)]) for i in range(len(rows))]
