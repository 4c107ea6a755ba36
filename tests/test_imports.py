"""The import structure of prefkit: no cycles anywhere, and the pure math imports only torch/numpy/stdlib.

The graph is built from the source with `ast`, top-level AND function-level imports, so a cycle closed
by an import inside a function still counts (docs: issue 15, "Import cycles").
"""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "prefkit"
CLI = ROOT / "cli"  # installed as prefkit.cli (pyproject.toml [tool.setuptools.package-dir])
MATH_MODULES = ("prefkit.math.logprob", "prefkit.math.losses", "prefkit.math.stats")
MATH_ALLOWED_THIRD_PARTY = {"torch", "numpy"}


def module_name(path: Path) -> str:
    if path.is_relative_to(CLI):
        parts = ("prefkit", "cli") + path.relative_to(CLI).with_suffix("").parts
    else:
        parts = ("prefkit",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


def imported_names(path: Path) -> set[str]:
    """Every absolute module name `path` imports, anywhere in the file (relative imports resolved)."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            # `from prefkit.judges import clip` imports the submodule prefkit.judges.clip
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in [*PACKAGE.rglob("*.py"), *CLI.rglob("*.py")]}
    graph = {}
    for name, path in modules.items():
        edges = {n for n in imported_names(path) if n in modules and n != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_graph_sees_function_level_imports():
    graph = import_graph()
    assert "prefkit.families" in graph["prefkit.sampling"]
    assert len(graph) > 30


def test_cli_is_the_top_layer():
    """lint-imports cannot see prefkit.cli (it lives in cli/), so its place on top is asserted here."""
    graph = import_graph()
    assert "prefkit.bench" in graph["prefkit.cli.main"]
    importers = sorted(
        m
        for m, edges in graph.items()
        if not m.startswith("prefkit.cli") and any(e.startswith("prefkit.cli") for e in edges)
    )
    assert importers == [], f"modules below the CLI import it: {importers}"


def test_prefkit_import_graph_is_acyclic():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_math_modules_import_only_torch_numpy_stdlib_and_each_other():
    for name in MATH_MODULES:
        path = PACKAGE / (name.split(".", 1)[1].replace(".", "/") + ".py")
        for imported in imported_names(path):
            top = imported.split(".")[0]
            if top == "prefkit":
                assert imported in MATH_MODULES, f"{name} imports {imported}"
            elif top != "__future__" and top not in sys.stdlib_module_names:
                assert top in MATH_ALLOWED_THIRD_PARTY, f"{name} imports {imported}"


def test_every_package_is_installed():
    """Every folder of prefkit/ with an __init__.py is listed in pyproject.toml's packages: a wheel (not an
    editable install) would otherwise lack it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
