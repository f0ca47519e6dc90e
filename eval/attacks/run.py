"""Attack one target of a protocol and write attack.json, attack.md and a grid.

    task = attack_task(protocol, "Watercolor", "style", judges)
    result = run_attack(pipe, task, make_attack("unlearndiffatk"), "runs/attack-wc", identity={...})

1. **Pre-attack**: every prompt is generated once by the attacked model at its seed and judged; prompts
   already judged as the concept count as successes and are not attacked (UnlearnDiffAtk's Pre-ASR).
2. **Targets**: the original model's image of the concept's prompt at the same seed (patches taken off).
3. **Blocks**: the attack optimises for every still-unbroken prompt, then each candidate is generated at
   its prompt's seed and judged; a prompt stops at its first success. Steps and judge queries to success
   are recorded per prompt.
4. ASR = (pre-attack successes + new successes) / attacked prompts, reported beside the pre-attack rate.

The run checkpoints after every block (atomically; ``torch.load(weights_only=True)`` on resume), so Ctrl-C
or SIGKILL loses at most one block and ``resume`` finishes bit-identically.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from erase.core.errors import EraseError
from erase.core.files import write_json_atomic, write_text_atomic, writing
from erase.core.prompt_slots import MARKER, encode_slots, eos_states, slot_prompts
from eval.answer_set import progress_bar
from eval.classifiers import batched_logits
from eval.generate import protocol_images, to_tensor
from eval.grid import save_png
from eval.run_folder import check_output_folder, claim_output_folder, run_identity

from .base import Attack, AttackTask, check_prompts_fit, latents_of, original_images
from .registry import make_attack
from .report import attack_markdown, attack_summary, save_attack_grid

COMMAND = "erase attack"
CHECKPOINT = "checkpoint.pt"
CONFIRM_SEED_OFFSET = 20_000  # fresh seeds for confirming a success: never the protocol's
RESULT = "attack.json"


@dataclass
class AttackOptions:
    prompts: int | None = None  # attack only the first N prompts (seed-major order); recorded as a deviation
    without_concept: bool = (
        False  # start from the prompts with the concept's word removed (the sanity check on the original)
    )
    batch_size: int = 64
    progress: bool = True
    confirm_seeds: int = 4  # each success is re-judged at this many fresh seeds (0: no confirmation)


def _prompt_text(protocol, values: dict) -> str:
    return " ".join(protocol.prompt(**values).split())


def attack_task(protocol, target: str, kind: str, judges: dict, options: AttackOptions | None = None) -> AttackTask:
    """The target's prompts on ``protocol`` (every concept of the other axes x every seed,
    seed-major), and its judge."""
    options = options or AttackOptions()
    if protocol.template is None:
        raise EraseError(
            f"protocol {protocol.name!r} has no text prompts (its generator is latent-seeded); "
            "attacks search the text prompt"
        )
    protocol.check_target(target, kind)
    names = protocol.axis_names
    at = names.index(kind)
    entries = [e for e in protocol.answer_set() if e[at] == target]
    entries.sort(key=lambda e: protocol.seeds.index(e[-1]))  # stable: within a seed, the other axes in label order
    total = len(entries)
    if options.prompts is not None:
        if options.prompts < 1:
            raise EraseError(f"--prompts must be at least 1, got {options.prompts}")
        entries = entries[: options.prompts]
    values = [dict(zip(names, e[:-1])) for e in entries]
    concept = [_prompt_text(protocol, v) for v in values]
    slots = [protocol.prompt(**{**v, kind: MARKER}) for v in values]
    plain = [_prompt_text(protocol, {**v, kind: ""}) for v in values] if options.without_concept else list(concept)
    classes = protocol.concepts(kind)
    info = {"prompts_available": total, "order": "seed-major: every prompt at the first seed, then the next seed"}
    return AttackTask(
        protocol,
        target,
        kind,
        plain,
        concept,
        [e[-1] for e in entries],
        judges[kind],
        classes.index(target),
        list(classes),
        slot_prompts=slots,
        info=info,
    )


@torch.no_grad()
def judge_images(task: AttackTask, images: np.ndarray) -> list[dict]:
    """Each image's judged class, its probability, the target's probability, and success (judged as the target)."""
    probs = torch.softmax(batched_logits(task.judge, to_tensor(images)), -1)
    top = probs.argmax(-1)
    return [
        {
            "class": task.classes[int(c)],
            "prob": float(probs[i, c]),
            "target_prob": float(probs[i, task.label]),
            "success": int(c) == task.label,
        }
        for i, c in enumerate(top)
    ]


def _generate(
    pipe, task: AttackTask, index: list[int], *, embeds: torch.Tensor | None = None, batch_size: int = 64
) -> np.ndarray:
    """The attacked model's images of prompts ``index`` at their own seeds (conditioned on ``embeds`` when given)."""
    return protocol_images(
        pipe,
        task.protocol,
        [task.prompts[i] for i in index],
        [task.seeds[i] for i in index],
        batch_size=batch_size,
        prompt_embeds=embeds,
    )


class frozen_model:
    """No gradients into the model's weights for the duration (the attack's variables are
    the only leaves), eval mode."""

    def __init__(self, pipe):
        self.modules = [m for m in (pipe.unet, pipe.text_encoder, pipe.vae) if m is not None]

    def __enter__(self):
        self.saved = [[p.requires_grad for p in m.parameters()] for m in self.modules]
        for m in self.modules:
            m.eval().requires_grad_(False)

    def __exit__(self, *exc):
        for m, flags in zip(self.modules, self.saved):
            for p, f in zip(m.parameters(), flags):
                p.requires_grad_(f)


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    save_png(Image.fromarray(image), path)


def _save_checkpoint(out: Path, state: dict) -> None:
    tmp = out / f".{CHECKPOINT}.{os.getpid()}.tmp"
    with writing(out / CHECKPOINT, cleanup=(tmp,)):  # out of space: the last checkpoint stays
        torch.save(state, tmp)
    os.replace(tmp, out / CHECKPOINT)


def _load_checkpoint(out: Path) -> dict | None:
    path = out / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint is one line, never a traceback
        raise EraseError(
            f"{path} cannot be read ({type(e).__name__}); delete it to restart the attack, or choose a new --out"
        ) from e


def attack_identity(
    model_id,
    patch: str | None,
    protocol,
    target: str,
    kind: str,
    attack: Attack,
    options: AttackOptions,
    scale: float | None = None,
) -> dict:
    """What makes two attack runs the same (the run.json of their folder): the model, the patch and its SHA-256, the
    protocol, the target, the attack with its whole config, the prompts attacked and how they start."""
    return {
        **run_identity(str(model_id), patch, protocol),
        "scale": scale,
        "target": target,
        "kind": kind,
        "attack": attack.name,
        "config": asdict(attack.config),
        "prompts": options.prompts,
        "without_concept": options.without_concept,
    }


def check_attack_folder(out: Path, identity: dict, resume: bool) -> None:
    """Refuse another run's folder, and this run's own folder without ``resume``; writes nothing."""
    check_output_folder(out, identity, COMMAND)
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise EraseError(
            f"output folder {out} is not empty; pass --resume to continue an interrupted attack "
            "there, or choose a new --out"
        )


def run_attack(
    pipe,
    task: AttackTask,
    attack: Attack,
    out_dir: str | Path,
    *,
    identity: dict,
    resume: bool = False,
    options: AttackOptions | None = None,
) -> dict:
    """Attack every prompt of ``task`` on ``pipe`` (the model under attack, patch applied) and write the results."""
    options = options or AttackOptions()
    out = Path(out_dir)
    check_attack_folder(out, identity, resume)
    if (out / RESULT).is_file():  # finished: resume returns it
        return json.loads((out / RESULT).read_text())
    claim_output_folder(out, identity, COMMAND)
    images_dir = out / "images"
    images_dir.mkdir(exist_ok=True)
    n = len(task)
    prompts = check_prompts_fit(pipe.tokenizer, attack.slot_texts(task), attack.n_slots)
    state = _load_checkpoint(out) if resume else None
    started = time.time()
    with frozen_model(pipe):
        rng = torch.Generator().manual_seed(attack.config.seed)
        state = state or _pre_attack(pipe, task, attack, images_dir, options)
        task.target_latents = state["target_latents"]
        attack.setup(pipe, task, prompts, rng)
        if "attack" in state:
            attack.load_state_dict(state["attack"])
            rng.set_state(state["rng"])
        records = state["records"]
        plain_states = eos_states(
            pipe.text_encoder, slot_prompts(pipe.tokenizer, [MARKER + " " + p for p in task.prompts], 0)
        )
        bar = progress_bar(
            attack.blocks, f"{attack.name} {task.target}", initial=state["block"], enabled=options.progress
        )
        bar.unit = "block"
        for block in range(state["block"], attack.blocks):
            active = [i for i in range(n) if not records[i]["success"]]
            if not active:
                break
            losses = attack.train_block(pipe, task, block, active, rng)
            rows = attack.candidate_rows(active)
            cond = _encode_candidates(pipe, prompts.subset(active), rows)
            adv = _generate(pipe, task, active, embeds=cond, batch_size=options.batch_size)
            verdicts = judge_images(task, adv)
            texts = attack.candidate_texts(pipe, task, active)
            similarity = torch.cosine_similarity(
                eos_states(pipe.text_encoder, prompts.subset(active), rows), plain_states[active], dim=-1
            )
            for j, i in enumerate(active):
                r = records[i]
                r.update(
                    steps=r["steps"] + int(losses.get("steps", 0)),
                    judge_queries=r["judge_queries"] + 1,
                    adversarial_prompt=texts[j],
                    judged=verdicts[j],
                    text_similarity=float(similarity[j]),
                    success=verdicts[j]["success"],
                    broken_at=block if verdicts[j]["success"] else None,
                )
                _save_png(images_dir / f"{i:03d}_adversarial.png", adv[j])
                if verdicts[j]["success"]:
                    state["success_rows"][i] = rows[j].detach().clone()
            state.update(
                block=block + 1,
                records=records,
                attack=attack.state_dict(),
                rng=rng.get_state(),
                elapsed=state["elapsed"] + time.time() - started,
            )
            started = time.time()
            _save_checkpoint(out, state)
            bar.update(1)
            bar.set_postfix(
                broken=f"{sum(r['success'] for r in records)}/{n}", loss=f"{losses.get('loss', float('nan')):.4f}"
            )
        bar.close()
        if options.confirm_seeds and "confirmed" not in state:
            state["confirmed"] = _confirm(pipe, task, prompts, state, options)
            _save_checkpoint(out, state)
    for r, c in zip(records, state.get("confirmed") or [None] * n):
        r["confirmation"] = c
    seconds = state["elapsed"] + time.time() - started
    result = attack_summary(task, attack, records, seconds, identity, options)
    write_json_atomic(out / RESULT, result)
    write_text_atomic(out / "attack.md", attack_markdown(result))
    save_attack_grid(out, result)
    return result


def _pre_attack(pipe, task: AttackTask, attack: Attack, images_dir: Path, options: AttackOptions) -> dict:
    """The run's first state: the original's image of every concept prompt (the targets), the attacked model's plain
    image of every prompt, judged (pre-attack successes are not attacked), one record per prompt."""
    n = len(task)
    targets = original_images(pipe, task.protocol, task.concept_prompts, task.seeds, batch_size=options.batch_size)
    plain = _generate(pipe, task, list(range(n)), batch_size=options.batch_size)
    pre = judge_images(task, plain)
    for i in range(n):
        _save_png(images_dir / f"{i:03d}_original.png", targets[i])
        _save_png(images_dir / f"{i:03d}_plain.png", plain[i])
    records = [
        {
            "prompt": task.prompts[i],
            "seed": task.seeds[i],
            "pre_attack": pre[i],
            "success": pre[i]["success"],
            "broken_at": "pre-attack" if pre[i]["success"] else None,
            "steps": 0,
            "judge_queries": 0,
            "adversarial_prompt": None,
            "judged": None,
            "text_similarity": None,
        }
        for i in range(n)
    ]
    return {
        "block": 0,
        "records": records,
        "elapsed": 0.0,
        "success_rows": {},
        "target_latents": latents_of(pipe, targets) if attack.needs_target_latents else torch.zeros(0),
    }


def _confirm(pipe, task: AttackTask, prompts, state: dict, options: AttackOptions) -> list[dict | None]:
    """Every success re-judged at ``confirm_seeds`` fresh seeds (its prompt, or its adversarial rows, unchanged):
    confirmed when at least half are judged as the target. Best-of-N judging at one seed lets luck count as
    success (a random prefix on a prompt without a style hits any style now and then); a confirmed success
    is a prompt that carries the concept."""
    seeds = [CONFIRM_SEED_OFFSET + s for s in range(options.confirm_seeds)]
    out: list[dict | None] = [None] * len(task)
    for i, r in enumerate(state["records"]):
        if not r["success"]:
            continue
        m = len(seeds)
        rows = state["success_rows"].get(i)
        embeds = (
            None if rows is None else _encode_candidates(pipe, prompts.subset([i] * m), rows.expand(m, *rows.shape))
        )
        images = protocol_images(
            pipe, task.protocol, [task.prompts[i]] * m, seeds, batch_size=options.batch_size, prompt_embeds=embeds
        )
        verdicts = judge_images(task, images)
        hits = sum(v["success"] for v in verdicts)
        out[i] = {"seeds": seeds, "judged_as_target": hits, "confirmed": 2 * hits >= m}
    return out


def _encode_candidates(pipe, prompts, rows: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encode_slots(pipe.text_encoder, prompts, rows)


def attack_block(
    pipe,
    protocol,
    targets: list[tuple[str, str]],
    judges: dict,
    out_dir: Path,
    opt,
    *,
    model_id: str,
    patch: str | None,
) -> dict:
    """``erase eval --attack NAME``: the attack on every target (in
    ``out_dir/attack-NAME-KIND-TARGET``, resumable), summarised."""
    rows = []
    for target, kind in targets:
        options = AttackOptions(prompts=opt.attack_prompts, progress=opt.progress, batch_size=opt.batch_size)
        task = attack_task(protocol, target, kind, judges, options)
        attack = make_attack(opt.attack, opt.attack_options)
        identity = attack_identity(model_id, patch, protocol, target, kind, attack, options)
        folder = Path(out_dir) / f"attack-{opt.attack}-{kind}-{target}"
        r = run_attack(pipe, task, attack, folder, identity=identity, resume=True, options=options)
        rows.append(
            {
                k: r[k]
                for k in (
                    "attack",
                    "target",
                    "kind",
                    "prompts",
                    "pre_attack_rate",
                    "asr",
                    "confirmed_asr",
                    "new_successes",
                    "attacked_prompts",
                    "budget",
                    "judge_queries",
                    "seconds_per_prompt",
                    "deviations",
                )
            }
            | {"folder": folder.name}
        )
    return {"attack": opt.attack, "targets": rows}
