"""``erase demo``: the README's ``make demo`` job (erase.demo) from an installed package."""

from __future__ import annotations

from .common import UsageError, command


@command(
    "demo",
    "erase a canvas-mini style with SalUn and write an original-vs-erased report and grid (what `make demo` runs)",
)
def _demo(p):
    from ..demo import add_arguments

    add_arguments(p)

    def run(args):
        from ..demo import run_demo

        if run_demo(args) != 0:
            raise UsageError(f"the demo could not erase {args.kind} {args.concept!r}; see the line above")

    return run
