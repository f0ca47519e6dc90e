"""``erase attack``: try to bring an erased concept back by searching the prompt
(white-box, judged by the protocol)."""

from __future__ import annotations

import argparse
import pkgutil
from pathlib import Path

from ..core.files import check_writable
from .checks import check_positive, validate_common_args
from .common import UsageError, _common_model_args, _load, _protocol, _threads, command, default_device
from .erasing import _parse_set, check_model_path


def _attack_names() -> list[str]:
    """The attack files of eval/attacks (one attack each, named like its file), found without importing torch."""

    import eval.attacks.registry as registry

    folder = [str(Path(registry.__file__).parent)]
    return sorted(
        m.name
        for m in pkgutil.iter_modules(folder)
        if m.name not in registry.NOT_ATTACKS and not m.name.startswith("_")
    )


@command(
    "attack",
    "attack an erased model: search the prompt (UnlearnDiffAtk, soft prompt, textual inversion) until the judge "
    "sees the concept again; attack success rate beside the pre-attack rate",
)
def _attack(p: argparse.ArgumentParser):
    _common_model_args(p)
    p.add_argument(
        "--protocol", default="canvas-mini", help="canvas-mini, unlearncanvas, or a JSON/YAML protocol file"
    )
    p.add_argument("--target", required=True, help="the erased concept to bring back")
    p.add_argument("--kind", required=True, help="its axis: style or object on canvas-mini and unlearncanvas")
    p.add_argument("--attack", default="unlearndiffatk", help="attack: " + ", ".join(_attack_names()))
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="change an attack option, e.g. --set blocks=10 (see the attack's docs)",
    )
    p.add_argument("--out", required=True, help="output folder (attack.json, attack.md, grid.png, images/)")
    p.add_argument(
        "--prompts",
        type=int,
        default=None,
        help="attack only the first N of the target's prompts (seed-major; recorded as a deviation)",
    )
    p.add_argument(
        "--without-concept",
        action="store_true",
        help="start from the prompts with the concept's word removed "
        "(on the original model: the sanity check that the attack can find the concept at all)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted attack in --out (same settings only)"
    )
    p.add_argument(
        "--seeds", type=int, default=None, help="use only the first N protocol seeds (recorded as a deviation)"
    )
    p.add_argument("--steps", type=int, default=None, help="sampler steps (recorded as a deviation)")
    p.add_argument("--batch-size", type=int, default=64, help="images per generation batch")
    p.add_argument("--style-classifier", default=None, help="unlearncanvas: local style50.pth (ViT-L/16, 51 classes)")
    p.add_argument(
        "--object-classifier", default=None, help="unlearncanvas: local style50_cls.pth (ViT-L/16, 20 classes)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    def run(args):
        from eval.attacks import make_attack
        from eval.attacks.run import AttackOptions, attack_identity, attack_task, check_attack_folder, run_attack
        from eval.classifiers import load_judges
        from pipelines import is_stylegan

        validate_common_args(args)
        check_model_path(args.model)
        check_positive("--batch-size", args.batch_size)
        if args.prompts is not None:
            check_positive("--prompts", args.prompts)
        if args.steps is not None:
            check_positive("--steps", args.steps)
        if is_stylegan(args.model) or Path(args.model).suffix.lower() in (".pkl", ".pt", ".pth"):
            raise UsageError(
                f"--model {args.model_id} is a StyleGAN generator: it has no text encoder, and attacks search the "
                "text prompt; attack a Stable Diffusion pipeline"
            )
        attack = make_attack(args.attack, _parse_set(args.set))
        protocol = _protocol(args)
        options = AttackOptions(
            prompts=args.prompts,
            without_concept=args.without_concept,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
        out = Path(args.out)
        check_writable("--out", out, folder=True)
        identity = attack_identity(
            args.model_id, args.patch, protocol, args.target, args.kind, attack, options, args.scale
        )
        check_attack_folder(out, identity, args.resume)
        judges = load_judges(protocol, args.style_classifier, args.object_classifier, default_device(args))
        task = attack_task(protocol, args.target, args.kind, judges, options)
        _threads(args)
        pipe, _ = _load(args)
        if getattr(pipe, "text_encoder", None) is None:
            raise UsageError(f"--model {args.model_id} has no text encoder; attacks search the text prompt")
        r = run_attack(pipe, task, attack, out, identity=identity, resume=args.resume, options=options)
        q = r["judge_queries"]["mean_per_attacked_prompt"]
        print(
            f"{args.target} ({args.kind}), {r['attack']}: ASR {100 * r['asr']:.1f}% (pre-attack "
            f"{100 * r['pre_attack_rate']:.1f}%, {r['new_successes']} of {r['attacked_prompts']} attacked prompts "
            f"turned; judge queries per attacked prompt {'-' if q is None else f'{q:.1f}'} of at most "
            f"{r['budget']['max_judge_queries']}); {r['seconds_per_prompt']:.1f} s per prompt"
        )
        print(f"report: {out / 'attack.md'}")

    return run
