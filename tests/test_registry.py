"""The method registry: discovery, unique names, help for every option, typed option values."""

from dataclasses import dataclass

import pytest

from erase.core.errors import EraseError
from erase.core.registry import _REGISTRY, config_options, get_method, list_methods, option, register_method


@dataclass
class _Cfg:
    lr: float = option(1e-3, "learning rate")


class _Eraser:
    """A test method."""


def test_register_rejects_duplicates_bad_names_and_missing_help(monkeypatch):
    monkeypatch.setattr("erase.core.registry._REGISTRY", dict(_REGISTRY))
    register_method("toy_method", _Cfg, _Eraser)
    register_method("toy_method", _Cfg, _Eraser)  # re-registering the same class (module reload) is fine
    with pytest.raises(ValueError, match="already registered"):
        register_method("toy_method", _Cfg, type("Other", (), {}))
    with pytest.raises(ValueError, match="lower-case"):
        register_method("Toy", _Cfg, _Eraser)

    @dataclass
    class NoHelp:
        lr: float = 1e-3

    with pytest.raises(ValueError, match=r"fields without help: \['lr'\]"):
        register_method("toy_nohelp", NoHelp, _Eraser)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(EraseError, match=r"unknown method 'nosuch'; known methods: .*salun"):
        get_method("nosuch")


def test_methods_are_discovered_from_their_package():
    assert "salun" in list_methods()


@pytest.mark.parametrize("name", list_methods())
def test_every_option_has_help(name):
    opts = config_options(get_method(name).config_cls)
    assert opts and all(len(h) > 10 for _, _, h in opts), [n for n, _, h in opts if len(h) <= 10]


@pytest.mark.parametrize(
    "value, match",
    [
        ({"lr": "abc"}, r"salun option lr expects float, got 'abc'"),
        ({"steps": 2.5}, r"salun option steps expects int, got 2.5"),
        ({"steps": True}, r"salun option steps expects int"),
        ({"lr": float("nan")}, r"salun option lr must be a finite number"),
        ({"forget_seeds": -1}, r"forget_seeds must be at least 1"),
        ({"retain_loss": 3}, r"retain_loss expects str"),
        ({"lr": None}, r"lr cannot be empty"),
    ],
)
def test_option_types_are_checked(value, match):
    from erase.api import resolve_config

    with pytest.raises(EraseError, match=match):
        resolve_config("salun", None, value)


def test_integral_floats_and_ints_are_accepted():
    from erase.api import resolve_config

    cfg = resolve_config("salun", None, {"steps": 3.0, "lr": 1, "forget_images": None})
    assert cfg.steps == 3 and isinstance(cfg.steps, int) and cfg.lr == 1.0 and isinstance(cfg.lr, float)


def test_error_messages_name_only_options_that_exist():
    """Every --flag quoted in a message of the package is an option of some parser (`erase` or a module's own)."""
    import ast
    import re
    from pathlib import Path

    from erase.cli import build_parser

    parser, _ = build_parser()
    known = {"--help"}
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            for a in sub._actions:
                known.update(a.option_strings)
    root = Path(__file__).resolve().parents[1]
    quoted = {}
    for pkg in ("erase", "pipelines", "eval"):
        for f in (root / pkg).rglob("*.py"):
            tree = ast.parse(f.read_text())
            calls = [
                n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "add_argument"
            ]
            defined = {id(a) for n in calls for a in n.args}
            known.update(
                a.value for n in calls for a in n.args if isinstance(a, ast.Constant) and str(a.value).startswith("--")
            )
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in defined:
                    for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", node.value):
                        quoted.setdefault(flag, f.name)
    assert quoted, "the scan found no quoted flags at all"
    unknown = {flag: where for flag, where in quoted.items() if flag not in known}
    assert not unknown, f"messages name options that do not exist: {unknown}"


def test_every_shipped_preset_resolves():
    """Each assets/presets/<method>/<name>.json names a registered method and only
    options it has, with valid values."""
    from pathlib import Path

    from erase.api import resolve_config
    from erase.core.registry import list_methods

    root = Path(__file__).resolve().parents[1] / "assets" / "presets"
    presets = sorted(root.glob("*/*.json"))
    assert len(presets) >= 8
    for path in presets:
        assert path.parent.name in list_methods(), path
        resolve_config(path.parent.name, path.stem)
        for kind in ("style", "object", "attribute", "identity"):  # and with each kind's own fields
            resolve_config(path.parent.name, path.stem, kind=kind)


def test_a_presets_for_kind_fields_apply_to_that_kind_only_and_overrides_still_win(tmp_path):
    import json

    from erase.api import resolve_config

    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"_about": "x", "steps": 7, "lr": 0.5, "for_kind": {"object": {"steps": 9}}}))
    assert resolve_config("salun", str(preset)).steps == 7
    assert resolve_config("salun", str(preset), kind="style").steps == 7
    obj = resolve_config("salun", str(preset), kind="object")
    assert obj.steps == 9 and obj.lr == 0.5  # the kind's fields on top of the preset's, the rest kept
    assert resolve_config("salun", str(preset), {"steps": 3}, kind="object").steps == 3
    from erase.api import preset_kinds

    assert preset_kinds("salun", str(preset)) == {"object": {"steps": 9}}  # what `erase methods --preset` lists
    for bad in ({"object": 9}, {"objects": {"steps": 9}}):  # not an object of options; not a kind
        preset.write_text(json.dumps({"steps": 7, "for_kind": bad}))
        with pytest.raises(EraseError, match="for_kind must map a kind of concept"):
            resolve_config("salun", str(preset), kind="object")


def test_every_method_config_shares_the_base_options():
    """patch_dtype, steps and checkpoint_every are declared once (MethodConfig), lr once for the trained methods."""
    from dataclasses import fields

    from erase.core.registry import MethodConfig, TrainedConfig, get_method, list_methods

    for name in list_methods():
        cls = get_method(name).config_cls
        assert issubclass(cls, MethodConfig) and cls.method == name, name
        assert {"steps", "patch_dtype", "checkpoint_every"} <= {f.name for f in fields(cls)}
        assert issubclass(cls, TrainedConfig) == (name not in ("uce", "rece", "mace")), (
            name
        )  # closed form (MACE: its LoRAs inside)


def test_a_run_validates_its_config_once(monkeypatch, tmp_path):
    from erase.cli import main
    from erase.core.registry import MethodConfig

    calls = []
    real = MethodConfig.validate
    monkeypatch.setattr(MethodConfig, "validate", lambda self: calls.append(type(self).__name__) or real(self))
    assert (
        main(
            [
                "run",
                "uce",
                "--model",
                "canvas-mini",
                "--concept",
                "Watercolor",
                "--kind",
                "style",
                "--preset",
                "canvas-mini",
                "--out",
                str(tmp_path / "wc"),
                "--quiet",
            ]
        )
        == 0
    )
    assert calls == ["UCEConfig"]


@pytest.mark.parametrize("method", ["salun", "uce"])
def test_a_bad_shared_option_names_the_method(method):
    from erase.api import resolve_config

    with pytest.raises(
        EraseError, match=f"unknown patch_dtype 'int8' for {method}; choose one of float16, bfloat16, float32"
    ):
        resolve_config(method, overrides={"patch_dtype": "int8"})
