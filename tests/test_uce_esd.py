"""The ESD and UCE baselines on a tiny random pipeline: the closed-form solution against its own objective, token
alignment by hand, the weights each variant may touch, ESD's target formula, and bit-identical resume."""

import pytest
import torch
from test_salun import request

from erase.api import erase_concept, resolve_config
from erase.core.errors import EraseError
from erase.methods.uce import erase_pairs, uce_solve
from pipelines.stable_diffusion import named_parameters


def _objective(w, w_old, ce, ct, ck, kw, lam, se):
    return (
        se * ((ce @ w.T - ct @ w_old.T) ** 2).sum()
        + (kw[:, None] * (ck @ w.T - ck @ w_old.T) ** 2).sum()
        + lam * ((w - w_old) ** 2).sum()
    )


def test_uce_solution_minimises_its_objective():
    torch.manual_seed(0)
    w_old = torch.randn(5, 4, dtype=torch.float64)
    ce, ct, ck = (
        torch.randn(3, 4, dtype=torch.float64),
        torch.randn(3, 4, dtype=torch.float64),
        torch.randn(6, 4, dtype=torch.float64),
    )
    kw = torch.rand(6, dtype=torch.float64)
    w = uce_solve(w_old, ce, ct, ck, kw, lam=0.5, erase_scale=2.0).requires_grad_(True)
    (grad,) = torch.autograd.grad(_objective(w, w_old, ce, ct, ck, kw, 0.5, 2.0), w)
    assert grad.abs().max() < 1e-9  # stationary point of a strictly convex objective: the minimum
    assert torch.allclose(
        uce_solve(w_old, ce, ct, ck, kw, lam=0.5, erase_scale=0.0), w_old
    )  # nothing to erase: nothing moves
    mapped = uce_solve(w_old, ce, ct, ck, kw * 0, lam=1e-9, erase_scale=1.0)
    assert torch.allclose(
        ce @ mapped.T, ct @ w_old.T, atol=1e-5
    )  # free to move: the concept's keys become the anchor's


def test_erase_pairs_align_from_the_concepts_last_token():
    # forget: [bos, a, CON, CEPT, b, eos, pad]; anchor: [bos, a, ANCH, b, eos, pad, pad]
    ids_f = torch.tensor([[0, 1, 7, 8, 2, 9, 9]])
    ids_a = torch.tensor([[0, 1, 5, 2, 9, 9, 9]])
    emb_f = torch.arange(7.0).view(1, 7, 1)
    emb_a = 10 + torch.arange(7.0).view(1, 7, 1)
    f, a = erase_pairs(ids_f, ids_a, emb_f, emb_a, "suffix", [6], [5])
    assert f.flatten().tolist() == [3, 4, 5, 6] and a.flatten().tolist() == [12, 13, 14, 15]
    f, a = erase_pairs(ids_f, ids_a, emb_f, emb_a, "last", [6], [5])
    assert f.flatten().tolist() == [3] and a.flatten().tolist() == [12]
    with pytest.raises(EraseError, match="tokenises like its anchor"):
        erase_pairs(ids_f, ids_f, emb_f, emb_f, "suffix", [6], [6])


def test_uce_edits_only_cross_attention_kv_without_steps(tiny_pipe, tmp_path):
    before = {n: p.detach().clone() for n, p in named_parameters(tiny_pipe).items()}
    patch = erase_concept(tiny_pipe, "uce", request(), tmp_path, progress=False)
    kv = sorted(n for n in before if ".attn2.to_k." in n or ".attn2.to_v." in n)
    assert patch.names() == kv and all(float(patch.deltas[n].abs().max()) > 0 for n in kv)
    assert all(torch.equal(before[n], p) for n, p in named_parameters(tiny_pipe).items())  # left unpatched
    assert patch.config["info"]["data"]["preserve_prompts"] == 3  # 2 retain prompts + ""
    with pytest.raises(EraseError, match="closed-form"):
        resolve_config("uce", None, {"steps": 5})


@pytest.mark.parametrize(
    "variant, touched",
    [
        ("x", lambda n: ".attn2." in n),
        ("x_strict", lambda n: ".attn2.to_k." in n or ".attn2.to_v." in n),
        ("u", lambda n: ".attn2." not in n and "norm" not in n),
    ],
)
def test_esd_variants_touch_their_weights(tiny_pipe, tmp_path, variant, touched):
    over = {"variant": variant, "steps": 2, "sample_steps": 3, "lr": 1e-3, "batch_size": 2}
    patch = erase_concept(tiny_pipe, "esd", request(), tmp_path, overrides=over, progress=False)
    expected = sorted(n for n in named_parameters(tiny_pipe) if n.startswith("unet.") and touched(n))
    assert patch.names() == expected


def test_esd_regresses_onto_the_negatively_guided_prediction(tiny_pipe, tmp_path, monkeypatch):
    """The loss target is eps_frozen(x, t, empty) - eta (eps_frozen(x, t, c) - eps_frozen(x, t, empty)), rebuilt by
    hand from the x, t and prompt the step used; x comes from the model's own sampler at one of its DDIM timesteps."""
    from erase.methods import esd

    seen, real_mse, real_sample = {}, esd.F.mse_loss, esd.ESD._partial_sample

    def mse(pred, target):
        seen["target"] = target.detach().clone()
        return real_mse(pred, target)

    def sample(self, cond, j):
        x, t = real_sample(self, cond, j)
        seen.update(
            x=x.clone(), t=t.clone(), cond=cond.clone(), eraser=self, timesteps=self.sampler.timesteps.tolist()
        )
        return x, t

    monkeypatch.setattr(esd.F, "mse_loss", mse)
    monkeypatch.setattr(esd.ESD, "_partial_sample", sample)
    erase_concept(
        tiny_pipe,
        "esd",
        request(),
        tmp_path,
        overrides={"steps": 1, "sample_steps": 3, "eta": 2.0, "lr": 1e-3},
        progress=False,
    )
    frozen, x, t, c = seen["eraser"].frozen, seen["x"], seen["t"], seen["cond"]
    assert int(t[0]) in seen["timesteps"]
    with torch.no_grad():
        e_u = frozen(x, t, seen["eraser"].e_empty.expand(len(x), -1, -1)).sample
        e_c = frozen(x, t, c).sample
    assert torch.allclose(seen["target"], e_u - 2.0 * (e_c - e_u), atol=1e-5)  # batched vs separate forwards
    assert not torch.allclose(
        seen["target"], e_c - 2.0 * (e_c - e_u), atol=1e-3
    )  # the paper form, not the newer script's at equal eta


def test_esd_resume_is_bit_identical(tiny_pipe, tmp_path, monkeypatch):
    from conftest import assert_resume_is_bit_identical

    from erase.methods.esd import ESD

    over = {"steps": 5, "sample_steps": 3, "lr": 1e-3, "checkpoint_every": 2}
    assert_resume_is_bit_identical(
        tiny_pipe, "esd", ESD, request(), over, tmp_path, monkeypatch, interrupt_at=3, resumed_from=2
    )
