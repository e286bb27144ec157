"""docs/consumers.md is a contract: its examples run, agree with `icg cover`, and hold while a day is republished."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icg_core import layout
from icg_core.data.schemas import MANIFEST_COLUMNS, MANIFEST_SCHEMA_VERSION
from icg_core.stages.publish import cover_for, read_published
from icg_core.storage import ObjectStore
from tests.icg_core.stages.test_publish import ITEMS, SEGMENTS, USERS, full_day, publish, stage

DOC = Path(__file__).parents[2] / "docs" / "consumers.md"
DAYS = ("2026-11-14", "2026-11-15", "2026-11-16")
LIBRARIES = ("pandas", "pyarrow", "duckdb", "polars")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def lookup_blocks() -> dict[str, str]:
    """The doc's "which cover does user U see for item I" example per library."""
    found = {}
    for block in python_blocks():
        if "answer =" in block:
            library = next(
                lib for lib in LIBRARIES if re.search(rf"^import {lib}\b", block, flags=re.MULTILINE)
            )
            found[library] = block
    assert sorted(found) == sorted(LIBRARIES), f"{DOC} must have one lookup example per library"
    return found


def run_block(block: str, root: Path, **names: str) -> dict:
    """Run one example as the doc says: with ``root``, ``user``, ``item`` set and the latest ``ds`` read first."""
    scope: dict = {"root": str(root), **names}
    exec(python_blocks()[0], scope)  # the prelude: ds of _latest
    exec(block, scope)
    return scope


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Two published days; the store's root folder."""
    store = ObjectStore(str(tmp_path / "root"))
    for ds in DAYS[1:]:
        stage(store, ds, full_day(store, ds))
        publish(store, ds)
    return tmp_path / "root"


def test_every_reader_finds_the_same_cover_as_icg_cover(root: Path) -> None:
    store = ObjectStore(str(root))
    blocks = lookup_blocks()
    for user, item in [("u1", "i1"), ("u2", "i3"), ("u3", "i2")]:
        expected = cover_for(store, user, item)
        assert (expected.ds, expected.segment_id) == (DAYS[-1], USERS[user])
        for library, block in blocks.items():
            answer = tuple(run_block(block, root, user=user, item=item)["answer"])
            assert answer == (expected.segment_id, expected.cover_url), library

    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cover", "--root", str(root), "--user", "u2", "--item", "i3", "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout)["cover_url"] == cover_for(store, "u2", "i3").cover_url
    unknown = subprocess.run(
        [sys.executable, "-m", "pipelines.cover", "--root", str(root), "--user", "nobody", "--item", "i3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert unknown.returncode == 2 and "user 'nobody' has no segment" in unknown.stderr


def test_the_doc_lists_every_published_column(root: Path) -> None:
    text = DOC.read_text()
    for table, columns in MANIFEST_COLUMNS[MANIFEST_SCHEMA_VERSION].items():
        files = sorted(root.glob(f"manifests/{table}/ds={DAYS[-1]}/*.parquet"))
        assert [f.name for f in files] == [f"{table}.parquet"]
        assert tuple(pq.read_schema(files[0]).names) == columns  # what is written is what is declared
        assert f"### `{table}`" in text
        for column in columns:
            assert re.search(rf"^\| `{column}` \|", text, flags=re.MULTILINE), (
                f"{column} is not in {DOC.name}"
            )


def test_manifest_versions_only_add_columns() -> None:
    versions = sorted(MANIFEST_COLUMNS)
    assert versions == list(range(1, MANIFEST_SCHEMA_VERSION + 1))
    for older, newer in zip(versions, versions[1:], strict=False):
        for table, columns in MANIFEST_COLUMNS[older].items():
            kept = MANIFEST_COLUMNS[newer][table]
            assert kept[: len(columns)] == columns, f"version {newer} of {table} removed or moved a column"


def test_days_of_three_schema_versions_read_together(root: Path) -> None:
    store = ObjectStore(str(root))
    # A day from version 1 (before schema_version, cover_url and publish_id), committed the old way.
    v1_rows = read_published(store, DAYS[1]).select(list(MANIFEST_COLUMNS[1]["covers"]))
    layout.PUBLISHED_COVERS.write(store, v1_rows, DAYS[0])
    # A day from a future version 3 that adds a column: readers of version 2 must not notice.
    latest = root / f"manifests/covers/ds={DAYS[-1]}/covers.parquet"
    v3 = pq.read_table(latest)
    v3 = v3.set_column(
        v3.schema.get_field_index("schema_version"), "schema_version", pa.array([3] * v3.num_rows, pa.int32())
    )
    pq.write_table(v3.append_column("cover_alt_text", pa.array(["a cover"] * v3.num_rows)), latest)

    per_day = [(ds, len(ITEMS) * len(SEGMENTS), version) for ds, version in zip(DAYS, (1, 2, 3), strict=True)]
    for block in (b for b in python_blocks() if "covers_per_day" in b):
        found = run_block(block, root)["covers_per_day"]
        assert [(str(ds), *rest) for ds, *rest in found] == per_day, block  # ds is read as a date
    for library, block in lookup_blocks().items():  # the version-2 lookups on the version-3 day
        answer = tuple(run_block(block, root, user="u1", item="i2")["answer"])
        assert answer[0] == USERS["u1"], library


def _glob_read(store: ObjectStore, ds: str) -> pa.Table:
    """What a reader that knows nothing of ICG's markers sees: every Parquet file in the day's folder."""
    fs = store.fsspec()
    files = sorted(fs.glob(store.fsspec_path(f"manifests/covers/ds={ds}") + "/*.parquet"))
    return pa.concat_tables([pq.read_table(io.BytesIO(fs.cat_file(f))) for f in files])


def test_a_plain_reader_never_sees_a_mixed_day_while_it_is_republished(
    any_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain reader looks at the day after every single object write and delete of the reruns."""
    ds = DAYS[-1]
    versions = [
        [{**row, "generator_version": f"gen-{n}"} for row in full_day(any_store, ds)] for n in range(2)
    ]
    stage(any_store, ds, versions[0])
    publish(any_store, ds)
    seen: list[str] = []

    def read_after(operation):  # noqa: ANN001, ANN202
        def operation_then_read(key: str, *args):  # noqa: ANN002, ANN202
            result = operation(key, *args)
            if key.startswith("manifests/"):
                table = _glob_read(any_store, ds)
                version = set(table["generator_version"].to_pylist())
                assert table.num_rows == len(ITEMS) * len(SEGMENTS) and len(version) == 1, (key, version)
                assert len(set(table["publish_id"].to_pylist())) == 1, key
                seen.extend(version)
            return result

        return operation_then_read

    for n in (1, 0, 1):
        stage(any_store, ds, versions[n])
        with monkeypatch.context() as patched:
            patched.setattr(any_store, "put_bytes", read_after(any_store.put_bytes))
            patched.setattr(any_store, "delete", read_after(any_store.delete))
            publish(any_store, ds)
    assert set(seen) == {"gen-0", "gen-1"} and len(seen) >= 9  # the reader saw both versions, at every step
