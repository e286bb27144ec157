"""The house has no arrow running back up and no circle (docs/architecture.md, "Layers")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Inside icg_core, from the bottom up. A module may import its own group and lower ranks only.
RANKS = {
    "icg_core.config": 0,
    "icg_core.data.schemas": 0,
    "icg_core.storage": 1,
    "icg_core.layout": 2,
    "icg_core.runtime": 2,
    "icg_core.progress": 0,
    "icg_core.data.images": 2,
    "icg_core.data": 3,  # importers
    "icg_core.world": 3,
    "icg_core.models": 4,
    "icg_core.rewards": 5,
    "icg_core.training": 6,
    "icg_core.serving": 6,
    "icg_core.evaluation": 7,
    "icg_core.report": 7,
    "icg_core.stages": 8,
}
FORBIDDEN = {  # tree -> top-level packages it must never import
    "icg_core": {"pipelines", "dags", "airflow", "ray"},
    "pipelines": {"dags", "airflow"},
}
# The one module of pipelines that is Airflow's side (the DAGs' operator and alerts, installed with
# the package so the DAGs folder alone is enough); no stage or CLI module may import it.
AIRFLOW_SIDE = "pipelines/orchestration.py"


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions (relative imports resolved)."""
    name = _module(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return found


def _group(module: str) -> str:
    return max((g for g in RANKS if module == g or module.startswith(g + ".")), key=len)


def graph() -> dict[str, set[str]]:
    """icg_core module -> the icg_core modules it imports."""
    paths = sorted((REPO / "icg_core").rglob("*.py"))
    modules = {_module(p) for p in paths}
    packages = {_module(p) for p in paths if p.name == "__init__.py"}  # importing one runs an empty file
    edges: dict[str, set[str]] = {}
    for path in paths:
        targets = set()
        for imported in imports_of(path):
            while imported and imported not in modules:  # "pkg.mod.name" -> "pkg.mod"
                imported = imported.rpartition(".")[0]
            if imported and imported != _module(path) and imported not in packages:
                targets.add(imported)
        edges[_module(path)] = targets
    return edges


def upward_arrows(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in edges.items():
        for target in targets:
            s, t = _group(source), _group(target)
            if s != t and RANKS[t] >= RANKS[s]:
                bad.append(f"{source} -> {target}")
    return sorted(bad)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_icg_core_module_has_a_rank() -> None:
    assert all(_group(m) for m in graph() if m != "icg_core")  # the root package is an empty file


def test_no_arrow_runs_back_up_inside_icg_core() -> None:
    assert upward_arrows(graph()) == []


def test_no_import_circle_inside_icg_core() -> None:
    assert cycles(graph()) == []


@pytest.mark.parametrize("tree", sorted(FORBIDDEN))
def test_trees_import_nothing_above_them(tree: str) -> None:
    offenders = [
        f"{path.relative_to(REPO)}: {module}"
        for path in sorted((REPO / tree).rglob("*.py"))
        if str(path.relative_to(REPO)) != AIRFLOW_SIDE
        for module in imports_of(path)
        if module.split(".")[0] in FORBIDDEN[tree] or module == "pipelines.orchestration"
    ]
    assert offenders == []


def test_the_checks_catch_what_they_should() -> None:
    edges = {"icg_core.models.bundle": {"icg_core.stages.finetune"}, "icg_core.stages.finetune": set()}
    assert upward_arrows(edges) == ["icg_core.models.bundle -> icg_core.stages.finetune"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
