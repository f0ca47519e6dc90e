"""DoCo's gradient-surgery ablation on canvas-mini: the preset with surgery official, pcgrad and none.

    # runs the three 5-target acceptances (about 45 minutes on 2 CPU cores)
    python -m bench.doco_ablation
    # only collects runs/acceptance/doco-{canvas-mini,surgery-pcgrad,surgery-none}
    python -m bench.doco_ablation --from-runs

Writes bench/results/doco_surgery_ablation.json and prints the README's table (means over the targets).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .acceptance import DEFAULT_TARGETS, run_acceptance

RUNS = {"official": "doco-canvas-mini", "pcgrad": "doco-surgery-pcgrad", "none": "doco-surgery-none"}
RESULTS = Path(__file__).resolve().parent / "results" / "doco_surgery_ablation.json"


def _means(summary: dict) -> dict:
    rows = summary["rows"]

    def mean(key):
        return sum(key(r) for r in rows) / len(rows)

    return {
        "ua": mean(lambda r: r["ua"]),
        "d_ira_points": mean(lambda r: r["d_ira_points"]),
        "d_cra_points": mean(lambda r: r["d_cra_points"]),
        "retained_psnr": mean(lambda r: r["retained_psnr"]),
        "ood_ua": mean(lambda r: r["ood"]["ua"]),
        "per_target": {
            r["target"]: {k: r[k] for k in ("ua", "d_ira_points", "d_cra_points", "retained_psnr", "seconds")}
            | {"ood_ua": r["ood"]["ua"]}
            for r in rows
        },
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--from-runs", action="store_true", help="collect existing runs/acceptance summaries instead of running"
    )
    args = p.parse_args(argv)
    targets = [(t.split(":", 1)[1], t.split(":", 1)[0]) for t in DEFAULT_TARGETS.split(",")]
    results = {}
    for surgery, name in RUNS.items():
        folder = Path("runs/acceptance") / name
        if args.from_runs:
            summary = json.loads((folder / "summary.json").read_text())
        else:
            summary = run_acceptance(
                "doco",
                targets,
                folder,
                "canvas-mini",
                {} if surgery == "official" else {"surgery": surgery},
                ood_seeds=1,
            )
        results[surgery] = _means(summary)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"method": "doco", "preset": "canvas-mini", "targets": DEFAULT_TARGETS, "results": results}, indent=2
        )
        + "\n"
    )
    print("| surgery | UA | IRA change | CRA change | retained PSNR | OOD UA |\n|---|---|---|---|---|---|")
    for surgery, m in results.items():
        print(
            f"| {surgery} | {100 * m['ua']:.1f} | {m['d_ira_points']:+.2f} | {m['d_cra_points']:+.2f} | "
            f"{m['retained_psnr']:.1f} dB | {100 * m['ood_ua']:.1f} |"
        )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
