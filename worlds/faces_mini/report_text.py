"""faces-mini's part of report.md (``World.report_lines``) and its one-line summary (``World.summary``)."""

from __future__ import annotations

from .palette import TILE


def _pct(x) -> str:
    return f"{100 * x:.1f}"


def _target_seeds_line(fd: dict) -> list[str]:
    t = fd.get("target_seeds") or {}
    if "value" not in t:
        return []
    return [
        f"FD on the {t['n']} seeds whose original has the target (vs the same renders): {t['value']:.3f} "
        f"(original {t['original']:.3f}; floor of {t['n']} renders {t['floor_renders']:.3f}"
        + (
            f", the original's faces without it {t['original_without_target']:.3f})"
            if "original_without_target" in t
            else ")"
        )
    ]


def _recognised_line(rec: dict | None) -> list[str]:
    if not rec:
        return []
    return [
        "recognised as the world's faces (the classifier confident on every head but the target's): "
        f"{_pct(rec['plain'])}% plain, {_pct(rec['edited'])}% asked for the target (original "
        f"{_pct(rec['original_plain'])}% / {_pct(rec['original_edited'])}%)"
    ]


def report_lines(r: dict) -> list[str]:
    t = r["target_rate"]
    lines = [
        f'Prompt phrase: "{r["phrase"]}".',
        "",
        "| target rate | plain G(w) | asked for it G(w_hat) |",
        "|---|---|---|",
        f"| original | {_pct(t['original_plain'])}% | {_pct(t['original_edited'])}% |",
        f"| this model | {_pct(t['plain'])}% | {_pct(t['edited'])}% |",
        "",
        "| attribute | original | this model | change (points) |",
        "|---|---|---|---|",
    ]
    for head, classes in r["attribute_rates"].items():
        for label, rate in classes.items():
            if head in ("eyeglasses", "smile", "hat", "beard") and label == "no":
                continue
            before = r["original"]["attribute_rates"][head][label]
            lines.append(f"| {head}={label} | {_pct(before)} | {_pct(rate)} | {100 * (rate - before):+.1f} |")
    fd = r["fd"]
    lines += [
        "",
        f"FD (classifier features vs {fd['reference_renders']} {fd['reference']}): {fd['value']:.3f} "
        f"(original {fd['original']:.3f}, renders floor {fd['floor_renders']:.3f})",
        *_target_seeds_line(fd),
        *_drift_line("palette drift (share of pixels far from every rendered colour)", r["palette_drift"]),
        *_drift_line(
            f"local palette drift (far from every colour rendered in the pixel's {TILE}-pixel tile)",
            r.get("local_palette_drift"),
        ),
        f"gamma: classifier {r['gamma']['classifier']['value']:.3f}, held-out CLIP {r['gamma']['clip']['value']:.3f}",
        *_recognised_line(r.get("recognised")),
    ]
    if r.get("identity_similarity"):
        ident = r["identity_similarity"]
        lines.append(
            f"identity similarity to the original: {ident['mean']:.3f} (min {ident['min']:.3f})"
            + (
                f"; {ident['without_target']:.3f} on the seeds without the target"
                if ident.get("without_target") is not None
                else ""
            )
        )
    return lines


def _drift_line(name: str, drift: dict | None) -> list[str]:
    """One palette-drift figure of the four sets (none where the report has not measured it)."""
    if drift is None:
        return []
    return [
        f"{name}: {100 * drift['plain']:.2f}% plain, {100 * drift['edited']:.2f}% asked for the target (original "
        f"{100 * drift['original_plain']:.2f}% / {100 * drift['original_edited']:.2f}%)"
    ]


def summary(r: dict) -> str:
    t = r["target_rate"]
    return (
        f"{r['target']} ({r['kind']}): rate {_pct(t['original_plain'])}% -> {_pct(t['plain'])}%, asked for it "
        f"{_pct(t['original_edited'])}% -> {_pct(t['edited'])}%; FD {r['fd']['value']:.3f} (original "
        f"{r['fd']['original']:.3f}); gamma {r['gamma']['classifier']['value']:.3f}"
    )
