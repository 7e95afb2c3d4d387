"""The package's layout rules, read from its source with ``ast``: one home per concept, imports
that point one way, no private names across modules.

No module is over 600 lines and no function over 80; function-local imports of the package's
own modules are few, and each says what it guards.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "belief_lens"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


@functools.cache  # parsed once per test process: the tests only read the trees
def modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        out[name] = (path, ast.parse(path.read_text(), str(path)))
    return out


def package_imports(name: str, tree: ast.Module) -> list[tuple[str, str, bool]]:
    """``(module, imported name, inside a function)`` for every import of a package module."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                if child.module.split(".")[0] == "belief_lens":
                    mod = child.module.removeprefix("belief_lens").lstrip(".")
                    found.extend((mod, a.name, in_function) for a in child.names)
            visit(child, inside)

    visit(tree, False)
    return found


def test_no_import_cycle_even_through_function_local_imports():
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, (_, tree) in mods.items():
        deps = set()
        for mod, imported, _ in package_imports(name, tree):
            full = f"{mod}.{imported}" if mod else imported
            target = full if full in mods else mod
            if target in mods and target != name:
                deps.add(target)
        graph[name] = deps
    state: dict[str, int] = {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                walk(dep, [*path, dep])
        state[node] = 2

    for name in graph:
        if name not in state:
            walk(name, [name])


def test_no_private_name_is_imported_across_modules():
    bad = [
        (name, mod, imported)
        for name, (_, tree) in modules().items()
        for mod, imported, _ in package_imports(name, tree)
        if imported.startswith("_") and not imported.startswith("__")
    ]
    assert not bad, f"private names imported across modules: {bad}"


def test_no_module_over_600_lines_and_no_function_over_80():
    too_long = []
    for name, (path, tree) in modules().items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"module {name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"function {name}.{node.name}: {n} lines")
    assert not too_long, too_long


@pytest.mark.parametrize(
    "concept",
    [
        "kl_divergence",
        "entropy",
        "r2_score",
        "regression_metrics",
        "principal_cosines",
        "sum_zero_basis",
        "free_coordinates",
        "recovery",
        "effective_sample_size",
        "is_overfit",
        "overfit_reason",
        "tied_hooks",
        "recentre",
        "prefix_counts",
        "jsonable",
        "check_seed",
        "check_option",
        "best_hook",
        "heldout",
    ],
)
def test_each_concept_is_defined_once(concept):
    homes = [
        name
        for name, (_, tree) in modules().items()
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == concept
    ]
    assert len(homes) == 1, f"{concept} is defined at module level in {homes}"


#: Modules whose functions may import package modules lazily, and why.
LAZY_IMPORTS = {
    "cli": "`belief-lens --help` must not import the analysis stack (plotly, probes, report)",
}
MAX_LAZY_IMPORTS = 15


def test_function_local_imports_only_guard_heavy_or_optional_modules():
    lazy = [
        (name, mod or imported)
        for name, (_, tree) in modules().items()
        for mod, imported, inside in package_imports(name, tree)
        if inside
    ]
    assert len(lazy) <= MAX_LAZY_IMPORTS, lazy
    unexplained = [(name, target) for name, target in lazy if name not in LAZY_IMPORTS]
    assert not unexplained, f"function-local package imports guarding nothing: {unexplained}"
