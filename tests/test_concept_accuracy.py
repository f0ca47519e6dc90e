import math

import pytest
import torch

from eval.concept_accuracy import ConceptAccuracy, axis_scores, macro_average, unlearning_scores
from eval.protocols import ProtocolError


def one_hot_logits(pred, n):
    return torch.nn.functional.one_hot(torch.tensor(pred), n).float() * 10


def test_confusion_and_per_class_accuracy_match_hand_counts():
    m = ConceptAccuracy(["a", "b", "c"])
    target = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    pred = [0, 0, 1, 2, 1, 1, 2, 2, 2, 0]
    # update in two batches: states must accumulate
    m.update(one_hot_logits(pred[:5], 3), torch.tensor(target[:5]))
    m.update(one_hot_logits(pred[5:], 3), torch.tensor(target[5:]))
    r = m.compute()
    assert r["confusion"].tolist() == [[2, 1, 1], [0, 2, 0], [1, 0, 3]]
    assert r["accuracy"].tolist() == pytest.approx([2 / 4, 2 / 2, 3 / 4])
    assert r["overall"] == pytest.approx(7 / 10)
    assert r["count"].tolist() == [4, 2, 4]


def test_true_class_probability():
    m = ConceptAccuracy(["a", "b"])
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])  # p(a) = 0.5, then 0.75
    m.update(logits, torch.tensor([0, 0]))
    assert m.compute()["true_prob"][0].item() == pytest.approx(0.625)
    assert math.isnan(m.compute()["accuracy"][1].item())  # class without samples


def test_bad_logits_shape():
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        ConceptAccuracy(["a", "b", "c"]).update(torch.zeros(2, 2), torch.tensor([0, 1]))


STYLE_ACC = {"S1": 0.2, "S2": 0.9, "S3": 0.7, "Photo": 0.1}
OBJECT_ACC = {"O1": 0.5, "O2": 1.0, "O3": 0.9}


def test_style_target_scores_follow_unlearncanvas_definition():
    s = unlearning_scores(STYLE_ACC, OBJECT_ACC, "S1", "style", "Photo")
    assert s["ua"] == pytest.approx(0.8)
    assert s["ira"] == pytest.approx((0.9 + 0.7) / 2)  # other styles, photo class excluded
    assert s["cra"] == pytest.approx((0.5 + 1.0 + 0.9) / 3)  # all objects


def test_object_target_scores_exclude_photo_from_style_average():
    s = unlearning_scores(STYLE_ACC, OBJECT_ACC, "O1", "object", "Photo")
    assert s["ua"] == pytest.approx(0.5)
    assert s["ira"] == pytest.approx((1.0 + 0.9) / 2)
    assert s["cra"] == pytest.approx((0.2 + 0.9 + 0.7) / 3)
    # without a photo class, every style counts
    s2 = unlearning_scores(STYLE_ACC, OBJECT_ACC, "O1", "object", None)
    assert s2["cra"] == pytest.approx((0.2 + 0.9 + 0.7 + 0.1) / 4)


def test_photo_class_is_not_a_style_target():
    with pytest.raises(ProtocolError, match="not a scorable style"):
        unlearning_scores(STYLE_ACC, OBJECT_ACC, "Photo", "style", "Photo")


def test_macro_average():
    m = macro_average([{"ua": 1.0, "ira": 0.8, "cra": 0.9}, {"ua": 0.5, "ira": 0.6, "cra": 0.7}])
    assert m == pytest.approx({"ua": 0.75, "ira": 0.7, "cra": 0.8})


def test_axis_scores_generalise_to_any_named_axes():
    acc = {
        "attribute": {"glasses": 0.25, "smile": 0.75, "none": 0.0},
        "identity": {"ada": 0.5, "bob": 1.0},
        "style": {"S1": 0.2, "Photo": 0.1},
    }
    nulls = {"attribute": "none", "style": "Photo"}
    s = axis_scores(acc, "glasses", "attribute", nulls)
    assert s == pytest.approx({"ua": 0.75, "ira": 0.75, "cra": (0.5 + 1.0 + 0.2) / 3})  # nulls out of every average
    s = axis_scores(acc, "bob", "identity", nulls)
    assert s == pytest.approx({"ua": 0.0, "ira": 0.5, "cra": (0.25 + 0.75 + 0.2) / 3})
    with pytest.raises(ProtocolError, match="unknown kind 'object'; the scored axes are: attribute, identity, style"):
        axis_scores(acc, "Birds", "object", nulls)


def test_two_axis_scores_equal_the_style_object_definition():
    both = {"style": STYLE_ACC, "object": OBJECT_ACC}
    for target, kind in (("S2", "style"), ("O3", "object")):
        assert axis_scores(both, target, kind, {"style": "Photo"}) == unlearning_scores(
            STYLE_ACC, OBJECT_ACC, target, kind, "Photo"
        )


def test_axis_metric_registry_builds_concept_accuracy_per_axis():
    from eval.axis_metrics import make_axis_metric, register_axis_metric
    from eval.protocols import Axis

    m = make_axis_metric(Axis("object", ["x", "y"]))
    assert isinstance(m, ConceptAccuracy) and m.classes == ["x", "y"]
    with pytest.raises(ProtocolError, match="already registered"):
        register_axis_metric("concept_accuracy", lambda axis: None)
