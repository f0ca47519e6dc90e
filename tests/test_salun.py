"""SalUn and the shared loop on a tiny random pipeline: plumbing, masks, resume determinism."""

import json

import pytest
import torch

from erase.api import erase_concept, resolve_config
from erase.core.errors import EraseError
from erase.core.patch import ErasurePatch
from erase.core.request import EraseRequest
from pipelines.stable_diffusion import named_parameters

TINY = {
    "steps": 2,
    "forget_seeds": 1,
    "retain_seeds": 1,
    "data_steps": 2,
    "batch_size": 2,
    "retain_batch_size": 2,
    "lr": 1e-3,
}


def request():
    return EraseRequest(
        concept="Watercolor",
        kind="style",
        anchor="Photo",
        forget_prompts=["A Birds image in Watercolor style.", "A Cats image in Watercolor style."],
        anchor_prompts=["A Birds image in Photo style.", "A Cats image in Photo style."],
        retain_prompts=["A Birds image in Mosaic style.", "A Cats image in Ink Art style."],
    )


@pytest.mark.parametrize("retain_loss", ["diffusion", "distill"])
def test_two_step_salun_writes_a_masked_patch(tiny_pipe, tmp_path, retain_loss):
    before = {n: p.detach().clone() for n, p in named_parameters(tiny_pipe).items()}
    patch = erase_concept(
        tiny_pipe, "salun", request(), tmp_path, overrides={**TINY, "retain_loss": retain_loss}, progress=False
    )
    # the pipeline is left unpatched
    assert all(torch.equal(before[n], p) for n, p in named_parameters(tiny_pipe).items())
    saved = ErasurePatch.from_pretrained(tmp_path)
    assert all(n.startswith("unet.") for n in saved.names())
    cfg = json.loads((tmp_path / "erasure_config.json").read_text())
    mask = cfg["info"]["mask"]
    assert mask["selected"] == pytest.approx(0.5 * mask["scope_size"], abs=1)
    assert cfg["request"]["concept"] == "Watercolor" and cfg["method"] == "salun"
    assert cfg["method_config"]["retain_loss"] == retain_loss
    assert (tmp_path / "resolved_config.json").exists()
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [0, 1] and all("forget" in e for e in log)
    # only selected entries moved, and the patch (fp16 values + mask bits) is far below a dense fp32 delta
    unet_bytes = sum(p.numel() * 4 for n, p in named_parameters(tiny_pipe).items() if n.startswith("unet."))
    assert patch.nbytes() < 0.5 * unet_bytes


def test_cross_attention_scope(tiny_pipe, tmp_path):
    patch = erase_concept(
        tiny_pipe, "salun", request(), tmp_path, overrides={**TINY, "mask_scope": "cross_attention"}, progress=False
    )
    assert patch.names() and all(".attn2." in n for n in patch.names())


def test_relabel_on_concept_and_anchor_images(tiny_pipe, tmp_path):
    patch = erase_concept(
        tiny_pipe, "salun", request(), tmp_path, overrides={**TINY, "relabel_on": "concept+anchor"}, progress=False
    )
    data = patch.config["info"]["data"]
    # one generation per forget prompt for the concept, plus the same again for the anchor prompts
    assert data["forget_images"] == 2 and data["relabel_images"] == 4
    with pytest.raises(EraseError, match="relabel_on"):
        resolve_config("salun", None, {"relabel_on": "anchor-only"})


def test_user_forget_images(tiny_pipe, tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "mine"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(np.full((40, 24, 3), 60 * k, np.uint8)).save(folder / f"{k}.png")
    (folder / "notes.txt").write_text("not an image")
    patch = erase_concept(
        tiny_pipe,
        "salun",
        request(),
        tmp_path / "out",
        overrides={**TINY, "forget_images": str(folder)},
        progress=False,
    )
    assert patch.config["info"]["data"]["forget_images"] == 3
    with pytest.raises(EraseError, match="does not exist"):
        erase_concept(
            tiny_pipe,
            "salun",
            request(),
            tmp_path / "out2",
            overrides={**TINY, "forget_images": str(tmp_path / "nope")},
            progress=False,
        )


def test_resume_gives_the_same_patch(tiny_pipe, tmp_path, monkeypatch):
    from erase.methods.salun import SalUn

    over = {**TINY, "steps": 4, "checkpoint_every": 2}
    full = erase_concept(tiny_pipe, "salun", request(), tmp_path / "full", overrides=over, progress=False)

    from conftest import interrupted

    restore = interrupted(monkeypatch, SalUn, 3)
    with pytest.raises(KeyboardInterrupt):
        erase_concept(tiny_pipe, "salun", request(), tmp_path / "resumed", overrides=over, progress=False)
    assert json.loads((tmp_path / "resumed" / "checkpoint" / "meta.json").read_text())["step"] == 2
    assert not (tmp_path / "resumed" / "erasure_patch.safetensors").exists()  # no half-written output
    restore()
    # the interrupted run left the pipeline's weights tuned; a fresh process would reload the base model
    resumed = erase_concept(
        tiny_pipe.__class__(**fresh_components()),
        "salun",
        request(),
        tmp_path / "resumed",
        overrides=over,
        resume=True,
        progress=False,
    )
    assert resumed.config["timing"]["resumed_from"] == 2
    assert resumed.names() == full.names()
    for n in full.names():
        assert torch.equal(resumed.deltas[n], full.deltas[n]), n


def fresh_components():
    from conftest import build_tiny_pipe

    return build_tiny_pipe().components


def test_config_errors():
    with pytest.raises(EraseError, match="unknown salun option"):
        resolve_config("salun", None, {"learning_rate": 1})
    with pytest.raises(EraseError, match="unknown preset"):
        resolve_config("salun", "nope")
    with pytest.raises(EraseError, match="retain_loss"):
        resolve_config("salun", None, {"retain_loss": "kl"})
    with pytest.raises(EraseError, match="unknown method 'esdx'; known methods: .*salun"):
        resolve_config("esdx")
    assert resolve_config("salun", "canvas-mini").retain_loss == "distill"


def test_request_validation():
    with pytest.raises(EraseError, match="empty"):
        EraseRequest(concept=" ", kind="style", forget_prompts=["x"], anchor_prompts=["y"])
    with pytest.raises(EraseError, match="anchor equals the concept"):
        EraseRequest(
            concept="Watercolor", kind="style", anchor="watercolor", forget_prompts=["x"], anchor_prompts=["y"]
        )
    with pytest.raises(EraseError, match="unknown kind"):
        EraseRequest(concept="x", kind="colour", forget_prompts=["x"], anchor_prompts=["y"])
    r = request()
    assert EraseRequest.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_request_from_protocol():
    from eval.protocols import load_protocol

    p = load_protocol("canvas-mini")
    r = EraseRequest.from_protocol(p, "Watercolor", "style")
    assert r.anchor == "Photo" and len(r.forget_prompts) == len(p.objects)
    assert r.anchor_prompts[0] == "A Birds image in Photo style."
    assert len(r.retain_prompts) == (len(p.styles) - 1) * len(p.objects)
    assert not any("Watercolor" in x for x in r.retain_prompts)
    o = EraseRequest.from_protocol(p, "Cats", "object")
    assert o.anchor == "Flame" and all("Cats" not in x for x in o.retain_prompts)
    with pytest.raises(EraseError, match="not in protocol"):
        EraseRequest.from_protocol(p, "Van_Gogh", "style")


def test_weights_outside_the_mask_stay_bit_identical_and_the_patch_reproduces_training(
    tiny_pipe, tmp_path, monkeypatch
):
    captured = {}
    real = ErasurePatch.from_diff.__func__

    def spy(cls, base, tuned, masks, *a, **k):
        captured.update(
            base={n: t.clone() for n, t in base.items()}, tuned={n: t.clone() for n, t in tuned.items()}, masks=masks
        )
        return real(cls, base, tuned, masks, *a, **k)

    monkeypatch.setattr(ErasurePatch, "from_diff", classmethod(spy))
    patch = erase_concept(
        tiny_pipe,
        "salun",
        request(),
        tmp_path,
        overrides={**TINY, "patch_dtype": "float32", "steps": 3},
        progress=False,
    )
    base, tuned, masks = captured["base"], captured["tuned"], captured["masks"]
    moved = 0
    for n, m in masks.items():
        assert torch.equal(tuned[n][~m], base[n][~m]), n  # bit-identical outside the mask
        moved += int((tuned[n][m] != base[n][m]).sum())
    assert moved > 0.5 * sum(int(m.sum()) for m in masks.values())  # and training did move the masked entries
    from pipelines.stable_diffusion import apply_patch

    apply_patch(tiny_pipe, patch)
    params = named_parameters(tiny_pipe)
    for n in masks:
        assert torch.allclose(params[n], tuned[n], rtol=0, atol=1e-6), n


def test_a_mask_that_is_not_applied_fails_the_run(tiny_pipe, tmp_path, monkeypatch):
    from erase.core.patch import PatchError
    from erase.core.selection import ParamSelection

    monkeypatch.setattr(ParamSelection, "mask_grads_", lambda self, root: None)
    with pytest.raises(PatchError, match="outside its mask"):
        erase_concept(tiny_pipe, "salun", request(), tmp_path / "out", overrides=TINY, progress=False)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_half_precision_load_trains_in_fp32_and_the_patch_fits_every_dtype(tmp_path):
    from conftest import build_tiny_pipe

    from pipelines.stable_diffusion import apply_patch, remove_patch

    half = build_tiny_pipe().to(dtype=torch.float16)
    patch = erase_concept(half, "salun", request(), tmp_path, overrides=TINY, progress=False)
    assert half.unet.dtype == torch.float16 and half.text_encoder.dtype == torch.float16  # cast back after training
    assert patch.config["base_dtypes"]["unet"] == "float16"
    assert all(torch.isfinite(d.float()).all() for d in patch.deltas.values()) and sum(
        d.numel() for d in patch.deltas.values()
    )
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        pipe = build_tiny_pipe().to(dtype=dtype)
        before = {n: p.detach().clone() for n, p in named_parameters(pipe).items()}
        apply_patch(pipe, patch)
        remove_patch(pipe)
        assert all(torch.equal(before[n], p) for n, p in named_parameters(pipe).items())
