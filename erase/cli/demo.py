"""``erase demo``: the README's ``make demo`` job (erase.demo) from an installed package."""

from __future__ import annotations

import os

from ..threads import default_threads
from .common import UsageError, command


@command("demo", "erase a canvas-mini style with SalUn and write an original-vs-erased report and grid (what `make demo` runs)")
def _demo(p):
    p.add_argument("--out", default="demo-out", help="output folder (the demo owns it: a rerun replaces what it wrote there)")
    p.add_argument("--concept", default="Watercolor")
    p.add_argument("--kind", default="style", choices=["style", "object"])
    p.add_argument("--preset", default="canvas-mini")
    p.add_argument("--threads", type=int, default=default_threads(), help="torch CPU threads (default: the CPUs this process may use)")

    def run(args):
        from ..demo import main

        argv = ["--out", args.out, "--concept", args.concept, "--kind", args.kind, "--preset", args.preset, "--threads", str(args.threads)]
        if main(argv) != 0:
            raise UsageError(f"the demo could not erase {args.kind} {args.concept!r}; see the line above")

    return run
