"""bench.faces_mini's table: a refused run (the mapper gate) is a row with its reason, not a crash."""

from bench.faces_mini import markdown


def _row(**extra):
    return {
        "target": "eyeglasses",
        "mode": "directional",
        "target_rate": {"original_plain": 0.4, "plain": 0.1, "original_edited": 0.99, "edited": 0.2},
        "worst_other": {"class": "smile=yes", "points": 3.0},
        "fd_ratio": 0.9,
        "identity_similarity": 0.98,
        "identity_similarity_without_target": 0.97,
        "palette_drift": {"plain": 0.01, "original_plain": 0.005, "edited": 0.01, "original_edited": 0.006},
        "retain_fidelity": {"psnr": 30.0},
        "gamma": {"classifier": {"value": 0.5}},
        "erase_seconds": 40.0,
        "peak_memory_bytes": 2**30,
        "patch_bytes": 2e6,
        "meets": {"drop_plain": True, "fd": False},
        **extra,
    }


def test_a_refused_run_is_a_row_with_its_reason():
    refused = {
        "target": "Alice",
        "mode": "directional",
        "refused": "the latent mapper for 'a photo of Alice' raised ...",
        "erase_seconds": 120.0,
    }
    lines = markdown([_row(), refused]).splitlines()
    assert len(lines) == 4
    assert "40.0 -> 10.0" in lines[2] and "99.0 -> 20.0" in lines[2] and "smile=yes 3.0 pts" in lines[2]
    assert "0.90x" in lines[2] and "1.00% (0.50%)" in lines[2] and "1024 MiB" in lines[2] and "| 1/2 |" in lines[2]
    assert lines[3].startswith("| Alice | directional | refused: the latent mapper") and "120 s" in lines[3]
    assert lines[3].count("|") == lines[0].count("|")
    assert "| not measured |" in lines[2]  # a row from before the local palette drift
    local = {"plain": 0.04, "original_plain": 0.0175, "edited": 0.05, "original_edited": 0.02}
    assert "| 4.00% (1.75%) |" in markdown([_row(local_palette_drift=local)]).splitlines()[2]


def test_the_palette_bar_holds_the_local_drift_too_where_it_was_measured():
    """The lavender lips: 1.3x the original's palette drift, 2.5x its local drift: a miss."""
    from bench.faces_mini import bars_met

    common = dict(kind="attribute", relative_drop_plain=0.9, relative_drop_edited=0.9, other_moves={})
    assert bars_met(_row(**common, palette_ratio=1.3))["palette"] is True  # an old row: global drift only
    assert bars_met(_row(**common, palette_ratio=1.3, local_palette_ratio=1.9))["palette"] is True
    assert bars_met(_row(**common, palette_ratio=1.3, local_palette_ratio=2.5))["palette"] is False
    assert bars_met(_row(**common, palette_ratio=2.5, local_palette_ratio=1.0))["palette"] is False


def test_bars_count_a_drop_only_where_the_evaluations_edit_realises_the_target():
    from bench.faces_mini import BARS, bars_met

    row = _row(kind="attribute", relative_drop_plain=0.9, relative_drop_edited=0.5, other_moves={}, palette_ratio=1.5)
    met = bars_met(row)
    assert met["drop_plain"] is True and met["drop_edited"] is False  # 99% asked for, halved: a miss
    assert (
        met["fd"] is True
        and met["identity"] is True
        and met["palette"] is True
        and met["time"] is True
        and met["others"] is True
    )
    alice = _row(
        kind="identity",
        target_rate={"original_plain": 0.075, "plain": 0.03, "original_edited": 0.001, "edited": 0.0},
        relative_drop_plain=0.6,
        relative_drop_edited=1.0,
        palette_ratio=3.0,
    )
    met = bars_met(alice)
    assert met["drop_edited"] is None  # the held-out edit drew Alice on 0.1%: nothing to measure
    assert met["drop_plain"] is (0.6 >= BARS["relative_drop_identity"]) and met["palette"] is False


def test_a_drop_on_asked_for_images_that_are_not_the_worlds_images_is_not_counted():
    """On the sharpened generator the held-out mapper asks for Alice with pastel blobs the judge calls Alice: the edit
    'realises' her (8% -> 100%) on images 24% off the world's palette, so its drop measures nothing."""
    from bench.faces_mini import bars_met

    realised = {"original_plain": 0.08, "plain": 0.01, "original_edited": 1.0, "edited": 0.035}
    blobs = {"plain": 0.010, "original_plain": 0.011, "edited": 0.157, "original_edited": 0.242}
    faces = {**blobs, "original_edited": 0.051}  # 4.6x: the held-out smile edit's faces, their hair recoloured
    common = dict(kind="identity", target_rate=realised, relative_drop_plain=0.86, relative_drop_edited=0.965)
    assert bars_met(_row(**common, palette_drift=blobs, palette_ratio=0.9))["drop_edited"] is None
    assert bars_met(_row(**common, palette_drift=faces, palette_ratio=0.9))["drop_edited"] is True


def test_update_keeps_the_rows_this_run_does_not_redo_in_variant_order(tmp_path):
    import json

    import pytest

    from bench.faces_mini import updated_rows

    def row(target, variant, plain):
        return _row(
            target=target,
            variant=variant,
            kind="attribute",
            relative_drop_plain=plain,
            relative_drop_edited=0.9,
            palette_ratio=1.0,
        )

    previous = tmp_path / "faces-mini.json"
    old = [row("eyeglasses", "paper", 0.1), row("eyeglasses", "default", 0.5), row("smile", "default", 0.5)]
    previous.write_text(json.dumps({"rows": old}))
    got = updated_rows(previous, [row("eyeglasses", "default", 0.95), row("eyeglasses", "paper+colour", 0.2)])
    assert [(r["target"], r["variant"]) for r in got] == [
        ("eyeglasses", "paper"),
        ("eyeglasses", "paper+colour"),
        ("eyeglasses", "default"),
        ("smile", "default"),
    ]
    assert got[2]["relative_drop_plain"] == 0.95  # the new row, not the old one
    assert got[0]["meets"]["drop_plain"] is False and got[3]["meets"]["drop_plain"] is False  # kept rows judged again
    with pytest.raises(SystemExit, match="does not exist"):
        updated_rows(tmp_path / "none.json", [])


def test_every_committed_row_records_the_mode_its_preset_and_overrides_resolve_to():
    """A row's mode is the run's, as resolved: the faces-mini preset's for_kind fields set mode probe for an
    identity, so Alice's default row ran mode probe although the bench asked for no mode."""
    import json
    from pathlib import Path

    from erase.api import resolve_config

    rows = json.loads((Path(__file__).parents[1] / "bench/results/faces-mini.json").read_text())["rows"]
    done = [r for r in rows if "refused" not in r]
    assert done
    for r in done:
        cfg = resolve_config("text_to_unlearn", r["preset"], r["overrides"], kind=r["kind"])
        assert r["mode"] == cfg.mode, (r["target"], r.get("variant"))
    assert any(r["mode"] == "probe" and r.get("variant") == "default" for r in done)


def test_each_row_names_the_generator_it_ran_on(tmp_path):
    from bench.faces_mini import generator_record

    (tmp_path / "generator.safetensors").write_bytes(b"weights")
    gan = generator_record(tmp_path)
    (tmp_path / "sharpen.json").write_text("{}")
    sharpened = generator_record(tmp_path)
    assert gan["digest"] == sharpened["digest"] and (gan["sharpened"], sharpened["sharpened"]) == (False, True)
    lines = markdown([_row(generator=gan), _row(generator=sharpened), _row()]).splitlines()
    assert lines[2].endswith(f"| GAN {gan['digest'][:7]} |") and lines[3].endswith(
        f"| sharpened {gan['digest'][:7]} |"
    )
    assert lines[4].endswith("|  |") and len({line.count("|") for line in lines}) == 1


def test_a_stored_row_of_an_earlier_evaluation_is_evaluated_again_once(tmp_path, monkeypatch):
    """Rows are resumable; a row whose figures come from an earlier evaluation (before the local palette drift and
    the identity mapper's L2) gets them again from its kept patch, and is then read as it is."""
    import json

    import bench.faces_mini as bench
    import erase.core.patch as patch_module

    evaluated = []

    def figures(pipe, protocol, target, kind, out):
        evaluated.append((target, out))
        return {"evaluation": bench.EVALUATION, "local_palette_ratio": 2.5}

    monkeypatch.setattr(bench, "figures", figures)
    monkeypatch.setattr(patch_module.ErasurePatch, "from_pretrained", classmethod(lambda cls, folder: folder))
    monkeypatch.setattr(patch_module, "apply_patch", lambda pipe, patch: None)
    out = tmp_path / "eyeglasses-default"
    out.mkdir()
    stored = _row(kind="attribute", relative_drop_plain=0.9, relative_drop_edited=0.9, palette_ratio=1.3)
    (out / "row.json").write_text(json.dumps(stored))
    row = bench.run_one("attribute", "eyeglasses", "directional", out, "faces-mini")
    assert evaluated == [("eyeglasses", out)] and row["evaluation"] == bench.EVALUATION
    assert row["meets"]["palette"] is False and row["erase_seconds"] == stored["erase_seconds"]  # the rest kept
    assert json.loads((out / "row.json").read_text()) == row
    assert bench.run_one("attribute", "eyeglasses", "directional", out, "faces-mini") == row
    assert len(evaluated) == 1
    assert bench.eval_folder(out) == out / f"eval-{bench.EVALUATION}"
