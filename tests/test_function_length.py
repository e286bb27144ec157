"""A function a reader can follow: none over 80 lines outside tests and the tiny-model builders."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TREES = ("icg_core", "pipelines", "dags")
MAX_LINES = 80
# Tiny-model builders spell out a whole architecture config in one place, on purpose.
EXEMPT = {"icg_core/models/tiny.py:build_tiny_sd"}


def long_functions(source: str, where: str) -> list[str]:
    return [
        f"{where}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_LINES
        and f"{where}:{node.name}" not in EXEMPT
    ]


def test_no_function_is_longer_than_a_screenful_or_two() -> None:
    found = [
        problem
        for tree in TREES
        for path in sorted((REPO / tree).rglob("*.py"))
        for problem in long_functions(path.read_text(encoding="utf-8"), path.relative_to(REPO).as_posix())
    ]
    assert found == []


def test_the_check_counts_lines() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    assert long_functions(f"def f():\n{body}\n", "m.py") == [f"m.py:f ({MAX_LINES + 1} lines)"]
    assert long_functions("def g():\n    return 1\n", "m.py") == []
