"""Evaluation of a latent-seeded protocol (a GAN world such as faces-mini): answer set -> judges -> metrics ->
report, the same steps as a prompted protocol's (``eval.report``), with what only a world knows handed over by it.

The world renders the answers (``World.answers``: every seed plain and asked for the target), names its judges
and its metrics (torchmetrics Metrics fed one shard of seeds at a time, ``World.metrics``) and its part of
report.md. Everything else is shared with canvas-mini: the output folder belongs to one run and is held while
written, the answer set is resumable (``eval.latent_answers``), an unpatched model's set is cached and a patched
model is compared with the original's cached set at the same seeds, and report.json / report.md / grid.png are
written atomically.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from erase.core.files import hold_folder, write_json_atomic, write_text_atomic
from erase.core.patch import applied_patches

from .answer_set import progress_bar
from .grid import image_grid, save_png
from .latent_answers import LatentAnswers
from .original_answers import original_answer_set, remember_original, reuse_original
from .protocols import Protocol, ProtocolError
from .run_folder import claim_output_folder, run_identity, versions
from .worlds import world_of

GRID_SEEDS = 12
GRID_ROWS = ("orig", "model", "orig_edit", "model_edit")
GRID_LABELS = ("original", "this model", "original asked", "model asked")


def _world(protocol: Protocol):
    world = world_of(protocol)
    if world is None or world.answers is None:
        raise ProtocolError(
            f"protocol {protocol.name!r} has no prompt template and no world that renders its answers; give a "
            "template, or a protocol of a latent-seeded world (faces-mini)"
        )
    return world


def check_latent_request(protocol: Protocol, targets: list[tuple[str, str]], opt) -> None:
    """What a latent-seeded evaluation cannot do, refused before anything loads."""
    _world(protocol)
    if len(targets) != 1 or opt.joint:
        raise ProtocolError(f"protocol {protocol.name!r} evaluates one target at a time (one --target)")
    if opt.templates or opt.attack:
        raise ProtocolError(
            f"--templates and --attack change the text prompt; protocol {protocol.name!r} has none "
            "(its generator is latent-seeded)"
        )


def _merge(into: dict, more: dict) -> dict:
    for k, v in more.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v
    return into


def evaluate_latent(
    pipe, protocol: Protocol, targets, out_dir: Path, *, model_id: str, patch: str | None, opt, judging
) -> dict:
    """Render (or reuse) the answer set of ``pipe`` and, when it carries a patch, the original's (cached); feed the
    world's metrics shard by shard; write report.json / report.md / grid.png into ``out_dir``; return the report.
    The world's renderer is set up (its edit trained or read from the cache) before the folder is claimed, so a
    model the world cannot render is refused with nothing written."""
    check_latent_request(protocol, targets, opt)
    world = _world(protocol)
    ((target, kind),) = targets
    answers = LatentAnswers(protocol, world.answers(pipe, protocol, target, kind, progress=opt.progress))
    patched = bool(applied_patches(pipe))
    with hold_folder(out_dir, "erase eval"):
        # the renderer is part of the run: images of another edit (another mapper) are never read as this one's
        claim_output_folder(out_dir, {**run_identity(model_id, patch, protocol), "answers": answers.key})
        t0 = time.time()
        images = out_dir / "images"
        original = original_answer_set(pipe, protocol, progress=opt.progress, answers=answers) if patched else None
        t_original = time.time() - t0
        if not patched and opt.fidelity:
            reuse_original(pipe, protocol, images, answers=answers)
        stats = answers.generate(images, progress=opt.progress)
        answers.check(images)
        if not patched and opt.fidelity:
            remember_original(pipe, protocol, images, answers=answers)
        t_generate = time.time() - t0 - t_original
        metrics = world.metrics(protocol, target, kind, judging.judges, patched=patched and opt.fidelity)
        grid: dict[str, list[torch.Tensor]] = {s: [] for s in GRID_ROWS}
        with progress_bar(len(protocol.seeds), "erase eval: scoring", enabled=opt.progress) as bar:
            for seeds in answers.shards:
                model = {v: answers.read(images, v, seeds) for v in answers.variants}
                orig = {v: answers.read(original, v, seeds) for v in answers.variants} if patched else model
                batch = {"model": model["plain"], "model_edit": model[target], "orig": orig["plain"]}
                batch["orig_edit"] = orig[target]
                for m in metrics:
                    m.update(batch)
                for s in GRID_ROWS:
                    if sum(len(x) for x in grid[s]) < GRID_SEEDS:
                        grid[s].append(batch[s][:GRID_SEEDS])
                bar.update(len(seeds))
        results: dict = {}
        for m in metrics:
            _merge(results, m.compute())
        report = {
            "protocol": protocol.to_dict(),
            "target": target,
            "kind": kind,
            "phrase": protocol.phrases.get(target),
            "model": str(model_id),
            "patch": patch,
            "versions": versions(),
            "deviations": list(protocol.deviations),
            **results,
            "edit": answers.renderer.record,
            "images": stats,
        }
        if not (patched and opt.fidelity):
            report["retain_fidelity_note"] = (
                "skipped (--no-fidelity)"
                if not opt.fidelity
                else "the evaluated model carries no patch: it is the original"
            )
        report["grid"] = _write_grid(grid, out_dir / "grid.png", model_id) if opt.grid else None
        report["seconds"] = {
            "original": round(t_original, 1),
            "generate": round(t_generate, 1),
            "score": round(time.time() - t0 - t_original - t_generate, 1),
            "total": round(time.time() - t0, 1),
        }
        write_json_atomic(out_dir / "report.json", report)
        write_text_atomic(out_dir / "report.md", render_markdown(report, world))
        return report


def _write_grid(rows: dict[str, list[torch.Tensor]], path: Path, model_id: str) -> str:
    """Rows: original, this model, original asked for the target, this model asked for it; a column per seed."""
    cells = [
        list((torch.cat(rows[s])[:GRID_SEEDS].clamp(0, 1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy())
        for s in GRID_ROWS
    ]
    n = len(cells[0])
    save_png(image_grid(cells, list(GRID_LABELS), [f"seed {k}" for k in range(n)], scale=3, title=str(model_id)), path)
    return path.name


def _plural(word: str) -> str:
    return word[:-1] + "ies" if word.endswith("y") else word + "s"


def render_markdown(r: dict, world) -> str:
    p = r["protocol"]
    sizes = " x ".join(f"{len(a['concepts'])} {_plural(a['name'])}" for a in p["axes"])
    lines = [
        f"# Evaluation report: {r['model']}" + (f" + patch {r['patch']}" if r["patch"] else ""),
        "",
        f"Protocol **{p['name']}**: {sizes}, {len(p['seeds'])} seeds (latent-seeded: seed k is the generator's z of "
        f"seed k), {p['resolution']} px. Target **{r['target']}** ({r['kind']}).",
        "",
        *world.report_lines(r),
        "",
        "## Same-seed retain fidelity",
        "",
    ]
    f = r.get("retain_fidelity")
    if f:
        lines.append(
            f"Every seed's render against the original's at the same seed ({f['n']} seeds): PSNR {f['psnr']:.1f} dB, "
            f"perceptual {f['perceptual']:.3f}"
            + (
                f"; on the {f['n_without_target']} seeds whose original lacks the target: PSNR "
                f"{f['psnr_without_target']:.1f} dB, perceptual {f['perceptual_without_target']:.3f}."
                if f.get("psnr_without_target") is not None
                else "."
            )
        )
    else:
        lines.append(f"{r.get('retain_fidelity_note', 'not measured')}.")
    if r["deviations"]:
        lines += ["", "## Deviations from the protocol", ""] + [f"- {d}" for d in r["deviations"]]
    s, im = r["seconds"], r["images"]
    lines += [
        "",
        f"Images: {im['total']} rendered or reused ({im['generated']} rendered now). Time: original's answer set "
        f"{s['original']} s, rendering {s['generate']} s, scoring {s['score']} s, total {s['total']} s.",
        "",
    ]
    if r.get("grid"):
        lines += [f"![{' / '.join(GRID_LABELS)}]({r['grid']})", ""]
    return "\n".join(lines)


def summary(report: dict) -> str:
    """The report in one line (the world's)."""
    return _world(Protocol.from_dict(report["protocol"])).summary(report)
