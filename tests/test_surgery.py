import pytest
import torch

from erase.core.surgery import doco_official, dot, grads_of, norm, project_conflicting, weighted_sum


def t(*v):
    return torch.tensor(v, dtype=torch.float32)


def test_pcgrad_global_projection_by_hand():
    g = {"a": t(1.0, 0.0), "b": t(-1.0)}
    r = {"a": t(0.0, 1.0), "b": t(1.0)}
    # <g, r> = -1, ||r||^2 = 2 -> g - (-1/2) r = (1, 0.5), -0.5
    out = project_conflicting(g, r, "global")
    assert out["a"].tolist() == pytest.approx([1.0, 0.5]) and out["b"].tolist() == pytest.approx([-0.5])
    assert dot(out, r).item() == pytest.approx(0.0, abs=1e-7)


def test_pcgrad_leaves_agreeing_gradients_alone():
    g, r = {"a": t(1.0, 1.0)}, {"a": t(1.0, 0.0)}
    assert project_conflicting(g, r)["a"].tolist() == [1.0, 1.0]


def test_pcgrad_per_tensor():
    g = {"a": t(1.0, 0.0), "b": t(1.0)}
    r = {"a": t(-1.0, 1.0), "b": t(2.0)}
    out = project_conflicting(g, r, "per_tensor")
    assert out["a"].tolist() == pytest.approx([0.5, 0.5])  # conflicting tensor projected
    assert out["b"].tolist() == [1.0]  # agreeing tensor unchanged
    with pytest.raises(ValueError):
        project_conflicting(g, r, "bogus")


def test_doco_official_rule_by_hand():
    g_u, g_r = {"w": t(1.0, 0.0)}, {"w": t(-1.0, 1.0)}
    # c = -1/sqrt(2); g_u - lam * c * g_r/||g_r|| = (1,0) + 0.5 * (-1, 1) = (0.5, 0.5) with lam = 1
    out = doco_official(g_u, g_r, lam=1.0)
    assert out["w"].tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    # with ||g_u|| = lam it equals per-tensor PCGrad
    assert out["w"].tolist() == pytest.approx(project_conflicting(g_u, g_r, "per_tensor")["w"].tolist(), abs=1e-6)
    # lam = 2 over-projects: a component along g_r appears
    out2 = doco_official(g_u, g_r, lam=2.0)
    assert dot(out2, g_r).item() > 0


def test_fp16_inputs_use_fp32_dots():
    g = {"a": torch.full((4096,), 1e-3, dtype=torch.float16)}
    assert norm(g).dtype == torch.float32
    assert project_conflicting(g, {"a": -g["a"]})["a"].dtype == torch.float16


def test_weighted_sum_and_grads_of():
    a, b = {"x": t(1.0, 2.0)}, {"x": t(3.0, 4.0)}
    assert weighted_sum([a, b], [1.0, 0.5])["x"].tolist() == [2.5, 4.0]
    w = torch.nn.Parameter(t(2.0, 3.0))
    unused = torch.nn.Parameter(t(1.0))
    g = grads_of((w**2).sum(), {"w": w, "u": unused})
    assert g["w"].tolist() == [4.0, 6.0] and g["u"].tolist() == [0.0] and w.grad is None
    with pytest.raises(KeyError):
        dot(a, {"y": t(1.0, 1.0)})


def test_clip_global_norm():
    from erase.core.surgery import clip_global_norm

    g = {"a": t(3.0, 0.0), "b": t(4.0)}  # norm 5
    out = clip_global_norm(g, 1.0)
    assert norm(out).item() == pytest.approx(1.0, abs=1e-5) and out["a"].tolist() == pytest.approx(
        [0.6, 0.0], abs=1e-6
    )
    assert clip_global_norm(g, 10.0)["a"].tolist() == [3.0, 0.0]


@pytest.mark.parametrize("case", ["conflicting", "aligned", "orthogonal"])
def test_combiners_on_hand_made_pairs(case):
    from erase.core.surgery import COMBINERS

    r = {"w": t(1.0, 0.0)}
    u = {"conflicting": {"w": t(-1.0, 1.0)}, "aligned": {"w": t(2.0, 1.0)}, "orthogonal": {"w": t(0.0, 3.0)}}[case]
    from erase.core.surgery import UPSTREAM_RETAIN_WEIGHT as W

    official, pcgrad, none = (
        COMBINERS[k](u, r, {"lam": 1.0, "scope": "global", "retain_weight": W[k]})["w"].tolist()
        for k in ("official", "pcgrad", "none")
    )
    assert none == pytest.approx([u["w"][0].item() + 0.1, u["w"][1].item()])
    if case == "conflicting":
        # official: c = -1/sqrt(2); g_u - lam * c * r/|r| = (-1 + 0.7071, 1)
        assert official == pytest.approx([-1 + 2**-0.5, 1.0], abs=1e-6)
        # PCGrad: u' = u - (<u,r>/|r|^2) r = (0, 1); r' = r - (<r,u>/|u|^2) u = (0.5, 0.5); sum = (0.5, 1.5)
        assert pcgrad == pytest.approx([0.5, 1.5], abs=1e-6)
    else:  # no conflict: official leaves g_u alone, PCGrad sums both untouched
        assert official == pytest.approx(u["w"].tolist())
        assert pcgrad == pytest.approx((u["w"] + r["w"]).tolist())


def test_official_with_a_retain_weight_adds_the_retain_gradient():
    from erase.core.surgery import COMBINERS

    u, r = {"w": t(-1.0, 1.0)}, {"w": t(1.0, 0.0)}
    out = COMBINERS["official"](u, r, {"lam": 1.0, "scope": "global", "retain_weight": 2.0})["w"].tolist()
    assert out == pytest.approx([-1 + 2**-0.5 + 2.0, 1.0], abs=1e-6)
