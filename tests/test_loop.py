"""The shared loop on a plain nn.Module (the "any model" path): closed-form erasers, two optimisers and
bit-identical resume, the NaN guard, scope and selection guards."""

import json

import pytest
import torch
from torch import nn

from erase.core.errors import NonFiniteError
from erase.core.loop import Eraser, LoopConfig, checkpoint_meta, run
from erase.core.patch import PatchError, apply_patch, remove_patch
from erase.core.request import EraseRequest
from erase.core.selection import ParamSelection


def toy_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def request():
    return EraseRequest(concept="x", kind="object", anchor="y", forget_prompts=["x"], anchor_prompts=["y"])


class ClosedForm(Eraser):
    """Edits a weight in setup and trains nothing (like UCE)."""

    name = "closed_form"

    def scope(self, model):
        return r"^model\.0\."

    def setup(self, model):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        return ParamSelection({"model.0.weight": None})


def test_closed_form_edit_in_setup_with_zero_steps(tmp_path):
    m = toy_model()
    before = m[0].weight.detach().clone()
    patch = run(
        ClosedForm(None, request()), m, tmp_path, LoopConfig(steps=0, progress=False), {}, patch_dtype=torch.float32
    )
    assert torch.equal(m[0].weight, before)  # the model is left as it was
    assert torch.allclose(patch.dense_delta("model.0.weight"), torch.ones_like(before), atol=1e-6)
    apply_patch(m, patch)
    assert torch.allclose(m[0].weight, before + 1)


class ToyAdversarial(Eraser):
    """A generator (the model) and a discriminator with their own optimisers and RNG, as DoCo has."""

    name = "toy_adversarial"

    def __init__(self, config, request, nan_at=None):
        super().__init__(config, request)
        self.nan_at = nan_at

    def setup(self, model):
        self.model = model
        self.rng = torch.Generator().manual_seed(3)
        self.disc = nn.Linear(2, 1)
        self.optimizer = torch.optim.Adam(self.model[2].parameters(), lr=1e-2)
        self.optimizer_d = torch.optim.Adam(self.disc.parameters(), lr=1e-2, betas=(0.5, 0.999))
        return ParamSelection({"model.2.weight": None, "model.2.bias": None})

    def training_state(self):
        return {**super().training_state(), "optimizer_d": self.optimizer_d, "discriminator": self.disc}

    def step(self, i):
        x = torch.randn(8, 4, generator=self.rng)
        real = torch.randn(8, 2, generator=self.rng)
        fake = self.model(x)
        d_loss = (
            nn.functional.softplus(-self.disc(real)).mean() + nn.functional.softplus(self.disc(fake.detach())).mean()
        )
        self.optimizer_d.zero_grad()
        d_loss.backward()
        self.optimizer_d.step()
        g_loss = nn.functional.softplus(-self.disc(self.model(x))).mean()
        self.optimizer.zero_grad()
        g_loss.backward()
        self.optimizer.step()
        if self.nan_at is not None and i >= self.nan_at:
            g_loss = g_loss * float("nan")
        return {"d": d_loss.item(), "g": g_loss.item()}


def test_two_optimiser_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    loop = LoopConfig(steps=6, checkpoint_every=2, progress=False)
    full = run(ToyAdversarial(None, request()), toy_model(), tmp_path / "full", loop, {}, patch_dtype=torch.float32)

    real_step = ToyAdversarial.step

    def crash_at_5(self, i):
        if i == 5:
            raise KeyboardInterrupt
        return real_step(self, i)

    monkeypatch.setattr(ToyAdversarial, "step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        run(ToyAdversarial(None, request()), toy_model(), tmp_path / "resumed", loop, {}, patch_dtype=torch.float32)
    assert checkpoint_meta(tmp_path / "resumed")["step"] == 4
    monkeypatch.setattr(ToyAdversarial, "step", real_step)
    resumed_loop = LoopConfig(steps=6, checkpoint_every=2, progress=False, resume=True)
    resumed = run(
        ToyAdversarial(None, request()), toy_model(), tmp_path / "resumed", resumed_loop, {}, patch_dtype=torch.float32
    )
    assert resumed.config["timing"]["resumed_from"] == 4
    for n in full.names():
        assert torch.equal(resumed.deltas[n], full.deltas[n]), n
    # without the discriminator's optimiser in the state, the resumed run would differ: the check has teeth
    monkeypatch.setattr(
        ToyAdversarial,
        "training_state",
        lambda self: {"optimizer": self.optimizer, "rng": self.rng, "discriminator": self.disc},
    )
    monkeypatch.setattr(ToyAdversarial, "step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        run(ToyAdversarial(None, request()), toy_model(), tmp_path / "partial", loop, {}, patch_dtype=torch.float32)
    monkeypatch.setattr(ToyAdversarial, "step", real_step)
    partial = run(
        ToyAdversarial(None, request()), toy_model(), tmp_path / "partial", resumed_loop, {}, patch_dtype=torch.float32
    )
    assert not all(torch.equal(partial.deltas[n], full.deltas[n]) for n in full.names())


def test_nan_guard_keeps_the_last_good_checkpoint(tmp_path):
    m = toy_model()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    loop = LoopConfig(steps=6, checkpoint_every=2, progress=False)
    with pytest.raises(
        NonFiniteError, match=r"non-finite loss .* at step 3: lower the learning rate .*last good checkpoint"
    ):
        run(ToyAdversarial(None, request(), nan_at=3), m, tmp_path, loop, {})
    assert checkpoint_meta(tmp_path)["step"] == 2
    assert all(torch.equal(before[n], p) for n, p in m.named_parameters())  # the model is restored


class OutOfScope(ClosedForm):
    def setup(self, model):
        with torch.no_grad():
            model[2].bias.add_(1.0)
        return super().setup(model)


class OffSelection(ClosedForm):
    def setup(self, model):
        with torch.no_grad():
            model[0].bias.add_(1.0)
        return super().setup(model)


@pytest.mark.parametrize(
    "cls, match", [(OutOfScope, "outside its declared scope"), (OffSelection, "not in its selection")]
)
def test_changes_outside_the_selection_are_refused(tmp_path, cls, match):
    with pytest.raises(PatchError, match=match):
        run(cls(None, request()), toy_model(), tmp_path, LoopConfig(steps=0, progress=False), {})


def test_a_patched_model_is_refused(tmp_path):
    m = toy_model()
    patch = run(ClosedForm(None, request()), m, tmp_path / "a", LoopConfig(steps=0, progress=False), {})
    apply_patch(m, patch)
    with pytest.raises(Exception, match="remove_patch"):
        run(ClosedForm(None, request()), m, tmp_path / "b", LoopConfig(steps=0, progress=False), {})
    remove_patch(m)


def test_checkpoint_records_the_run_identity(tmp_path, monkeypatch):
    ident = {"method": "toy", "config": {"lr": 1}}
    real_step = ToyAdversarial.step
    monkeypatch.setattr(
        ToyAdversarial,
        "step",
        lambda self, i: (_ for _ in ()).throw(KeyboardInterrupt) if i == 3 else real_step(self, i),
    )
    with pytest.raises(KeyboardInterrupt):
        run(
            ToyAdversarial(None, request()),
            toy_model(),
            tmp_path,
            LoopConfig(steps=6, checkpoint_every=2, progress=False, identity=ident),
            {},
        )
    meta = json.loads((tmp_path / "checkpoint" / "meta.json").read_text())
    assert meta.pop("seconds") >= 0  # the run's time so far (a resumed run adds it to its own)
    assert meta == {"step": 2, "run": ident}
