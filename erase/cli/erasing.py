"""``erase run`` and ``erase methods``: the erasure subcommands of the CLI."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..core.request import KINDS
from .common import UsageError, _common_model_args, _load, _threads, command


def _parse_set(items: list[str]) -> dict:
    """--set key=value (value parsed as JSON when it parses, else kept as a string; types are checked later)."""
    out = {}
    for item in items or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise UsageError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def build_request(args):
    """From a protocol when the concept belongs to one (canvas-mini by default), else from prompt templates."""
    from eval.protocols import load_protocol

    from ..core.request import EraseRequest

    if args.concepts:
        if args.concept:
            raise UsageError("give the concepts either with --concept A,B,... or with --concepts FILE, not both")
        args.concept = ",".join(_concept_lines(args.concepts))
    if not args.concept or not args.concept.strip():
        raise UsageError("the concept to erase is empty; pass --concept NAME (or A,B,C to erase several at once)")
    if args.protocol != "none":
        protocol = load_protocol(args.protocol)
        if "," in args.concept:
            return joint_protocol_request(
                protocol, args.concept, args.kind, anchor=args.anchor, seed=args.seed
            ), protocol
        return EraseRequest.from_protocol(
            protocol, args.concept, args.kind, anchor=args.anchor, seed=args.seed
        ), protocol
    if "," in args.concept:
        raise UsageError(
            "erasing several concepts at once needs a protocol (--protocol canvas-mini or a protocol file)"
        )
    retain = [r.strip() for r in (args.retain or "").split(",") if r.strip()]
    return EraseRequest.from_templates(args.concept, args.kind, args.anchor, retain=retain, seed=args.seed), None


def _concept_lines(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--concepts {p} is not a file; pass a text file with one concept per line")
    return [c for c in (line.split("#", 1)[0].strip() for line in p.read_text().splitlines()) if c]


def parse_concept_list(text: str, kind: str, protocol) -> list[tuple[str, str]]:
    """``A,B,C`` (each of --kind) or ``style:A,object:B`` -> [(concept, kind)], checked against the protocol: no
    empty list, no concept twice or on two axes, and something of each axis left to retain."""
    items = []
    for raw in text.split(","):
        raw = raw.strip()
        if not raw:
            raise UsageError(f"the concept list {text!r} has an empty entry; separate concepts with single commas")
        k, _, name = raw.rpartition(":")
        items.append((name.strip(), (k.strip() or kind)))
    names = [n for n, _ in items]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        kinds = sorted({k for n, k in items if n == twice})
        where = f"on two axes ({' and '.join(kinds)})" if len(kinds) > 1 else "twice"
        raise UsageError(f"the concept list names {twice!r} {where}; list each concept once")
    for name, k in items:
        try:
            protocol.check_target(name, k)
        except ValueError as e:
            raise UsageError(str(e)) from None
    for k in {k for _, k in items}:
        axis = protocol.axis(k)
        left = [c for c in axis.targets if c not in names]
        if not left:
            raise UsageError(
                f"the list erases every {k} of protocol {protocol.name!r} ({len(axis.targets)}); nothing of that axis "
                "would be left to retain: leave at least one out"
            )
    return items


def joint_protocol_request(protocol, text: str, kind: str, *, anchor: str | None, seed: int):
    """One request that erases every concept of the list at once (as ``erase batch --joint`` does)."""
    from ..batch import joint_request
    from ..core.request import EraseRequest

    items = parse_concept_list(text, kind, protocol)
    requests = [EraseRequest.from_protocol(protocol, name, k, anchor=anchor, seed=seed) for name, k in items]
    return joint_request(requests, kind)


def check_model_path(model: str) -> None:
    """A local --model path must exist (hub ids like org/name are looked up in the cache later)."""
    path = Path(model)
    looks_local = (
        model.startswith((".", "/", "~"))
        or path.suffix in (".safetensors", ".ckpt")
        or "/" not in model
        or path.exists()
    )
    if path.suffix.lower() == ".pkl":  # refused before anything opens it: unpickling an NVIDIA generator runs its code
        from pipelines.stylegan import StyleGANLoadError, refuse_pickle

        try:
            refuse_pickle(path)
        except StyleGANLoadError as e:
            raise UsageError(str(e)) from None
    if looks_local and not path.exists():
        raise UsageError(
            f"--model {model} does not exist; pass a diffusers pipeline folder, a cached hub id "
            "(org/name) or a checkpoint file"
        )
    if path.is_dir() and (path / "generator.safetensors").exists() and not (path / "config.json").exists():
        raise UsageError(
            f"--model {model} holds generator.safetensors but no config.json; a StyleGAN folder needs both "
            "(StyleGANPipeline.save_pretrained writes them)"
        )


def _default_protocol(model: str) -> str:
    """The protocol of the world whose shipped model ``model`` is, else none."""
    from eval.worlds import world_of_model

    return world_of_model(model) or "none"


def guides_for(method: str, protocol):
    """The guides a method consults (Text-to-Unlearn's CLIP, perceptual and identity
    networks), from the protocol's world."""
    from ..core.registry import get_method

    if not getattr(get_method(method).eraser_cls, "needs_guides", False):
        return None
    from eval.worlds import world_of

    world = world_of(protocol)
    if world is None or world.guides is None:
        raise UsageError(
            f"{method} needs guides (CLIP, perceptual and identity networks): the CLI builds them for a "
            "world that ships them (--protocol faces-mini); for other models pass "
            "guides=erase.core.guides.Guides(...) to erase.api.erase_concept"
        )
    return world.guides()


@command("run", "erase a concept with a method and save the patch (optionally evaluate the erased model)")
def _run(p):
    p.add_argument("method", help="erasure method (see `erase methods`)")
    _common_model_args(p)
    p.add_argument(
        "--concept",
        default=None,
        help="concept to erase, e.g. Watercolor; several at once: Watercolor,Rust,Crayon "
        "(each of --kind, or kind:name for a mixed list)",
    )
    p.add_argument(
        "--concepts", default=None, help="a text file of concepts to erase together, one per line (# comments)"
    )
    p.add_argument("--kind", required=True, choices=list(KINDS))
    p.add_argument(
        "--anchor",
        default=None,
        help="what the concept should become (default from the protocol: Photo style / the next object)",
    )
    p.add_argument("--retain", default=None, help="comma-separated concepts to keep (models without a protocol)")
    p.add_argument(
        "--protocol",
        default=None,
        help=(
            "canvas-mini, unlearncanvas, a protocol file, or none (default: canvas-mini for "
            "the shipped model, else none)"
        ),
    )
    p.add_argument(
        "--out", required=True, help="output folder for the patch, resolved_config.json and train_log.jsonl"
    )
    p.add_argument("--preset", default=None, help="method preset (assets/presets/<method>/NAME.json) or a JSON file")
    p.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override any method option, e.g. --set alpha=10"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out (same settings only); a finished one is kept",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a patch or an interrupted run already in --out")
    p.add_argument(
        "--eval", action="store_true", help="evaluate the erased model on the protocol (report in OUT/eval)"
    )
    p.add_argument("--eval-seeds", type=int, default=None, help="with --eval: use only the first N protocol seeds")
    p.add_argument("--quiet", action="store_true")

    def run(args):
        from ..api import check_out_dir, erase_concept, resolve_config, run_identity

        # validate everything before a model is loaded or a byte is written
        from ..core.registry import canonical_method
        from .checks import validate_common_args

        args.method = canonical_method(args.method)
        if args.patch:
            raise UsageError("erase run trains on the base model; --patch is only for eval and grid")
        validate_common_args(args)
        check_model_path(args.model)
        if args.eval_seeds is not None and args.eval_seeds < 1:
            raise UsageError("--eval-seeds must be at least 1")
        out = Path(args.out)
        args.protocol = args.protocol or _default_protocol(args.model)
        request, protocol = build_request(args)
        overrides = _parse_set(args.set)
        if args.steps is not None:
            overrides["steps"] = args.steps
        cfg = resolve_config(args.method, args.preset, overrides, request.kind)
        if args.eval and protocol is None:
            raise UsageError("--eval needs a protocol (--protocol canvas-mini|unlearncanvas|FILE)")
        guides = guides_for(args.method, protocol)
        check_out_dir(
            out,
            run_identity(args.method, cfg, request, args.model_id, guides),
            resume=args.resume,
            overwrite=args.overwrite,
        )
        _threads(args)
        pipe, device = _load(args)
        patch = erase_concept(
            pipe,
            args.method,
            request,
            out,
            preset=args.preset,
            config=cfg,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.quiet,
            model_id=args.model_id,
            guides=guides,
        )
        eff = patch.config["efficiency"]
        print(
            f"patch: {out} ({eff['patch_bytes'] / 1e6:.2f} MB, {eff['erase_seconds']:.0f} s, peak memory "
            f"{eff['peak_memory_bytes'] / 2**30:.2f} GiB)"
        )
        if args.eval:
            from erase.core.patch import apply_patch
            from eval.report import EvalOptions, evaluate, summary_lines

            apply_patch(pipe, patch)
            if args.eval_seeds:
                protocol = protocol.with_overrides(seeds=protocol.seeds[: args.eval_seeds])
            joint = "," in args.concept
            targets = parse_concept_list(args.concept, args.kind, protocol) if joint else [(args.concept, args.kind)]
            report = evaluate(
                pipe,
                protocol,
                targets,
                out / "eval",
                model_id=args.model_id,
                patch=str(out),
                options=EvalOptions(device=device, progress=not args.quiet, joint=joint),
            )
            for line in summary_lines(report):
                print(line)
            print(f"report: {out / 'eval' / 'report.md'}")

    return run


@command("methods", "list the erasure methods and their presets; with a METHOD, its options (as a preset sets them)")
def _methods(p):
    p.add_argument("method", nargs="?", default=None, help="show this method's options, their values and what they do")
    p.add_argument("--preset", default=None, help="with METHOD: show the values this preset sets")

    def run(args):

        from ..api import list_presets, preset_kinds, resolve_config
        from ..core.registry import config_options, get_method, list_methods

        if args.method is None:
            if args.preset:
                raise UsageError("--preset needs a METHOD: erase methods METHOD --preset NAME")
            for name in list_methods():
                spec = get_method(name)
                presets = ", ".join(list_presets(name)) or "-"
                print(f"{name:10s} {spec.summary}\n{'':10s} model: {spec.eraser_cls.model_family}; presets: {presets}")
            return
        spec = get_method(args.method)
        values = asdict(resolve_config(args.method, args.preset))
        print(f"{spec.name}: {spec.summary}\npresets: {', '.join(list_presets(spec.name)) or '-'}")
        print(f"options ({'preset ' + args.preset if args.preset else 'defaults'}; change any with --set KEY=VALUE):")
        for name, _, help_text in config_options(spec.config_cls):
            print(f"  {name:18s} {json.dumps(values[name]):>16s}  {help_text}")
        for kind, fields_ in preset_kinds(args.method, args.preset).items():
            print(f"for {kind} concepts the preset also sets: {json.dumps(fields_)}")

    return run
