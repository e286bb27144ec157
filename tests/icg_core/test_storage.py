"""The storage layer, run against local files and a real S3-compatible server (SeaweedFS) alike."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from icg_core.data.schemas import SchemaError
from icg_core.storage import (
    LATEST,
    SUCCESS,
    ObjectStore,
    ParquetStream,
    StorageError,
    StorageUnavailable,
    normalize_root,
)
from tests.conftest import remount_read_only, s3_store_for


def _catalog(n: int, title: str = "t") -> pa.Table:
    return pa.table(
        {
            "item_id": [f"i{k}" for k in range(n)],
            "title": [f"{title}{k}" for k in range(n)],
            "category": ["c"] * n,
            "reference_image_uri": [f"file:///x/{k}.png" for k in range(n)],
            "updated_at": pa.array(
                [dt.datetime(2026, 11, 1, tzinfo=dt.UTC)] * n, pa.timestamp("us", tz="UTC")
            ),
        }
    )


def test_bytes_and_json_round_trip(any_store: ObjectStore) -> None:
    key = any_store.put_bytes("a/b/c.bin", b"\x00\x01payload")
    assert key == "a/b/c.bin"
    assert any_store.get_bytes("a/b/c.bin") == b"\x00\x01payload"
    assert any_store.read_object(key) == b"\x00\x01payload"
    assert any_store.read_object(any_store.uri(key)) == b"\x00\x01payload"  # older tables: absolute URIs
    any_store.put_json("a/meta.json", {"k": [1, 2], "s": "ünïcode"})
    assert any_store.get_json("a/meta.json") == {"k": [1, 2], "s": "ünïcode"}
    assert any_store.list("a") == ["a/b/c.bin", "a/meta.json"]
    assert any_store.list("nothing/here") == []
    assert any_store.exists("a/b/c.bin") and not any_store.exists("a/b/missing")


def test_read_missing_object_is_a_clear_error(any_store: ObjectStore) -> None:
    with pytest.raises(StorageError, match="cannot read"):
        any_store.get_bytes("missing/object")


def test_read_object_refuses_oversized_objects_and_foreign_roots(any_store: ObjectStore) -> None:
    key = any_store.put_bytes("big.bin", b"x" * 100)
    with pytest.raises(StorageError, match="larger than"):
        any_store.read_object(key, max_bytes=10)
    with pytest.raises(StorageError, match="outside this store's root.*icg migrate-keys"):
        any_store.read_object("file:///somewhere/else.png")
    with pytest.raises(StorageError, match=r"\.\."):
        any_store.read_object("raw/../../etc/passwd")


def test_a_day_commit_shows_all_tables_or_none(any_store: ObjectStore) -> None:
    day = {"catalog_items": _catalog(2), "impressions": _impressions(3)}
    any_store.write_day(day, ds="2026-11-05", area="validated", meta={"note": "first"})
    assert any_store.partitions("impressions", area="validated") == ["2026-11-05"]
    # A second commit that fails half-way (the impressions break their contract) changes nothing,
    # and leaves none of its files behind.
    before = any_store.list("validated")
    broken = {
        "catalog_items": _catalog(5, title="new"),
        "impressions": _impressions(1).drop_columns(["clicked"]),
    }
    with pytest.raises(SchemaError):
        any_store.write_day(broken, ds="2026-11-05", area="validated", meta={})
    assert any_store.list("validated") == before
    assert any_store.read_table("catalog_items", ds="2026-11-05", area="validated").num_rows == 2
    # A complete second commit replaces both tables, and the marker carries its facts.
    any_store.write_day(
        {"catalog_items": _catalog(5, title="new"), "impressions": _impressions(4)},
        ds="2026-11-05",
        area="validated",
        meta={"note": "second"},
    )
    assert any_store.read_table("catalog_items", ds="2026-11-05", area="validated").num_rows == 5
    assert any_store.read_table("impressions", ds="2026-11-05", area="validated").num_rows == 4
    assert any_store.day_commit("validated", "2026-11-05")["meta"] == {"note": "second"}
    assert len([k for k in any_store.list("validated/catalog_items") if k.endswith(".parquet")]) == 1
    any_store.retract_day("validated", "2026-11-05")
    assert any_store.partitions("catalog_items", area="validated") == []
    with pytest.raises(StorageError, match="not committed"):
        any_store.read_table("impressions", ds="2026-11-05", area="validated")


def test_unreadable_committed_files_are_named(any_store: ObjectStore) -> None:
    commit = any_store.write_table("catalog_items", _catalog(2), ds="2026-11-01", area="raw")
    (file,) = commit.files
    for broken in (b"", b"PAR1 but not really parquet"):
        any_store.put_bytes(file, broken)
        with pytest.raises(StorageError, match=f"{file}.*not a readable Parquet file"):
            any_store.read_table("catalog_items", ds="2026-11-01", area="raw")
        with pytest.raises(StorageError, match=f"{file}.*not a readable Parquet file"):
            list(any_store.iter_table("catalog_items", ds="2026-11-01", area="raw"))
    any_store.put_bytes(f"raw/catalog_items/ds=2026-11-01/{SUCCESS}", b"\xff\xfe not json")
    with pytest.raises(StorageError, match=f"{SUCCESS} is not valid JSON"):
        any_store.read_table("catalog_items", ds="2026-11-01", area="raw")


def _impressions(n: int) -> pa.Table:
    return pa.table(
        {
            "user_id": [f"u{k}" for k in range(n)],
            "item_id": [f"i{k}" for k in range(n)],
            "cover_uri": ["raw/images/variants/i0/0.png"] * n,
            "shown_at": pa.array([dt.datetime(2026, 11, 4, tzinfo=dt.UTC)] * n, pa.timestamp("us", tz="UTC")),
            "clicked": [False] * n,
        }
    )


def test_partition_rewrite_replaces_and_never_duplicates(any_store: ObjectStore) -> None:
    any_store.write_table("catalog_items", _catalog(3), ds="2026-11-01", area="raw")
    any_store.write_table("catalog_items", _catalog(2, title="new"), ds="2026-11-01", area="raw")
    table = any_store.read_table("catalog_items", ds="2026-11-01", area="raw")
    assert table.column("title").to_pylist() == ["new0", "new1"]
    files = [k for k in any_store.list("raw/catalog_items/ds=2026-11-01") if k.endswith(".parquet")]
    assert len(files) == 1
    assert any_store.partitions("catalog_items", area="raw") == ["2026-11-01"]


def test_readers_see_only_committed_files(any_store: ObjectStore) -> None:
    any_store.write_table("catalog_items", _catalog(2), ds="2026-11-01", area="raw")
    # A writer that crashed mid-commit leaves a file that _SUCCESS does not list.
    any_store.put_bytes("raw/catalog_items/ds=2026-11-01/part-crashed.parquet", b"not parquet at all")
    assert any_store.read_table("catalog_items", ds="2026-11-01", area="raw").num_rows == 2
    # A partition that was never committed does not exist for readers.
    any_store.put_bytes("raw/catalog_items/ds=2026-11-02/part-x.parquet", b"half")
    assert any_store.partitions("catalog_items", area="raw") == ["2026-11-01"]
    with pytest.raises(StorageError, match=f"no {SUCCESS}"):
        any_store.read_table("catalog_items", ds="2026-11-02", area="raw")


def test_latest_pointer_moves_only_to_committed_partitions(any_store: ObjectStore) -> None:
    assert any_store.get_latest("manifests", "catalog_items") is None
    any_store.write_table("catalog_items", _catalog(1), ds="2026-11-01", area="manifests")
    any_store.set_latest("manifests", "catalog_items", "2026-11-01")
    with pytest.raises(StorageError):
        any_store.set_latest("manifests", "catalog_items", "2026-11-02")
    assert any_store.get_latest("manifests", "catalog_items") == "2026-11-01"
    assert any_store.exists(f"manifests/catalog_items/{LATEST}")


def test_read_tables_appends_ds(any_store: ObjectStore) -> None:
    any_store.write_table("catalog_items", _catalog(2), ds="2026-11-01", area="raw")
    any_store.write_table("catalog_items", _catalog(1), ds="2026-11-02", area="raw")
    both = any_store.read_tables("catalog_items", dss=["2026-11-01", "2026-11-02"], area="raw")
    assert both.column("ds").to_pylist() == ["2026-11-01", "2026-11-01", "2026-11-02"]
    assert any_store.read_tables("catalog_items", dss=[], area="raw").num_rows == 0


def test_schema_mismatch_names_table_column_and_type(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path))
    drifted = _catalog(2).set_column(4, "updated_at", pa.array(["yesterday", "today"]))
    with pytest.raises(SchemaError, match="catalog_items.*'updated_at'.*string.*timestamp"):
        store.write_table("catalog_items", drifted, ds="2026-11-01", area="raw")
    with pytest.raises(SchemaError, match="missing column 'title'"):
        store.write_table("catalog_items", _catalog(1).drop_columns(["title"]), ds="2026-11-01", area="raw")
    assert store.list("raw") == []


def test_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "root"))
    with pytest.raises(StorageError, match=r"\.\."):
        store.put_bytes("../outside.txt", b"x")
    with pytest.raises(StorageError, match="YYYY-MM-DD"):
        store.write_table("catalog_items", _catalog(1), ds="20261101", area="raw")


def test_unwritable_roots_fail_early(tmp_path: Path, s3_server) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot write"):
        ObjectStore(str(blocker / "root")).check_writable()
    with pytest.raises(StorageUnavailable, match="bucket 'no-such-bucket-icg' does not exist"):
        ObjectStore("s3://no-such-bucket-icg/x", s3_endpoint_url=s3_server.endpoint_url).check_writable()


def test_a_read_only_root_is_unavailable_not_bad_data(read_only_disk: Path) -> None:
    store = ObjectStore(str(read_only_disk))
    store.put_bytes("a/kept.bin", b"kept")
    remount_read_only(read_only_disk)
    with pytest.raises(StorageUnavailable, match="storage unavailable: cannot write .*Read-only"):
        store.put_bytes("a/new.bin", b"x")
    assert store.get_bytes("a/kept.bin") == b"kept"


def test_a_full_disk_fails_the_write_and_leaves_no_temporary_object(tiny_disk: Path) -> None:
    store = ObjectStore(str(tiny_disk))
    store.put_bytes("a/old.bin", b"old")
    with pytest.raises(StorageUnavailable, match="No space left"):
        store.put_bytes("a/old.bin", b"x" * 2_000_000)
    assert store.get_bytes("a/old.bin") == b"old"
    assert store.list("") == ["a/old.bin"]


def test_root_normalization(tmp_path: Path) -> None:
    assert normalize_root(str(tmp_path)) == f"file://{tmp_path.resolve()}"
    assert normalize_root(f"file://{tmp_path}/") == f"file://{tmp_path.resolve()}"
    assert normalize_root("s3://bucket/pre/fix/") == "s3://bucket/pre/fix"
    with pytest.raises(StorageError, match="scheme"):
        normalize_root("gs://bucket/x")


def test_same_contract_over_moto_server(moto_s3_server) -> None:
    store = s3_store_for(moto_s3_server)
    store.write_table("catalog_items", _catalog(4), ds="2026-11-03", area="validated")
    assert store.read_table("catalog_items", ds="2026-11-03", area="validated").num_rows == 4
    store.set_latest("validated", "catalog_items", "2026-11-03")
    assert store.get_latest("validated", "catalog_items") == "2026-11-03"


def test_a_symlink_out_of_a_local_root_is_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"not yours")
    store = ObjectStore(str(tmp_path / "root"))
    store.put_bytes("images/own.png", b"mine")
    (tmp_path / "root" / "images" / "link.png").symlink_to(outside / "secret.png")
    (tmp_path / "root" / "elsewhere").symlink_to(outside, target_is_directory=True)
    (tmp_path / "root" / "images" / "alias.png").symlink_to(tmp_path / "root" / "images" / "own.png")
    for key in ("images/link.png", "elsewhere/secret.png"):
        with pytest.raises(StorageError, match="resolves outside the root"):
            store.get_bytes(key)
    with pytest.raises(StorageError, match="resolves outside the root"):
        store.put_bytes("elsewhere/new.png", b"x")  # nor written through
    assert not (outside / "new.png").exists()
    assert store.get_bytes("images/alias.png") == b"mine"  # a link inside the root is fine


def test_a_streamed_table_is_committed_whole_and_read_back_in_batches(any_store: ObjectStore) -> None:
    # Large tables (a big catalog's covers manifest) go through a local file a batch at a time.
    with ParquetStream("catalog_items") as stream:
        for start in range(0, 10, 4):
            stream.write(_catalog(10).slice(start, 4))
        commit = any_store.write_table("catalog_items", stream, ds="2026-11-01", area="raw")
        local = Path(stream.path)
    assert not local.exists()  # the temporary file is gone once committed
    assert commit.rows == 10
    read = any_store.read_table("catalog_items", ds="2026-11-01", area="raw")
    assert read.column("item_id").to_pylist() == [f"i{k}" for k in range(10)]
    batches = list(any_store.iter_table("catalog_items", ds="2026-11-01", area="raw", batch_rows=3))
    assert [b.num_rows for b in batches] == [3, 3, 3, 1]
    assert pa.concat_tables(batches).column("title").to_pylist() == [f"t{k}" for k in range(10)]


def test_a_stream_of_another_table_or_a_bad_batch_is_refused(any_store: ObjectStore) -> None:
    with ParquetStream("catalog_items") as stream:
        with pytest.raises(SchemaError):
            stream.write(pa.table({"item_id": ["i1"]}))
        with pytest.raises(StorageError, match="cannot be written as"):
            any_store.write_table("impressions", stream, ds="2026-11-01", area="raw")
    assert not any_store.has_partition("impressions", ds="2026-11-01", area="raw")


def test_an_empty_stream_commits_an_empty_table_with_its_columns(any_store: ObjectStore) -> None:
    with ParquetStream("catalog_items") as stream:
        any_store.write_table("catalog_items", stream, ds="2026-11-01", area="raw")
    (batch,) = any_store.iter_table("catalog_items", ds="2026-11-01", area="raw")
    assert batch.num_rows == 0 and "title" in batch.column_names
