"""ClipSums, the CLIP-alignment accumulator of the report, is a torchmetrics Metric checked against hand counts."""

import math

import pytest
import torch

from eval.clip_alignment import ClipSums


def test_clip_sums_against_hand_counts_over_two_batches():
    concept = torch.tensor([1.0, 0.0])
    m = ClipSums(concept)
    # batch 1: a target image (cos 0.6 to the concept) and another (cos -0.8); prompt cosines 0.3 / -0.1
    m.update(torch.tensor([[0.6, 0.8], [-0.8, 0.6]]), torch.tensor([0.3, -0.1]), torch.tensor([True, False]))
    # batch 2: two other images (cos 1.0 and 0.0), prompt cosines 0.25 and 0.5
    m.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.25, 0.5]), torch.tensor([False, False]))
    c = m.compute()
    assert math.isclose(c["clip_score"], (0 + 25 + 50) / 3, rel_tol=1e-6)  # negative prompt cosines count as 0
    assert math.isclose(c["target_images"], 0.6, rel_tol=1e-6)
    assert math.isclose(c["other_images"], (-0.8 + 1.0 + 0.0) / 3, rel_tol=1e-6)
    m.reset()
    with pytest.warns(
        UserWarning, match="before the ``update``"
    ):  # torchmetrics says so; the figures are NaN, not an error
        assert all(math.isnan(v) for v in m.compute().values())


def test_clip_sums_merge_like_any_torchmetrics_metric():
    concept = torch.tensor([0.0, 1.0])
    feats, cos, is_target = (
        torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
        torch.tensor([0.2, 0.4]),
        torch.tensor([False, True]),
    )
    a, b, both = ClipSums(concept), ClipSums(concept), ClipSums(concept)
    a.update(feats[:1], cos[:1], is_target[:1])
    b.update(feats[1:], cos[1:], is_target[1:])
    both.update(feats, cos, is_target)
    a.merge_state(b)
    assert a.compute() == both.compute()
