"""Roots can be copied, moved and restored: keys are relative, and older roots migrate once."""

from __future__ import annotations

import shutil
from pathlib import Path

from icg_core import layout
from icg_core.data.schemas import OBJECT_COLUMNS
from icg_core.stages.extract import extract_day
from icg_core.stages.migrate import migrate_keys
from icg_core.stages.publish import read_published
from icg_core.stages.validate import format_failures, validate_day
from icg_core.storage import ObjectStore
from tests.icg_core.conftest import RUN_DS, RawDay
from tests.icg_core.stages.test_publish import USERS, full_day, publish, stage


def _validate(store: ObjectStore, raw: RawDay):
    extract_day(store, RUN_DS, raw.cfg.extract)
    return validate_day(store, RUN_DS, raw.cfg)


def _as_written_by_an_older_version(store: ObjectStore) -> None:
    """Rewrite the raw tables with absolute URIs, as versions before relative keys did."""
    for handle in (layout.RAW_CATALOG, layout.RAW_IMPRESSIONS):
        for ds in handle.days(store):
            table = handle.read(store, ds)
            for column in OBJECT_COLUMNS[handle.name]:
                absolute = [store.uri(key) for key in table.column(column).to_pylist()]
                table = table.set_column(table.schema.get_field_index(column), column, [absolute])
            handle.write(store, table, ds)


def test_a_copied_root_validates_unchanged(tmp_path: Path) -> None:
    raw = RawDay(ObjectStore(str(tmp_path / "a")))
    raw.populate()
    assert _validate(raw.store, raw).success
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)  # cp -r
    copy = ObjectStore(str(tmp_path / "b"))
    report = _validate(copy, raw)
    assert report.success, format_failures(report)
    catalog = layout.CATALOG.read(copy, RUN_DS)
    assert all(k.startswith("raw/images/") for k in catalog.column("reference_image_uri").to_pylist())


def test_an_old_root_moved_elsewhere_is_refused_until_migrated_once(tmp_path: Path) -> None:
    raw = RawDay(ObjectStore(str(tmp_path / "old")))
    raw.populate()
    _as_written_by_an_older_version(raw.store)
    assert _validate(raw.store, raw).success  # absolute URIs under its own root still read
    shutil.move(tmp_path / "old", tmp_path / "moved")
    moved = ObjectStore(str(tmp_path / "moved"))

    report = _validate(moved, raw)
    assert not report.success
    found = str(report.summary())
    assert "is an absolute URI outside this store's root" in found and "run `icg migrate-keys`" in found

    dry = migrate_keys(moved, dry_run=True)
    assert dry.values_rewritten > 0 and dry.partitions_rewritten
    assert not _validate(moved, raw).success  # a dry run changes nothing
    done = migrate_keys(moved)
    assert done.values_rewritten == dry.values_rewritten
    report = _validate(moved, raw)
    assert report.success, format_failures(report)
    again = migrate_keys(moved)
    assert (again.values_rewritten, again.partitions_rewritten) == (0, [])  # idempotent
    assert again.partitions_checked == done.partitions_checked


def test_a_moved_published_day_migrates_in_place_with_its_user_segments(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "old"))
    stage(store, RUN_DS, full_day(store, RUN_DS))
    publish(store, RUN_DS)
    covers = layout.PUBLISHED_COVERS.read(store, RUN_DS)  # as published before relative keys
    absolute = [store.uri(key) for key in covers.column("cover_uri").to_pylist()]
    covers = covers.set_column(covers.schema.get_field_index("cover_uri"), "cover_uri", [absolute])
    users = layout.PUBLISHED_USER_SEGMENTS.read(store, RUN_DS)
    layout.PUBLISHED_DAY.write(store, {"user_segments": users, "covers": covers}, RUN_DS, meta={})
    shutil.move(tmp_path / "old", tmp_path / "moved")
    moved = ObjectStore(str(tmp_path / "moved"))

    done = migrate_keys(moved)
    assert layout.PUBLISHED_COVERS.prefix(RUN_DS) in done.partitions_rewritten
    for table in ("covers", "user_segments"):  # still one file per table: plain readers see one day
        assert moved.list(f"manifests/{table}/ds={RUN_DS}") == [
            f"manifests/{table}/ds={RUN_DS}/{table}.parquet"
        ]
    published = read_published(moved, RUN_DS)
    keys = published.column("cover_uri").to_pylist()
    assert all(key.startswith("covers/") for key in keys)
    assert published.column("cover_url").to_pylist() == [moved.uri(key) for key in keys]  # the new root
    users = read_published(moved, RUN_DS, table=layout.PUBLISHED_USER_SEGMENTS)
    assert dict(zip(users["user_id"].to_pylist(), users["segment_id"].to_pylist(), strict=True)) == USERS
    assert migrate_keys(moved).values_rewritten == 0
