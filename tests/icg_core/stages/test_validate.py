from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest

from icg_core import layout
from icg_core.config import ICGConfig
from icg_core.stages.extract import extract_day
from icg_core.stages.validate import format_failures, validate_day
from icg_core.storage import ObjectStore, StorageError
from tests.icg_core.conftest import RUN_DS, RawDay, png_bytes, png_declaring, utc


def extract_and_validate(raw):
    extract_day(raw.store, RUN_DS, raw.cfg.extract)
    return validate_day(raw.store, RUN_DS, raw.cfg)


def assert_rejected(raw, report, *mentions: str) -> str:
    """The day failed, the message names every ``mentions``, nothing was published, the report exists."""
    message = format_failures(report)
    assert not report.success
    for mention in mentions:
        assert mention in message, f"{mention!r} missing from:\n{message}"
    assert raw.validated_keys() == []
    document = raw.store.get_json(layout.validation_report(RUN_DS))
    assert document["summary"]["success"] is False
    assert report.report_uri == raw.store.uri(layout.validation_report(RUN_DS))
    return message


def test_valid_day_passes_and_is_published_unchanged(any_store):
    raw = RawDay(any_store)  # local files and a real S3-compatible server
    raw.populate()
    report = extract_and_validate(raw)
    assert report.success, format_failures(report)
    assert "passed" in format_failures(report)
    for table_name in ("catalog_items", "impressions"):
        staged = raw.store.read_table(table_name, ds=RUN_DS, area="staging/extract")
        assert raw.store.read_table(table_name, ds=RUN_DS, area="validated").equals(staged)
        assert report.tables[table_name].success and report.tables[table_name].failed == 0
    assert report.tables["impressions"].rows == 6 * 14
    document = raw.store.get_json(layout.validation_report(RUN_DS))
    assert document["summary"]["success"] is True
    assert document["suites"]["catalog_items"]["success"] is True
    assert set(document["summary"]["validated_files"]) == {"catalog_items", "impressions"}


def test_null_item_id_in_catalog_is_rejected(raw_day_store):
    raw = raw_day_store
    raw.populate()
    raw.write_raw("catalog_items", [raw.item(None, title="orphan")], ds="2026-11-12")
    report = extract_and_validate(raw)
    assert_rejected(
        raw,
        report,
        "catalog_items",
        "expect_column_values_to_not_be_null",
        "'item_id'",
        "1 unexpected",
        "item_id=None",
    )


def test_null_user_id_in_impressions_is_rejected(raw_day_store):
    raw = raw_day_store
    raw.populate()
    raw.write_raw("impressions", [raw.impression(None, "i2", utc("2026-11-09", 7))], ds="2026-11-09")
    report = extract_and_validate(raw)
    assert_rejected(
        raw,
        report,
        "impressions",
        "expect_column_values_to_not_be_null",
        "'user_id'",
        "user_id=None, item_id='i2'",
    )


def test_duplicate_items_are_rejected(raw_day_store):
    raw = raw_day_store
    raw.populate()
    same = utc("2026-11-12", 6)
    raw.write_raw(
        "catalog_items",
        [raw.item("i3", title="One", updated_at=same), raw.item("i3", title="Two", updated_at=same)],
        ds="2026-11-12",
    )
    report = extract_and_validate(raw)
    message = assert_rejected(raw, report, "expect_column_values_to_be_unique", "'item_id'", "2 unexpected")
    assert message.count("item_id='i3'") == 2


def test_impressions_of_unknown_items_are_rejected(raw_day_store):
    raw = raw_day_store
    raw.populate()
    raw.write_raw("impressions", [raw.impression("u9", "ghost", utc("2026-11-09", 7))], ds="2026-11-09")
    report = extract_and_validate(raw)
    assert_rejected(raw, report, "impressions", "item_id_in_catalog", "user_id='u9', item_id='ghost'")
    assert report.tables["catalog_items"].success  # the catalog passed on its own and still was not published


def test_timestamps_outside_the_window_are_rejected(raw_day_store):
    raw = raw_day_store
    raw.populate()
    extract_day(raw.store, RUN_DS, raw.cfg.extract)
    staged = raw.store.read_table("impressions", ds=RUN_DS, area="staging/extract").to_pylist()
    staged += [
        raw.impression("at_end", "i1", utc(RUN_DS)),
        raw.impression("too_early", "i1", utc("2026-11-01") - dt.timedelta(seconds=1)),
    ]
    raw.write_staging("impressions", staged)  # as a faulty extraction would have written it
    report = validate_day(raw.store, RUN_DS, raw.cfg)
    assert_rejected(
        raw,
        report,
        "expect_column_values_to_be_between",
        "'shown_at'",
        "2 unexpected",
        "user_id='at_end'",
        "2026-11-15T00:00:00+00:00",
        "user_id='too_early'",
        "2026-10-31T23:59:59+00:00",
    )


def test_corrupt_reference_image_is_rejected(raw_day_store):
    raw = raw_day_store
    raw.populate()
    good = png_bytes((48, 48))
    raw.image("ref-i2", good[: len(good) // 2])  # truncated in place
    report = extract_and_validate(raw)
    assert_rejected(raw, report, "reference_image_check", "item_id='i2'", "corrupt", "ref-i2.png")


def test_non_image_cover_is_rejected(raw_day_store):
    raw = raw_day_store
    raw.populate()
    raw.image("cover-i3", b"<html>this is not a picture</html>\n")
    report = extract_and_validate(raw)
    message = assert_rejected(
        raw, report, "cover_image_check", "item_id='i3'", "not_an_image", "cover-i3.png"
    )
    assert "28 unexpected" in message  # every impression that showed the bad cover (2 a day)


def test_decompression_bomb_image_is_rejected(raw_day_store):
    raw = raw_day_store
    raw.populate()
    raw.image("ref-i1", png_declaring(20000, 20000))
    report = extract_and_validate(raw)
    assert_rejected(raw, report, "reference_image_check", "item_id='i1'", "too_many_pixels")


def test_missing_image_object_is_rejected(raw_day_store):
    raw = raw_day_store
    raw.populate()
    raw.store.delete("raw/images/test/ref-i3.png")
    report = extract_and_validate(raw)
    assert_rejected(raw, report, "reference_image_check", "item_id='i3'", "unreadable")


def test_a_reference_image_linked_out_of_the_root_is_rejected(raw_day_store, tmp_path_factory):
    raw = raw_day_store  # a local root
    raw.populate()
    outside = tmp_path_factory.mktemp("outside") / "outside.png"
    outside.write_bytes(png_bytes())  # a valid image, but not the root's
    image = Path(raw.store.arrow_path("raw/images/test/ref-i3.png"))
    image.unlink()
    image.symlink_to(outside)
    report = extract_and_validate(raw)
    assert_rejected(
        raw, report, "reference_image_check", "item_id='i3'", "unreadable", "resolves outside the root"
    )


def test_injection_looking_and_non_ascii_titles_pass_byte_identical(raw_day_store):
    raw = raw_day_store
    raw.populate()
    titles = {
        "sql1": "'; DROP TABLE catalog_items; --",
        "sql2": "Robert'); --",
        "intl": "Ærø — 東京の夜 🌙 Ünïcödé",
        "rtl": "قصة الليل",
    }
    raw.write_raw(
        "catalog_items",
        [raw.item(item_id, title=title) for item_id, title in titles.items()],
        ds="2026-11-02",
    )
    report = extract_and_validate(raw)
    assert report.success, format_failures(report)
    published = raw.store.read_table("catalog_items", ds=RUN_DS, area="validated").to_pylist()
    by_id = {row["item_id"]: row["title"] for row in published}
    for item_id, title in titles.items():
        assert by_id[item_id].encode("utf-8") == title.encode("utf-8")


def test_empty_impressions_partition_is_rejected(raw_day_store):
    raw = raw_day_store
    raw.write_raw("catalog_items", [raw.item("i1")], ds="2026-10-20")
    raw.write_raw("impressions", [], ds="2026-11-10")
    report = extract_and_validate(raw)
    assert report.tables["impressions"].rows == 0
    assert_rejected(
        raw, report, "impressions: expect_table_row_count_to_be_between", "must not be empty", "observed 0"
    )


def test_schema_drifted_column_type_is_reported_not_raised(raw_day_store):
    raw = raw_day_store
    raw.populate()
    extract_day(raw.store, RUN_DS, raw.cfg.extract)
    staged = raw.store.read_table("impressions", ds=RUN_DS, area="staging/extract")
    drifted = staged.set_column(4, "clicked", pa.array(["true"] * staged.num_rows))
    raw.write_uncontracted("staging/extract", "impressions", drifted)
    report = validate_day(raw.store, RUN_DS, raw.cfg)
    assert_rejected(
        raw, report, "impressions: schema_contract on column 'clicked'", "type string, expected bool"
    )
    assert report.tables["catalog_items"].success


def test_missing_column_is_reported_not_raised(raw_day_store):
    raw = raw_day_store
    raw.populate()
    extract_day(raw.store, RUN_DS, raw.cfg.extract)
    staged = raw.store.read_table("catalog_items", ds=RUN_DS, area="staging/extract")
    raw.write_uncontracted("staging/extract", "catalog_items", staged.drop_columns(["category"]))
    report = validate_day(raw.store, RUN_DS, raw.cfg)
    assert_rejected(
        raw,
        report,
        "catalog_items: schema_contract on column 'category'",
        "missing column",
        "expected string",
    )
    # Without a readable catalog the impressions suite still runs (minus the catalog membership check).
    assert report.tables["impressions"].success


def test_an_unextracted_or_half_extracted_day_is_refused(raw_day_store):
    raw = raw_day_store
    with pytest.raises(
        StorageError, match="no complete extraction of ds=2026-11-15.*run `icg extract` first"
    ):
        validate_day(raw.store, RUN_DS, raw.cfg)
    # An extract that dies after one table (before its day commit) leaves nothing promotable either.
    raw.populate()
    extract_day(raw.store, RUN_DS, raw.cfg.extract)
    real_write_day = raw.store.write_day

    def crash_after_first_table(tables, *, ds, area, meta=None, in_place=False):
        raw.store._write_part("catalog_items", tables["catalog_items"], ds=ds, area=area)
        raise KeyboardInterrupt("killed between the two tables")

    raw.store.write_day = crash_after_first_table
    with pytest.raises(KeyboardInterrupt):
        extract_day(raw.store, RUN_DS, raw.cfg.extract)
    raw.store.write_day = real_write_day
    with pytest.raises(StorageError, match="no complete extraction"):
        validate_day(raw.store, RUN_DS, raw.cfg)
    assert raw.validated_keys() == []


def test_a_missing_or_truncated_day_of_impressions_is_refused(raw_day_store):
    raw = raw_day_store
    raw.populate()
    raw.store.delete_prefix("raw/impressions/ds=2026-11-09")  # a dump that never arrived
    rows = raw.store.read_table("impressions", ds="2026-11-12", area="raw").to_pylist()
    raw.write_raw("impressions", rows[:1], ds="2026-11-12")  # and one cut short: 1 row of 6
    report = extract_and_validate(raw)
    assert_rejected(
        raw,
        report,
        "impressions: window_day_complete",
        "2 unexpected",
        "day='2026-11-09', rows=0",
        "day='2026-11-12', rows=1",
        "median_day_rows=6.0",
    )
    # A young deployment is not missing the days before its logs began.
    young = RawDay(ObjectStore(raw.store.root + "-young"))
    young.populate()
    for n in range(1, 8):
        young.store.delete_prefix(f"raw/impressions/ds=2026-11-0{n}")
    report = extract_and_validate(young)
    assert report.success, format_failures(report)
    assert [d["day"] for d in report.extraction["window_days"]][0] == "2026-11-08"


def test_misdated_raw_rows_are_counted_and_refused_above_the_threshold(raw_day_store):
    raw = raw_day_store
    raw.populate()
    rows = raw.store.read_table("impressions", ds="2026-11-05", area="raw").to_pylist()
    rows[0]["shown_at"], rows[1]["shown_at"] = utc("2099-01-01"), utc("1960-01-01")
    raw.write_raw("impressions", rows, ds="2026-11-05")
    raw.cfg = raw.cfg.model_copy(
        update={"validation": raw.cfg.validation.model_copy(update={"max_misdated_fraction": 0.05})}
    )
    report = extract_and_validate(raw)  # 2 of 84 rows (2.4%): under a 5% tolerance, reported
    assert report.success, format_failures(report)
    misdated = report.extraction["misdated"]
    assert (misdated["rows"], misdated["rows_read"], misdated["partitions"]) == (2, 84, {"2026-11-05": 2})
    assert {r["shown_at"][:4] for r in misdated["sample_rows"]} == {"2099", "1960"}
    published = raw.validated_keys()
    raw.cfg = ICGConfig()  # the default tolerance is 1%: refused, and the day published before stays
    report = extract_and_validate(raw)
    message = format_failures(report)
    assert not report.success and "raw_rows_dated_in_their_dump" in message
    assert "observed 2 of 84" in message and "'2026-11-05': 2" in message
    assert raw.validated_keys() == published


HOSTILE_IDS = ["", "../../etc/x", "a" * 5000, "x'; DROP TABLE items;--", ".hidden", "a/b", " item", "item\n"]


@pytest.mark.parametrize(
    "bad_id", HOSTILE_IDS, ids=["empty", "dotdot", "long", "sql", "dot", "slash", "space", "newline"]
)
def test_ids_that_cannot_be_object_keys_are_rejected_with_the_row(raw_day_store, bad_id: str) -> None:
    raw = raw_day_store
    raw.populate()
    hostile = raw.item("hostile") | {"item_id": bad_id}  # a valid row but for its id
    raw.write_raw("catalog_items", [hostile], ds="2026-11-12")
    report = extract_and_validate(raw)
    message = assert_rejected(
        raw, report, "catalog_items", "expect_column_values_to_match_regex", "'item_id'"
    )
    assert "ids become object keys" in message
    assert repr(bad_id)[:40] in message or bad_id == "a" * 5000  # the row is named (a long id is cut)
