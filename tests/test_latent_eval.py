"""The latent-seeded evaluation path (faces-mini) without trained assets: its answer set (float shards, resumable,
atomic, checked as read) and faces-mini's streamed metrics against hand counts and whole-set computations."""

import numpy as np
import pytest
import torch

from eval.answer_set import AnswerSetError
from eval.latent_answers import SHARD, LatentAnswers
from eval.protocols import load_protocol
from worlds.faces_mini.metrics import AttributeRates, PaletteDrift, gamma
from worlds.faces_mini.palette import local_palette_drift, palette_drift
from worlds.faces_mini.world import HEAD_CLASSES


class Renderer:
    """Seed k's image is filled with k / 1000 (plain) or 1 - k / 1000 (asked for the target); counts renders."""

    variants = ("plain", "eyeglasses")
    record = {"renderer": "test"}

    def __init__(self, fail_after: int | None = None):
        self.rendered, self.fail_after = [], fail_after

    def render(self, variant, seeds):
        if self.fail_after is not None and len(self.rendered) >= self.fail_after:
            raise KeyboardInterrupt
        self.rendered.append((variant, seeds[0]))
        v = torch.tensor(seeds, dtype=torch.float32) / 1000
        v = v if variant == "plain" else 1 - v
        return v.view(-1, 1, 1, 1).expand(-1, 3, 32, 32).clone()


def _answers(seeds=600, **kw):
    protocol = load_protocol("faces-mini").with_overrides(seeds=list(range(seeds)))
    return LatentAnswers(protocol, Renderer(**kw))


def test_the_answer_set_is_every_variant_of_every_seed_in_shards_and_resumes_what_is_missing(tmp_path):
    answers = _answers()
    stats = answers.generate(tmp_path, progress=False)
    assert stats == {"total": 1200, "generated": 1200, "reused": 0}
    assert [len(s) for s in answers.shards] == [SHARD, SHARD, 600 - 2 * SHARD]
    answers.check(tmp_path)
    seen = torch.cat([answers.read(tmp_path, "eyeglasses", s)[:, 0, 0, 0] for s in answers.shards])
    assert torch.equal(seen, 1 - torch.arange(600, dtype=torch.float32) / 1000)  # floats as rendered, in seed order
    (tmp_path / answers.shard_name("plain", answers.shards[1])).unlink()
    again = LatentAnswers(answers.protocol, Renderer())
    assert again.generate(tmp_path, progress=False)["generated"] == SHARD
    assert again.renderer.rendered == [("plain", SHARD)]  # only the missing shard


def test_an_interrupted_render_leaves_no_half_shard_and_the_next_run_finishes(tmp_path):
    answers = _answers(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        answers.generate(tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        answers.shard_name("plain", s) for s in answers.shards[:2]
    )
    with pytest.raises(AnswerSetError, match="is missing; run the same `erase eval` command again"):
        answers.check(tmp_path)
    assert _answers().generate(tmp_path, progress=False)["generated"] == 600 + 600 - 2 * SHARD


@pytest.mark.parametrize("damage", ["truncated", "other seeds"])
def test_a_damaged_shard_is_one_clear_error_naming_it(tmp_path, damage):
    answers = _answers(seeds=10)
    answers.generate(tmp_path, progress=False)
    path = tmp_path / answers.shard_name("plain", answers.shards[0])
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    else:
        other = _answers(seeds=11)
        other.generate(tmp_path / "other", progress=False)
        (tmp_path / "other" / other.shard_name("plain", other.shards[0])).replace(path)
    with pytest.raises(AnswerSetError, match=f"{path.name}.*delete it and run the same"):
        answers.read(tmp_path, "plain", answers.shards[0])


class Judge:
    """Head logits read off the image: eyeglasses 'yes' where the mean pixel is above 0.5; every other head the
    class of index (seed-ish value * 1000) mod its class count."""

    def __call__(self, x):
        v = x.mean(dim=(1, 2, 3))
        k = (v * 1000).round().long()
        out = {}
        for head, classes in HEAD_CLASSES.items():
            cls = (v > 0.5).long() if head == "eyeglasses" else k % len(classes)
            out[head] = torch.nn.functional.one_hot(cls, len(classes)).float() * 10
        return out


def test_attribute_rates_are_hand_counts_streamed_or_not():
    x = torch.arange(100, dtype=torch.float32).div(100).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)
    edit = 1 - x
    batch = {"model": x, "model_edit": edit, "orig": edit, "orig_edit": x}
    whole = AttributeRates(Judge(), "eyeglasses")
    whole.update(batch)
    streamed = AttributeRates(Judge(), "eyeglasses")
    for part in (slice(0, 37), slice(37, 100)):
        streamed.update({k: v[part] for k, v in batch.items()})
    a, b = whole.compute(), streamed.compute()
    assert a["attribute_rates"] == b["attribute_rates"]
    values = np.arange(100) / 100
    assert a["target_rate"]["plain"] == pytest.approx(np.mean(values > 0.5))  # 49 of 100 by hand
    assert a["target_rate"]["plain"] == 0.49 and a["target_rate"]["edited"] == 0.50
    assert a["target_rate"]["original_plain"] == 0.50 and a["original"]["attribute_rates"]["eyeglasses"]["yes"] == 0.5
    k = (values * 1000).round().astype(int)
    assert a["attribute_rates"]["hair_colour"] == {
        c: float(np.mean(k % 4 == i)) for i, c in enumerate(HEAD_CLASSES["hair_colour"])
    }


def test_gamma_is_zero_when_the_edits_score_like_the_originals_and_one_like_plain_faces():
    a, b = np.array([0.9, 0.95, 1.0]), np.array([0.0, 0.1, 0.2])
    assert gamma(a, a, b)["value"] == 0.0 and gamma(b, a, b)["value"] == 1.0
    assert gamma((a + b) / 2, a, b)["value"] == pytest.approx(0.5)


def test_palette_drift_streamed_matches_the_whole_set_measure():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, 32, 32, generator=g)
    metric = PaletteDrift()
    for part in (slice(0, 15), slice(15, 40)):
        metric.update({s: x[part] for s in ("model", "model_edit", "orig", "orig_edit")})
    drift = metric.compute()
    assert drift["palette_drift"]["plain"] == pytest.approx(palette_drift(x), abs=1e-7)
    assert drift["local_palette_drift"]["plain"] == pytest.approx(local_palette_drift(x), abs=1e-7)
    assert 0 < drift["palette_drift"]["plain"] < drift["local_palette_drift"]["plain"] < 1


def test_a_shard_killed_while_written_leaves_nothing_under_its_name(tmp_path, monkeypatch):
    import eval.latent_answers as la

    def half_written(tensors, path):
        with open(path, "wb") as f:
            f.write(b"\0" * 64)
        raise KeyboardInterrupt

    monkeypatch.setattr(la, "save_file", half_written)
    answers = _answers(seeds=10)
    with pytest.raises(KeyboardInterrupt):
        answers.generate(tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the shard's name nor the temp file


def test_fd_on_the_target_seeds_is_the_fd_of_the_seeds_whose_original_has_it(monkeypatch):
    """``fd.target_seeds``: the Frechet distance of the model's and the original's features at exactly the seeds
    whose ORIGINAL the judge finds the target in (eyeglasses: mean pixel > 0.5 here), streamed or not, against an
    independent whole-set computation; the floor is asked for as many renders."""
    import worlds.faces_mini.metrics as m
    from eval.fid import frechet_distance

    class FeatureJudge(Judge):
        def features(self, x):
            return torch.stack([x.mean(dim=(1, 2, 3)), x[:, 0].std(dim=(1, 2)), x[:, 1, 0, 0], x[:, 2, 1, 1]], 1)

    g = torch.Generator().manual_seed(0)
    real = np.random.default_rng(0).normal(0.5, 0.2, size=(300, 4))
    floors = []
    monkeypatch.setattr(m, "reference_features", lambda judge, without=None: real)
    monkeypatch.setattr(m, "fd_floor", lambda judge, r, n, without=None: floors.append(n) or -1.0)
    orig = torch.rand(60, 3, 4, 4, generator=g) * 0.6 + torch.linspace(0, 0.4, 60).view(-1, 1, 1, 1)
    model = torch.rand(60, 3, 4, 4, generator=g)
    batch = {"model": model, "model_edit": model, "orig": orig, "orig_edit": orig}
    metric = m.FrechetToRenders(FeatureJudge(), "eyeglasses", 60)
    for part in (slice(0, 25), slice(25, 60)):
        metric.update({k: v[part] for k, v in batch.items()})
    got = metric.compute()["fd"]["target_seeds"]
    has = orig.mean(dim=(1, 2, 3)) > 0.5
    assert 5 < int(has.sum()) < 55 and not torch.equal(has, model.mean(dim=(1, 2, 3)) > 0.5)
    feats = FeatureJudge().features
    assert got["n"] == int(has.sum()) and sorted(floors) == sorted([60, int(has.sum())])
    assert got["value"] == pytest.approx(frechet_distance(feats(model[has]).numpy(), real), rel=1e-9)
    assert got["original"] == pytest.approx(frechet_distance(feats(orig[has]).numpy(), real), rel=1e-9)
    assert got["value"] != pytest.approx(frechet_distance(feats(model).numpy(), real), rel=1e-3)
    lacks = orig[~has][: int(has.sum())]
    assert got["original_without_target"] == pytest.approx(frechet_distance(feats(lacks).numpy(), real), rel=1e-9)


def test_same_seed_fidelity_without_the_target_counts_only_the_seeds_whose_original_lacks_it():
    """``identity_similarity.without_target`` and the ``*_without_target`` fidelity figures: means over exactly the
    seeds whose ORIGINAL the judge finds without the target (eyeglasses: mean pixel <= 0.5 here), by hand, streamed;
    the model's own images decide nothing."""
    from worlds.faces_mini.metrics import SameSeedFidelity

    class FeatureJudge(Judge):
        def feature_maps(self, x):
            return [x]

    def embedder(x):  # unit 2-vectors at angle 4 * mean pixel: two images' cosine is cos(4 * their difference)
        a = 4 * x.mean(dim=(1, 2, 3))
        return torch.stack([a.cos(), a.sin()], 1)

    values = torch.arange(20, dtype=torch.float32) / 20 + 0.025  # 0.025 ... 0.975: 10 below 0.5, 10 above
    orig = values.view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()
    shift = torch.where(values > 0.5, 0.2, 0.05)  # seeds with the target move more
    model = (orig - shift.view(-1, 1, 1, 1)).clamp(0, 1)  # the model's images cross 0.5 on other seeds than orig
    metric = SameSeedFidelity(FeatureJudge(), embedder, "eyeglasses")
    for part in (slice(0, 7), slice(7, 20)):
        metric.update({"model": model[part], "orig": orig[part]})
    got = metric.compute()
    lacks = values <= 0.5
    moved = orig.mean(dim=(1, 2, 3)) - model.mean(dim=(1, 2, 3))
    assert int(lacks.sum()) == 10 and got["retain_fidelity"]["n_without_target"] == 10
    assert got["identity_similarity"]["without_target"] == pytest.approx(float(torch.cos(4 * moved[lacks]).mean()))
    assert got["identity_similarity"]["mean"] == pytest.approx(float(torch.cos(4 * moved).mean()))
    mse = moved.pow(2)
    assert got["retain_fidelity"]["psnr_without_target"] == pytest.approx(
        float((10 * torch.log10(1 / mse[lacks])).mean()), rel=1e-5
    )
    assert got["identity_similarity"]["without_target"] > got["identity_similarity"]["mean"]


def test_recognised_counts_images_confident_on_every_head_but_the_targets():
    """``recognised``: the share of each set's images whose every head but the target's has max softmax > 0.9, by
    hand; an unsure TARGET head does not count against an image (erasing it is the point), another head does."""

    class UnsureJudge(Judge):
        def __call__(self, x):
            out = super().__call__(x)
            v = x.mean(dim=(1, 2, 3))
            out["hat"] = torch.where((v < 0.3).view(-1, 1), torch.zeros_like(out["hat"]), out["hat"])  # unsure
            out["eyeglasses"] = torch.where(
                (v > 0.8).view(-1, 1), torch.zeros_like(out["eyeglasses"]), out["eyeglasses"]
            )
            return out

    x = torch.arange(100, dtype=torch.float32).div(100).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)
    edit = 1 - x
    metric = AttributeRates(UnsureJudge(), "eyeglasses")
    for part in (slice(0, 40), slice(40, 100)):
        metric.update({k: v[part] for k, v in {"model": x, "model_edit": edit, "orig": x, "orig_edit": x}.items()})
    got = metric.compute()["recognised"]
    values = x.mean(dim=(1, 2, 3)).numpy()  # the float32 values the judge reads
    assert got["plain"] == pytest.approx(np.mean(values >= 0.3)) == got["original_plain"]  # 70 of 100
    assert got["edited"] == pytest.approx(np.mean(1 - values >= 0.3))  # 71 of 100
    hat_only = AttributeRates(UnsureJudge(), "hat")  # with hat the target, its unsure images all count
    hat_only.update({k: x for k in ("model", "model_edit", "orig", "orig_edit")})
    assert hat_only.compute()["recognised"]["plain"] == pytest.approx(np.mean(values <= 0.8))  # eyeglasses unsure
