"""The object-store layout has one owner: icg_core/layout.py spells every area and key."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from icg_core import layout
from icg_core.models.checkpoint import (
    CheckpointError,
    checkpoint_prefix,
    resolve_version,
    save_module_checkpoint,
)
from icg_core.storage import ObjectStore, StorageError

REPO = Path(__file__).resolve().parents[2]
TREES = ("icg_core", "pipelines", "dags", "scripts", "benchmarks")
OWNERS = {"icg_core/layout.py", "icg_core/storage.py"}  # the layout, and the commit protocol it uses
AREAS = {
    value
    for name, value in vars(layout).items()
    if name.isupper() and isinstance(value, str) and name not in {"LATEST", "SUCCESS"}
}
# A key: an area followed by "/", a "ds=" partition, or a pointer / marker name; never contains spaces.
KEY = re.compile(rf"^({'|'.join(re.escape(a) for a in sorted(AREAS))})/|(^|/)ds=|_latest|_SUCCESS")
STORE_METHODS = {
    "read_table", "write_table", "read_tables", "has_partition", "partitions", "partition_prefix",
    "committed_files", "set_latest", "get_latest", "put_bytes", "get_bytes", "put_json", "get_json",
    "list", "exists", "delete", "delete_prefix", "uri", "size",
}  # fmt: skip


def _docstrings(tree: ast.AST) -> set[int]:
    owners = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, owners)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def _literal_text(node: ast.AST) -> str | None:
    """The text of a string literal or of an f-string's literal parts (None for anything else)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant))
    return None


def key_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of every place ``source`` spells an area or an object key itself."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    # An f-string's parts are judged together, as the f-string.
    skip |= {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    found = []
    for node in ast.walk(tree):
        is_store_call = (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in STORE_METHODS
            and "store" in ast.unparse(node.func.value)
        )
        if is_store_call:
            arguments = [*node.args, *(k.value for k in node.keywords)]
            found += [(node.lineno, t) for t in map(_literal_text, arguments) if t is not None]
        if isinstance(node, ast.keyword) and node.arg == "area" and _literal_text(node.value) is not None:
            found.append((node.value.lineno, str(_literal_text(node.value))))
        text = _literal_text(node)
        if text is not None and id(node) not in skip and not re.search(r"\s|%", text) and KEY.search(text):
            found.append((node.lineno, text))
    return sorted(set(found))


def test_no_module_but_the_layout_spells_an_area_or_a_key() -> None:
    offenders = []
    for tree in TREES:
        for path in sorted((REPO / tree).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            if relative in OWNERS:
                continue
            offenders += [f"{relative}:{line}: {text!r}" for line, text in key_literals(path.read_text())]
    assert not offenders, "keys spelled outside icg_core/layout.py:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "source",
    [
        'store.read_table("catalog_items", ds=ds, area="validated")',
        'store.put_json(f"reports/ds={ds}/x.json", {})',
        'KEY = "covers/"',
        'store.get_bytes("oracle/world.json")',
    ],
)
def test_the_check_catches_a_spelled_key(source: str) -> None:
    assert key_literals(source)


def test_the_check_leaves_messages_alone() -> None:
    assert not key_literals(
        'log.info("stage=users ds=%s done", ds)\nraise ValueError(f"no catalog for ds={ds}")'
    )


def test_tables_round_trip_and_the_latest_pointer_moves_only_through_layout(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path))
    table = pa.table({"segment_id": pa.array([0, 1], pa.int32()), "centroid": [[0.0, 1.0], [1.0, 0.0]]})
    layout.SEGMENT_CENTROIDS.write(store, table, "2026-11-15")
    assert layout.SEGMENT_CENTROIDS.exists(store, "2026-11-15")
    assert layout.SEGMENT_CENTROIDS.days(store) == ["2026-11-15"]
    assert layout.SEGMENT_CENTROIDS.read(store, "2026-11-15").num_rows == 2
    assert layout.SEGMENT_CENTROIDS.uri(store, "2026-11-15").endswith("users/segment_centroids/ds=2026-11-15")

    assert layout.latest_version(store, "icg") is None
    save_module_checkpoint(store, "icg", "v1", {"m": {"w": torch.ones(2)}}, {})
    assert resolve_version(store, "icg") == "v1" == layout.latest_version(store, "icg")
    layout.set_latest(store, "icg", "v0")
    assert resolve_version(store, "icg") == "v0"
    assert layout.model_versions_stored(store, "icg") == ["v1"]


@pytest.mark.parametrize("part", ["", "a/b", "_latest", ".hidden"])
def test_model_keys_refuse_parts_that_would_escape_their_folder(part: str) -> None:
    with pytest.raises(StorageError):
        layout.model("icg", part)
    with pytest.raises(CheckpointError):
        checkpoint_prefix("icg", part)
