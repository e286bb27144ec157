"""Publishing covers: only a complete, readable manifest becomes visible, and all at once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pyarrow as pa
import pytest

from icg_core import layout
from icg_core.data.schemas import MANIFEST_SCHEMA_VERSION, TABLES
from icg_core.stages import publish as publish_module
from icg_core.stages.publish import (
    PublishError,
    cover_for,
    publish_day,
    read_published,
)
from icg_core.storage import ObjectStore, StorageError
from tests.icg_core.conftest import png_bytes

YESTERDAY, TODAY = "2026-11-15", "2026-11-16"
ITEMS = ["i1", "i2", "i3"]
SEGMENTS = [0, 1]
USERS = {"u1": 0, "u2": 1, "u3": 1}  # user -> segment
SIZE = 32


def cover_row(store: ObjectStore, ds: str, item: str, segment: int, **overrides) -> dict:
    """A manifest row whose PNG is written at the canonical key."""
    uri = store.put_bytes(
        f"covers/ds={ds}/segment={segment}/{item}.png", png_bytes((SIZE, SIZE), (10 * segment, 80, 160))
    )
    row = {
        "item_id": item, "segment_id": segment, "cover_uri": uri, "width": SIZE, "height": SIZE, "format": "PNG",
        "reward_aesthetic": 0.5, "reward_relevance": 0.25, "reward_preference": 0.125,
        "generator_version": "gen-v1", "base_model": "tiny-sd", "seed": 1000 * segment + len(item),
        "content_hash": f"hash-{item}", "created_at": dt.datetime(2026, 11, 16, 3, tzinfo=dt.UTC),
    }  # fmt: skip
    return {**row, **overrides}


def stage(store: ObjectStore, ds: str, rows: list[dict]) -> None:
    layout.STAGED_COVERS.write(store, pa.Table.from_pylist(rows, schema=TABLES["covers"]), ds)


def full_day(store: ObjectStore, ds: str) -> list[dict]:
    return [cover_row(store, ds, item, segment) for item in ITEMS for segment in SEGMENTS]


def user_segments(users: dict[str, int | None] = USERS) -> pa.Table:
    return pa.table({"user_id": list(users), "segment_id": pa.array(list(users.values()), pa.int32())})


def publish(
    store: ObjectStore,
    ds: str,
    items: list[str] = ITEMS,
    segments: list[int] = SEGMENTS,
    users: pa.Table | None = None,
    public_base_url: str | None = None,
):
    return publish_day(
        store,
        ds,
        user_segments=user_segments() if users is None else users,
        expected_item_ids=items,
        expected_segment_ids=segments,
        public_base_url=public_base_url,
    )


def test_complete_day_is_published_and_read_back(any_store: ObjectStore) -> None:
    stage(any_store, TODAY, full_day(any_store, TODAY))
    summary = publish(any_store, TODAY)
    assert (summary.rows, summary.items, summary.segments, summary.users, summary.images_checked) == (
        6,
        3,
        2,
        3,
        6,
    )
    assert summary.latest == TODAY and summary.latest_moved and summary.previous_latest is None
    assert (
        layout.PUBLISHED_COVERS.latest(any_store) == layout.PUBLISHED_USER_SEGMENTS.latest(any_store) == TODAY
    )
    for table in ("covers", "user_segments"):  # the documented paths: one file per table and day
        assert any_store.list(f"manifests/{table}/ds={TODAY}") == [
            f"manifests/{table}/ds={TODAY}/{table}.parquet"
        ]
    published = read_published(any_store)
    assert published.num_rows == 6
    assert set(published.column("ds").to_pylist()) == {TODAY}
    pairs = set(
        zip(published.column("item_id").to_pylist(), published.column("segment_id").to_pylist(), strict=True)
    )
    assert pairs == {(i, s) for i in ITEMS for s in SEGMENTS}
    assert read_published(any_store, TODAY).equals(published)
    users = read_published(any_store, table=layout.PUBLISHED_USER_SEGMENTS)
    assert dict(zip(users["user_id"].to_pylist(), users["segment_id"].to_pylist(), strict=True)) == USERS
    for table in (published, users):  # one publish: one id and the current contract version on every row
        assert set(table["publish_id"].to_pylist()) == {summary.publish_id}
        assert set(table["schema_version"].to_pylist()) == {MANIFEST_SCHEMA_VERSION}
    assert published["cover_url"].to_pylist() == [
        any_store.uri(k) for k in published["cover_uri"].to_pylist()
    ]


def test_cover_url_uses_the_public_base_url(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    stage(store, TODAY, full_day(store, TODAY))
    publish(store, TODAY, public_base_url="https://cdn.example.com/icg")
    published = read_published(store)
    for key, url in zip(published["cover_uri"].to_pylist(), published["cover_url"].to_pylist(), strict=True):
        assert not key.startswith("/") and "://" not in key
        assert url == f"https://cdn.example.com/icg/{key}"


def test_cover_for_joins_the_users_segment_with_the_items_cover(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    stage(store, TODAY, full_day(store, TODAY))
    publish(store, TODAY)
    found = cover_for(store, "u2", "i3")
    published = read_published(store).to_pylist()
    expected = next(r for r in published if (r["item_id"], r["segment_id"]) == ("i3", USERS["u2"]))
    assert (found.ds, found.segment_id, found.cover_uri, found.cover_url) == (
        TODAY, 1, expected["cover_uri"], expected["cover_url"]
    )  # fmt: skip
    with pytest.raises(StorageError, match="user 'nobody' has no segment on ds=2026-11-16"):
        cover_for(store, "nobody", "i3")
    with pytest.raises(StorageError, match="item 'ghost' has no published cover"):
        cover_for(store, "u2", "ghost")
    with pytest.raises(StorageError, match="nothing published yet"):
        cover_for(ObjectStore(str(tmp_path / "empty")), "u2", "i3")


@pytest.mark.parametrize(
    ("users", "kind", "mention"),
    [
        ({**USERS, "u4": 7}, "user_segment_unknown", "segment=7"),
        ({**USERS, "u4": None}, "user_segment_null", "user=u4 segment=None"),
    ],
)
def test_bad_user_segments_are_refused(tmp_path, users: dict, kind: str, mention: str) -> None:
    store = ObjectStore(str(tmp_path))
    stage(store, TODAY, full_day(store, TODAY))
    with pytest.raises(PublishError) as raised:
        publish(store, TODAY, users=user_segments(users))
    assert kind in [p.kind for p in raised.value.problems] and mention in str(raised.value)
    assert layout.PUBLISHED_COVERS.latest(store) is None


def test_a_user_twice_is_refused(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    stage(store, TODAY, full_day(store, TODAY))
    twice = pa.concat_tables([user_segments(), user_segments({"u1": 1})])
    with pytest.raises(PublishError, match=r"user_segment_duplicate \(1\).*user=u1 x2"):
        publish(store, TODAY, users=twice)


def _duplicate(store: ObjectStore, rows: list[dict]) -> list[dict]:
    return [*rows, dict(rows[0])]


def _drop_one(store: ObjectStore, rows: list[dict]) -> list[dict]:
    return rows[1:]


def _unknown_item(store: ObjectStore, rows: list[dict]) -> list[dict]:
    return [*rows, cover_row(store, TODAY, "ghost", 0)]


def _unknown_segment(store: ObjectStore, rows: list[dict]) -> list[dict]:
    return [*rows, cover_row(store, TODAY, "i1", 9)]


def _missing_image(store: ObjectStore, rows: list[dict]) -> list[dict]:
    store.delete(store.key(rows[2]["cover_uri"]))
    return rows


def _corrupt_image(store: ObjectStore, rows: list[dict]) -> list[dict]:
    key = store.key(rows[2]["cover_uri"])
    store.put_bytes(key, store.get_bytes(key)[:-40])
    return rows


def _not_an_image(store: ObjectStore, rows: list[dict]) -> list[dict]:
    store.put_bytes(store.key(rows[2]["cover_uri"]), b"<html>oops</html>")
    return rows


def _wrong_size(store: ObjectStore, rows: list[dict]) -> list[dict]:
    rows[2] = {**rows[2], "width": 64}
    return rows


def _wrong_format(store: ObjectStore, rows: list[dict]) -> list[dict]:
    rows[2] = {**rows[2], "format": "JPEG"}
    return rows


def _outside_covers(store: ObjectStore, rows: list[dict]) -> list[dict]:
    rows[2] = {
        **rows[2],
        "cover_uri": store.put_bytes("raw/images/reference/i2.png", png_bytes((SIZE, SIZE))),
    }
    return rows


def _shared_cover(store: ObjectStore, rows: list[dict]) -> list[dict]:
    rows[2] = {**rows[2], "cover_uri": rows[0]["cover_uri"]}
    return rows


def _null_uri(store: ObjectStore, rows: list[dict]) -> list[dict]:
    rows[2] = {**rows[2], "cover_uri": None}
    return rows


# rows[0] is (i1, segment 0) and rows[2] is (i2, segment 0): each refusal must name the row.
BAD_DAYS: dict[str, tuple[Callable[[ObjectStore, list[dict]], list[dict]], str, str]] = {
    "duplicate": (_duplicate, "duplicate", "item=i1 segment=0"),
    "missing_row": (_drop_one, "missing_row", "item=i1 segment=0"),
    "unknown_item": (_unknown_item, "unexpected_item", "item=ghost segment=0"),
    "unknown_segment": (_unknown_segment, "unexpected_segment", "item=i1 segment=9"),
    "missing_image": (_missing_image, "image_unreadable", "item=i2 segment=0"),
    "corrupt_image": (_corrupt_image, "image_corrupt", "item=i2 segment=0"),
    "not_an_image": (_not_an_image, "image_not_an_image", "item=i2 segment=0"),
    "wrong_size": (_wrong_size, "size_mismatch", "declared 64x32, image is 32x32"),
    "wrong_format": (_wrong_format, "format_mismatch", "declared JPEG, image is PNG"),
    "outside_covers": (_outside_covers, "bad_uri", "item=i2 segment=0"),
    "null_uri": (_null_uri, "null_value", "item=i2 segment=0"),
    "shared_cover": (_shared_cover, "shared_cover", "item=i1 segment=0 and item=i2 segment=0"),
}


@pytest.mark.parametrize("case", sorted(BAD_DAYS))
def test_bad_day_is_refused_naming_rows_and_yesterday_stays(tmp_path, case: str) -> None:
    store = ObjectStore(str(tmp_path))
    stage(store, YESTERDAY, full_day(store, YESTERDAY))
    publish(store, YESTERDAY)
    corrupt, kind, mention = BAD_DAYS[case]
    stage(store, TODAY, corrupt(store, full_day(store, TODAY)))
    with pytest.raises(PublishError) as raised:
        publish(store, TODAY)
    message = str(raised.value)
    assert kind in [p.kind for p in raised.value.problems], message
    assert mention in message
    assert f"readers keep ds={YESTERDAY}" in message
    assert layout.PUBLISHED_COVERS.latest(store) == YESTERDAY
    assert not layout.PUBLISHED_COVERS.exists(store, TODAY)
    assert set(read_published(store).column("ds").to_pylist()) == {YESTERDAY}


@pytest.mark.parametrize("case", ["duplicate", "missing_row", "shared_cover", "unknown_item"])
def test_rows_are_checked_across_batches(tmp_path, monkeypatch, case: str) -> None:
    # Publish reads the staged manifest a batch at a time: a problem whose rows lie in different
    # batches (one row per batch here) is still found, and a good day still publishes whole.
    monkeypatch.setattr(publish_module, "BATCH_ROWS", 1)
    store = ObjectStore(str(tmp_path))
    stage(store, YESTERDAY, full_day(store, YESTERDAY))
    assert publish(store, YESTERDAY).rows == len(ITEMS) * len(SEGMENTS)
    corrupt, kind, mention = BAD_DAYS[case]
    stage(store, TODAY, corrupt(store, full_day(store, TODAY)))
    with pytest.raises(PublishError) as raised:
        publish(store, TODAY)
    assert kind in [p.kind for p in raised.value.problems] and mention in str(raised.value)
    assert layout.PUBLISHED_COVERS.latest(store) == YESTERDAY


def test_several_problems_are_reported_together(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    rows = _corrupt_image(store, _duplicate(store, full_day(store, TODAY)))
    stage(store, TODAY, rows)
    with pytest.raises(PublishError) as raised:
        publish(store, TODAY)
    kinds = {p.kind for p in raised.value.problems}
    assert {"duplicate", "image_corrupt"} <= kinds


def test_missing_staged_manifest_is_refused(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    with pytest.raises(PublishError, match="no committed manifest .*staging/covers/covers/ds=2026-11-16"):
        publish(store, TODAY)
    assert layout.PUBLISHED_COVERS.latest(store) is None


def test_empty_catalog_or_no_segments_is_refused(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    stage(store, TODAY, full_day(store, TODAY))
    with pytest.raises(PublishError, match="empty_catalog"):
        publish(store, TODAY, items=[])
    with pytest.raises(PublishError, match="no_segments"):
        publish(store, TODAY, segments=[])


def test_rerun_replaces_the_day_never_duplicates(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    stage(store, TODAY, full_day(store, TODAY))
    publish(store, TODAY)
    rows = [{**row, "generator_version": "gen-v2"} for row in full_day(store, TODAY)]
    stage(store, TODAY, rows)
    publish(store, TODAY)
    published = read_published(store)
    assert published.num_rows == 6
    assert set(published.column("generator_version").to_pylist()) == {"gen-v2"}
    assert len(layout.PUBLISHED_COVERS.files(store, TODAY)) == 1
    assert store.list(f"manifests/covers/ds={TODAY}") == [f"manifests/covers/ds={TODAY}/covers.parquet"]


def test_backfill_of_an_older_day_keeps_latest(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    for ds in (TODAY, YESTERDAY):  # today first, then a backfill of yesterday
        stage(store, ds, full_day(store, ds))
    publish(store, TODAY)
    summary = publish(store, YESTERDAY)
    assert not summary.latest_moved and summary.latest == TODAY and summary.notes
    assert layout.PUBLISHED_COVERS.latest(store) == TODAY
    assert read_published(store, YESTERDAY).num_rows == 6


def test_nothing_published_yet_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(StorageError, match="nothing published yet"):
        read_published(ObjectStore(str(tmp_path)))
