"""The ``erase`` command line. Every subcommand maps onto the Python API.

    erase eval --model PATH --protocol canvas-mini --target Watercolor --kind style --out DIR
    erase grid --model PATH --out grid.png
    erase run salun --model PATH --concept Watercolor --kind style --out DIR
    erase methods
    erase attack --model PATH --patch DIR --target Watercolor --kind style --attack unlearndiffatk --out DIR

Errors the user can fix (every subclass of ``erase.core.errors.EraseError``) are one line on stderr
and exit code 2; nothing is written on bad input. Ctrl-C is one line and exit code 130.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..core.errors import EraseError
from ..core.files import no_space_errno
from ..core.threads import sleep_when_idle
from . import attack, batch, demo, erasing, evaluate, export  # noqa: F401  (each module registers its subcommands)
from .common import COMMANDS

sleep_when_idle()  # a batch's ranks sharing the cores: before torch (imported lazily by the subcommands) starts OpenMP


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the problem and ``--help``) and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = OneLineParser(
        prog="erase",
        description="erasekit: erase concepts (styles, objects, identities) from generative image models, "
        "and prove it with numbers. Every subcommand works offline on the shipped canvas-mini model.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    runners = {}
    for name, (help_text, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        runners[name] = fn(p)
    return parser, runners


def main(argv=None) -> int:
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if (
        getattr(args, "model", None) is not None
    ):  # a shipped model's name -> its folder; reports keep the name as given
        from ..core.locations import resolve_model

        args.model_id, args.model = args.model, str(resolve_model(args.model))
    if not args.command:
        parser.print_help()
        return 2
    try:
        runners[args.command](args)
    except EraseError as e:
        print(f"erase {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # out of space where no writer said so itself: still one line, never a traceback
        code = no_space_errno(e)
        if code is None:
            raise
        print(
            f"erase {args.command}: error: no space left writing {getattr(e, 'filename', None) or 'the output'}: "
            f"{os.strerror(code).lower()}; free some space or write elsewhere",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"erase {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
