"""Only the embedded world and evaluation code may see the oracle (docs/architecture.md, "The embedded world and its oracle").

Training, rewards and segmentation must learn from the logs alone. This scans every ``.py`` under
``icg_core/``, ``pipelines/`` and ``dags/`` for (1) imports of ``icg_core.world.oracle`` (absolute,
relative, or by name as a string, e.g. ``importlib.import_module``) and (2) string literals naming
the ``oracle/`` object prefix. Docstrings are exempt: saying that a module never reads the oracle is fine.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED_DIRS = ("icg_core", "pipelines", "dags")
ORACLE_MODULE = "icg_core.world.oracle"
ORACLE_PREFIX = "oracle/"
# Paths (relative to the repository, POSIX) allowed to use the oracle: the world that creates it,
# and evaluation code (the evaluation package and the evaluate stage), which measures covers against it.
ALLOWED = ("icg_core/world/*", "icg_core/evaluation/*", "icg_core/stages/evaluate.py")


def is_allowed(relative: str) -> bool:
    return any(fnmatch.fnmatch(relative, pattern) for pattern in ALLOWED)


def _module_package(relative: str) -> list[str]:
    """The package a file's relative imports resolve against, as name parts."""
    parts = relative[: -len(".py")].split("/")
    return parts[:-1]  # a module's package; for __init__.py, the package itself (its dir)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _imported_modules(node: ast.AST, package: list[str]) -> list[str]:
    """Fully qualified modules (and ``module.name`` candidates) an import statement may load."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = package[: len(package) - (node.level - 1)] if node.level - 1 <= len(package) else []
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        return [module] + [f"{module}.{alias.name}" for alias in node.names]
    return []


def find_violations(source: str, relative: str) -> list[str]:
    """Oracle uses in one file's source, as ``path:line: what`` strings (empty when clean)."""
    tree = ast.parse(source, filename=relative)
    package = _module_package(relative)
    docstrings = _docstring_nodes(tree)
    found = []
    for node in ast.walk(tree):
        for module in _imported_modules(node, package):
            if module == ORACLE_MODULE or module.startswith(ORACLE_MODULE + "."):
                found.append(f"{relative}:{node.lineno}: imports {ORACLE_MODULE}")
                break
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if ORACLE_PREFIX in node.value or ORACLE_MODULE in node.value:
                found.append(f"{relative}:{node.lineno}: names {node.value!r}")
    return found


def scan(root: Path) -> list[str]:
    """Violations in every scanned, non-allowed ``.py`` file under ``root``."""
    found = []
    for directory in SCANNED_DIRS:
        for path in sorted((root / directory).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if not is_allowed(relative):
                found.extend(find_violations(path.read_text(encoding="utf-8"), relative))
    return found


def test_repository_keeps_the_oracle_isolated() -> None:
    assert (REPO / "icg_core" / "world" / "oracle.py").exists(), "scanner is pointed at the wrong tree"
    assert scan(REPO) == []


@pytest.mark.parametrize(
    ("relative", "source"),
    [
        ("icg_core/rewards.py", "import icg_core.world.oracle\n"),
        ("icg_core/rewards.py", "import icg_core.world.oracle as o\n"),
        ("icg_core/rewards.py", "from icg_core.world import oracle\n"),
        ("icg_core/rewards.py", "from icg_core.world.oracle import Oracle\n"),
        ("icg_core/training/loop.py", "from ..world import oracle\n"),
        ("icg_core/training/loop.py", "from ..world.oracle import Oracle\n"),
        ("icg_core/segments.py", "from .world.oracle import Oracle\n"),
        ("pipelines/users.py", "def f():\n    from icg_core.world.oracle import Oracle\n    return Oracle\n"),
        ("pipelines/users.py", "import importlib\nm = importlib.import_module('icg_core.world.oracle')\n"),
        ("pipelines/rewards.py", "def f(store):\n    return store.get_json('oracle/world.json')\n"),
        ("dags/nightly.py", "PREFIX = 'oracle'\nKEY = f'oracle/{PREFIX}'\n"),
    ],
)
def test_scanner_flags_oracle_use(relative: str, source: str) -> None:
    assert find_violations(source, relative)


def test_scanner_passes_clean_code() -> None:
    source = '''"""Segments users from logs; never reads the oracle/ prefix."""
import icg_core.world.simulator
from icg_core.world import drawing
from . import storage


def oracle_free(x):
    """Not the oracle/ state."""
    return {"name": "oracle"}, x
'''
    assert find_violations(source, "icg_core/segments.py") == []


def test_scan_fails_on_a_bad_file_in_a_tree(tmp_path: Path) -> None:
    (tmp_path / "icg_core" / "world").mkdir(parents=True)
    (tmp_path / "icg_core" / "world" / "simulator.py").write_text(
        "from icg_core.world.oracle import Oracle\n"
    )
    (tmp_path / "icg_core" / "evaluation").mkdir()
    (tmp_path / "icg_core" / "evaluation" / "ceiling.py").write_text(
        "from icg_core.world.oracle import Oracle\n"
    )
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "train.py").write_text("KEY = 'oracle/users.npz'\n")
    assert scan(tmp_path) == ["pipelines/train.py:1: names 'oracle/users.npz'"]


def test_allow_list() -> None:
    assert is_allowed("icg_core/world/simulator.py")
    assert is_allowed("icg_core/evaluation/ceiling.py") and is_allowed("icg_core/stages/evaluate.py")
    assert not is_allowed("icg_core/rewards/preference.py") and not is_allowed("icg_core/stages/users.py")
    assert not is_allowed(
        "pipelines/evaluate.py"
    )  # the stage calls icg_core.evaluation; it never loads the oracle itself
    assert not is_allowed("icg_core/worldly.py")
