"""The canvas-mini benchmark's aggregation: means and changes against the original counted by hand, the
worst kept concept found across erasures, the table and chart written from the numbers, the README
replaced between its markers only."""

import pytest

from bench import canvas_mini as bench
from bench import canvas_mini_table as table


def row(ua, ira, cra, worst, psnr=30.0, ood=1.0, seconds=10.0):
    return {
        "ua": ua,
        "ira": ira,
        "cra": cra,
        "worst_kept": {"concept": worst[0], "accuracy": worst[1]},
        "retained_psnr": psnr,
        "retained_perceptual": 0.1,
        "fid": 1.0,
        "fid_clip": 2.0,
        "clip_score": 0.3,
        "ood_ua": ood,
        "erase_seconds": seconds,
        "peak_memory_bytes": 2**30,
        "patch_bytes": 1e5,
    }


def test_summary_by_hand():
    rows = {"A": row(1.0, 0.9, 0.8, ("B", 0.7), psnr=20), "B": row(0.5, 1.0, 1.0, ("A", 0.9), psnr=30)}
    base = {"A": {"ira": 1.0, "cra": 0.9}, "B": {"ira": 0.9, "cra": 1.0}}
    s = bench.summarise(rows, base)
    assert s["ua"] == pytest.approx(0.75) and s["retained_psnr"] == pytest.approx(25)
    assert s["d_ira_points"] == pytest.approx(100 * ((0.9 - 1.0) + (1.0 - 0.9)) / 2)
    assert s["d_cra_points"] == pytest.approx(100 * ((0.8 - 0.9) + 0.0) / 2)
    assert s["worst_kept"] == {"erased": "A", "concept": "B", "accuracy": 0.7} and s["n"] == 2


def _results():
    targets = {"style": ["A", "B"], "object": ["X"]}
    orig = {c: {"ua": 0.0, "ira": 1.0, "cra": 1.0, "ood_ua": 0.2} for c in ["A", "B", "X"]}
    methods = {}
    for m, ua in (("m1", 1.0), ("m2", 0.6)):
        rows = {c: row(ua, 1.0, 1.0, ("B" if c == "A" else "A", 0.95)) for c in targets["style"]}
        obj = {"X": row(ua, 1.0, 1.0, ("Y", 1.0))}
        methods[m] = {
            "style": {"rows": rows, "mean": bench.summarise(rows, orig)},
            "object": {"rows": obj, "mean": bench.summarise(obj, orig)},
        }
    return {
        "protocol": {"seeds": [0, 1], "sampler": "ddim", "steps": 50, "guidance": 7.5},
        "targets": targets,
        "ood_seeds": [0],
        "probe_seeds": [100],
        "original": {"rows": orig, "fid": 1.0, "fid_clip": 2.0, "clip_score": 0.3},
        "methods": methods,
        "bench_seconds": 60.0,
        "workers": 2,
        "job_seconds": {"original": 30.0, "m1:style": 60.0},
    }


def test_table_and_chart_come_from_the_numbers(tmp_path):
    r = _results()
    md = table.markdown(r)
    lines = [line for line in md.splitlines() if line.startswith("| m2 | style")]
    assert lines and "| 60.0 |" in lines[0]  # UA in percent, from the rows
    assert "Jobs took 2 min in all" in md
    table.bar_chart(r, tmp_path / "c.png")
    from PIL import Image

    assert Image.open(tmp_path / "c.png").size[0] > 200


def test_readme_is_replaced_between_its_markers_only(tmp_path):
    start, end = table.README_MARKERS
    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{start}\nold table\n{end}\ntail\n")
    assert table.update_readme("| new |", readme)
    assert readme.read_text() == f"head\n{start}\n| new |\n{end}\ntail\n"
    other = tmp_path / "OTHER.md"
    other.write_text("no markers")
    assert not table.update_readme("| new |", other) and other.read_text() == "no markers"


def test_attack_columns_are_means_of_the_rows_by_hand():
    rows = {
        "A": {
            "asr_unlearndiffatk": 0.0,
            "confirmed_asr_unlearndiffatk": 0.0,
            "asr_embedding": 1.0,
            "confirmed_asr_embedding": 1 / 3,
        },
        "B": {
            "asr_unlearndiffatk": 1 / 3,
            "confirmed_asr_unlearndiffatk": 0.0,
            "asr_embedding": 2 / 3,
            "confirmed_asr_embedding": 0.0,
        },
    }
    assert table.asr_cell(rows) == "17 / 83 (0 / 17)"
    assert table.asr_cell({"A": {"asr_unlearndiffatk": 0.5}}) == ""  # a row without every attack: no column value
    r = _results()
    for m in r["methods"].values():
        for c, v in m["style"]["rows"].items():
            v.update(rows["A"] if c == "A" else rows["B"])
    line = next(x for x in table.markdown(r).splitlines() if x.startswith("| m1 | style"))
    assert "| 17 / 83 (0 / 17) |" in line
