"""Every error message of the evaluation side names only command-line options that exist."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "eval").rglob("*.py")) + [
    ROOT / "erase" / "cli" / "evaluate.py",
    ROOT / "erase" / "cli" / "checks.py",
]
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def known_options() -> set[str]:
    from erase.cli import build_parser

    parser, _ = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {opt for p in sub.choices.values() for opt in p._option_string_actions}


def message_strings(tree: ast.AST):
    """String pieces inside ``raise`` statements and in calls to check_* / loaders that take an option name."""
    for node in ast.walk(tree):
        is_call = isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")).startswith(
            ("check_", "load_unlearncanvas_vit")
        )
        if isinstance(node, ast.Raise) or is_call:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                    yield inner.lineno, inner.value


def test_messages_name_only_existing_options():
    known = known_options()
    assert {"--batch-size", "--fid-weights", "--style-classifier", "--sampler", "--overwrite"} <= known
    unknown = [
        f"{f.relative_to(ROOT)}:{line}: {opt}"
        for f in FILES
        for line, text in message_strings(ast.parse(f.read_text()))
        for opt in OPTION.findall(text)
        if opt not in known
    ]
    assert unknown == []


def test_the_scan_sees_the_messages():
    """Guard against a scan that finds nothing: it must see options in the raise statements of these files."""
    found = {
        opt for f in FILES for _, text in message_strings(ast.parse(f.read_text())) for opt in OPTION.findall(text)
    }
    assert {
        "--batch-size",
        "--out",
        "--patch",
        "--fid-weights",
        "--clip-weights",
        "--style-classifier",
        "--no-fid",
        "--device",
    } <= found


@pytest.mark.parametrize("bad", ["--no-verify", "--fid-weight"])
def test_the_scan_catches_an_option_that_does_not_exist(bad):
    tree = ast.parse(f"raise ValueError('pass {bad} to skip it')")
    assert [o for _, t in message_strings(tree) for o in OPTION.findall(t)] == [bad]
    assert bad not in known_options()
