import math

import pytest
import torch

from eval.concept_accuracy import ConceptAccuracy, macro_average, unlearning_scores


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
    with pytest.raises(ValueError, match="not a scorable style"):
        unlearning_scores(STYLE_ACC, OBJECT_ACC, "Photo", "style", "Photo")


def test_macro_average():
    m = macro_average([{"ua": 1.0, "ira": 0.8, "cra": 0.9}, {"ua": 0.5, "ira": 0.6, "cra": 0.7}])
    assert m == pytest.approx({"ua": 0.75, "ira": 0.7, "cra": 0.8})
