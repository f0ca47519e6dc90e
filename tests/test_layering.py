"""The direction of imports (DESIGN.md, section 2), checked on the source: no cycles between modules, and
each layer imports only the layers below it. Function-level imports count too.

    erase.core                 (bottom: errors, files, the patch format, components, requests, the registry, data,
                               the shared loop; never pipelines, eval, a world, a method or the application)
      <- erase.methods.*       (one method per file; use the core; never eval or pipelines)
    pipelines.*  -> erase.core (patch format, components; never eval, methods, the loop or the CLI)
    eval.*       -> pipelines, erase.core   (never methods, the API, the CLI or a world: worlds plug in through
                                             eval.worlds, found by name)
    worlds.*     -> eval, pipelines, erase.core   (a world builds its models and judges; never the API or the CLI)
    erase.api    -> erase.core (methods load through the registry)
    erase.batch  -> erase.api + erase.core (jobs, manifest, locks; never eval or pipelines)
    erase.export, erase.cli.*, erase.demo   (top: the application, the only modules that know every subsystem)
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("erase", "pipelines", "eval", "worlds")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t.split(".")[0] in PACKAGES and t != name:
                found.add(t)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_no_import_cycles():
    state, stack = {}, []

    def visit(m):
        state[m] = "active"
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == "active":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n) :] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


APPLICATION = ("erase.api", "erase.batch", "erase.demo", "erase.export", "erase.cli", "erase.__main__")


def _forbidden(module: str) -> tuple[str, ...]:
    if module.startswith("erase.core"):
        return ("pipelines", "eval", "worlds", "erase.methods", *APPLICATION)
    if module.startswith("erase.methods"):
        return ("pipelines", "eval", "worlds", "erase.cli", "erase.api", "erase.demo", "erase.batch")
    if module.startswith("pipelines"):
        return (
            "eval",
            "worlds",
            "erase.cli",
            "erase.api",
            "erase.methods",
            "erase.core.loop",
            "erase.demo",
            "erase.batch",
        )
    if module.startswith("eval"):
        return ("worlds", "erase.cli", "erase.api", "erase.methods", "erase.core.loop", "erase.demo", "erase.batch")
    if module.startswith("worlds"):
        return ("erase.cli", "erase.api", "erase.methods", "erase.demo", "erase.batch")
    if module == "erase.api":
        return ("worlds", "erase.cli", "erase.demo", "erase.batch")
    if module.startswith("erase.cli"):  # no world-specific branch: a world reaches the CLI only through eval.worlds
        return ("worlds",)
    if module == "erase.batch":  # jobs, manifest and locks: above the API, below the CLI; evaluation is the CLI's
        return ("pipelines", "eval", "worlds", "erase.cli", "erase.demo", "erase.methods")
    return ()


def test_every_module_of_erase_is_in_one_room():
    """erase/ holds three rooms: the core at the bottom, the methods, and the application on top."""
    homeless = [
        m
        for m in GRAPH
        if m.startswith("erase.")
        and not m.startswith(("erase.core", "erase.methods"))
        and not any(m == a or m.startswith(a + ".") for a in APPLICATION)
    ]
    assert not homeless, f"modules of erase/ outside core/, methods/ and the application: {homeless}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_layer_direction(module):
    bad = [n for n in GRAPH[module] for f in _forbidden(module) if n == f or n.startswith(f + ".")]
    assert not bad, f"{module} imports {bad}, against the direction of imports"


def test_evaluation_finds_worlds_only_by_name():
    """No module of eval/ imports a world, and every built-in world is a plugin module that builds its World."""
    from eval.worlds import BUILTIN, get_world

    assert not [m for m in GRAPH if m.startswith("eval") and any(n.startswith("worlds") for n in GRAPH[m])]
    for name, module in BUILTIN.items():
        assert module in MODULES and get_world(name).name == name


def test_the_checker_sees_function_level_and_relative_imports():
    assert "eval.protocols" in GRAPH["erase.cli.erasing"]  # imported inside a function
    assert "erase.cli.common" in GRAPH["erase.cli.erasing"]  # relative import
    assert "erase.core.patch" in GRAPH["pipelines.stable_diffusion"]


def test_no_module_is_longer_than_600_lines():
    benches = {f"bench.{f.stem}": f for f in (ROOT / "bench").glob("*.py")}  # the benchmarks too
    long = {m: n for m, p in {**MODULES, **benches}.items() if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"split these modules (over 600 lines): {long}"


def test_the_design_document_this_test_cites_exists():
    assert "## 2. The direction of imports" in (ROOT / "DESIGN.md").read_text()


def test_the_names_users_need_most_load_from_erase_on_first_use():
    """``from erase import erase_concept, EraseRequest, ErasurePatch`` works, and ``import erase`` alone (what every
    CLI command pays) imports none of them."""
    import subprocess
    import sys

    code = (
        "import sys, erase; assert 'erase.api' not in sys.modules and 'torch' not in sys.modules; "
        "from erase import EraseRequest, ErasurePatch, erase_concept; "
        "from erase.api import erase_concept as e; assert e is erase_concept; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr
