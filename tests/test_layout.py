"""The library's layout: stage subpackages whose imports point down, and small modules.

Imports are read from the source (every ``import`` and ``from ... import``, lazy ones inside
functions included), so the checks hold without importing torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "workflow" / "scripts" / "brainldm"
#: The longest a module may grow before it is split (lines, formatted).
MAX_MODULE_LINES = 550


def module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(LIBRARY.rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The library modules that ``path`` imports (``from brainldm.x import y`` counts module
    ``brainldm.x.y`` when that is a module, else ``brainldm.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("brainldm")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("brainldm"):
            assert node.level == 0, f"{path}: relative import; the library imports absolutely"
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)
    return found & known


def import_graph() -> dict[str, set[str]]:
    modules = library_modules()
    known = set(modules)
    return {name: imported_modules(path, known) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_every_name_a_rule_script_imports_from_the_library_exists():
    """Rule scripts run only inside Snakemake jobs: an import they make that no longer resolves
    (a function moved to another module) would fail there, late; here it fails at once."""
    import importlib

    scripts = sorted(LIBRARY.parent.glob("*.py"))
    assert len(scripts) > 20
    for script in scripts:
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("brainldm"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(
                        f"{node.module}.{alias.name}"
                    ), f"{script.name}: {node.module} has no {alias.name}"


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_the_library_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_production_code_never_imports_the_toy_world():
    offenders = {
        name: sorted(t for t in targets if t.startswith("brainldm.toy"))
        for name, targets in import_graph().items()
        if not name.startswith("brainldm.toy")
    }
    assert not {name: targets for name, targets in offenders.items() if targets}


def test_core_imports_no_stage():
    """core/ (config, names, tables, atomic writes) sits below every stage."""
    for name, targets in import_graph().items():
        if name.startswith("brainldm.core"):
            assert all(t.startswith("brainldm.core") for t in targets), (name, targets)


def test_stage_packages_have_empty_init_files():
    """A rule's env must not import torch through a parent package."""
    packages = [path for path in LIBRARY.rglob("__init__.py") if path.parent != LIBRARY]
    assert len(packages) >= 9
    assert all(path.read_text() == "" for path in packages), [str(p) for p in packages if p.read_text()]


@pytest.mark.parametrize("name", sorted(library_modules()))
def test_modules_stay_small(name):
    lines = len(library_modules()[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines; split it by job"
