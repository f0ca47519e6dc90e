"""Text-to-Unlearn acceptance on faces-mini (`-m slow`, the shipped generator): eyeglasses, smile and one identity,
each erased separately with the `faces-mini` preset (for the identity, the preset's fields for identities: mode
probe): the target's rate drops by >= 80% relative to the original's (60% for the identity) on G(w) and on latents a
held-out-CLIP mapper edits to ask for it; every other attribute moves by <= 5 points; FD against concept-free renders
<= 1.2x the original's; identity similarity >= 0.95 where the original lacks the concept; palette drift <= 2x the
original's, globally and in each pixel's tile; under 10 CPU minutes per concept. The directional method must beat
the CLIP-distance baseline on the trade-off."""

import pytest

from bench.faces_mini import bars_met, run_one
from worlds.faces_mini.assets import GENERATOR_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (GENERATOR_DIR / "config.json").exists(), reason="faces-mini generator not built"),
]


def _miss(reason: str):
    return pytest.mark.xfail(reason=f"measured: {reason}", strict=True, raises=AssertionError)


# the measured misses (README, "Text-to-Unlearn that erases"; the sharpened generator, 2026-12-07): each target is
# expected to fail until the method changes, and strictly: an unexpected pass is an error that asks for this list to
# be updated. Alice meets every bar, her asked-for drop included (the held-out mapper draws her as a face), and so does
# eyeglasses since its attributes are kept through the second guide classifier (2026-12-07, sixth session).
MISSES = {
    "smile": _miss(
        "on the sharpened generator smile falls 54.5% -> 18.7% on G(w) (bar a drop of 80%) and the held-out CLIP's "
        "asked-for smiles stay (99.8% -> 98.8%)"
    ),
}
TARGETS = [
    pytest.param(kind, target, marks=MISSES.get(target, ()))
    for kind, target in (("attribute", "eyeglasses"), ("attribute", "smile"), ("identity", "Alice"))
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """run(kind, target, mode): the bench row, each erasure done once for the whole module."""
    rows = {}

    def get(kind, target, mode):
        if (kind, target, mode) not in rows:
            rows[kind, target, mode] = run_one(
                kind, target, mode, tmp_path_factory.mktemp(f"{target}-{mode}"), "faces-mini"
            )
        return rows[kind, target, mode]

    return get


@pytest.mark.parametrize("kind,target", TARGETS)
def test_concept_is_gone_and_the_rest_is_kept(kind, target, run):
    row = run(kind, target, "directional")
    assert "refused" not in row, row.get("refused")
    met = bars_met(row)
    # every bar that can be measured is met (the drop on asked-for latents cannot be measured where the held-out
    # CLIP's mapper cannot draw the target: None)
    assert all(v is not False for v in met.values()), (
        {k: v for k, v in met.items() if v is False},
        row["target_rate"],
        row["worst_other"],
    )


@pytest.mark.parametrize("kind,target", [("attribute", "eyeglasses")])
def test_directional_beats_the_clip_distance_baseline(kind, target, run):
    ours, base = run(kind, target, "directional"), run(kind, target, "clip_distance")
    assert "refused" not in ours and "refused" not in base, (ours.get("refused"), base.get("refused"))
    # the trade-off: at least as much erased, with less collateral damage (other attributes and FD)
    assert ours["relative_drop_plain"] >= base["relative_drop_plain"] - 0.05
    assert (
        ours["worst_other"]["points"] + 100 * ours["fd_ratio"] < base["worst_other"]["points"] + 100 * base["fd_ratio"]
    )
