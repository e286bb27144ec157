from __future__ import annotations

import datetime as dt
import re

import duckdb
import pyarrow as pa
import pytest

from icg_core.config import ExtractConfig
from icg_core.data.schemas import SchemaError
from icg_core.stages.extract import (
    extract_day,
    extraction_window,
    load_sql,
    raw_partitions_for,
    run_extract_query,
)
from tests.icg_core.conftest import RUN_DS, utc

CFG = ExtractConfig(lookback_days=14)


def staged(raw_day_store, table_name):
    return raw_day_store.store.read_table(table_name, ds=RUN_DS, area="staging/extract")


def test_window_of_a_run_ends_at_its_ds():
    window = extraction_window("2026-11-15", 14)
    assert window.window_start == utc("2026-11-01")
    assert window.window_end == window.snapshot_end == utc("2026-11-15")
    with pytest.raises(ValueError):
        extraction_window("2026-11-15", 0)


def test_impressions_window_is_half_open(raw_day_store):
    raw = raw_day_store
    raw.write_raw("catalog_items", [raw.item("i1")], ds="2026-10-20")
    start, end = utc("2026-11-01"), utc("2026-11-15")
    raw.write_raw(
        "impressions",
        [
            raw.impression("before", "i1", start - dt.timedelta(microseconds=1)),
            raw.impression("at_start", "i1", start),
        ],
        ds="2026-11-01",
    )
    # The ds dump carries a late row of the window's last day and one row of the next window.
    raw.write_raw(
        "impressions",
        [
            raw.impression("last_moment", "i1", end - dt.timedelta(microseconds=1)),
            raw.impression("at_end", "i1", end),
        ],
        ds=RUN_DS,
    )
    raw.write_raw(
        "impressions", [raw.impression("next_day_dump", "i1", utc("2026-11-14", 23))], ds="2026-11-16"
    )
    summary = extract_day(raw.store, RUN_DS, CFG)
    users = staged(raw, "impressions").column("user_id").to_pylist()
    assert sorted(users) == ["at_start", "last_moment"]
    assert summary.rows["impressions"] == 2
    assert summary.partitions_read["impressions"] == [
        "2026-11-01",
        RUN_DS,
    ]  # 2026-11-16 is a later run's input


def test_catalog_snapshot_takes_latest_title_before_ds(raw_day_store):
    raw = raw_day_store
    raw.write_raw("catalog_items", [raw.item("i1", title="first"), raw.item("i2")], ds="2026-10-20")
    raw.write_raw(
        "catalog_items",
        [raw.item("i1", title="latest", updated_at=utc("2026-11-14", 23, 59))],
        ds="2026-11-14",
    )
    raw.write_raw(
        "catalog_items", [raw.item("i1", title="at snapshot end", updated_at=utc(RUN_DS))], ds=RUN_DS
    )
    raw.write_raw(
        "catalog_items", [raw.item("i1", title="future", updated_at=utc("2026-11-14", 1))], ds="2026-11-16"
    )
    summary = extract_day(raw.store, RUN_DS, CFG)
    titles = dict(
        zip(*staged(raw, "catalog_items").select(["item_id", "title"]).to_pydict().values(), strict=True)
    )
    assert titles == {"i1": "latest", "i2": "Title of i2"}
    assert summary.partitions_read["catalog_items"] == ["2026-10-20", "2026-11-14", RUN_DS]


def test_catalog_versions_with_the_same_timestamp_both_survive(raw_day_store):
    raw = raw_day_store
    same = utc("2026-11-03", 10)
    raw.write_raw(
        "catalog_items",
        [raw.item("i1", title="A", updated_at=same), raw.item("i1", title="B", updated_at=same)],
        ds="2026-11-03",
    )
    extract_day(raw.store, RUN_DS, CFG)
    assert sorted(staged(raw, "catalog_items").column("title").to_pylist()) == ["A", "B"]


def test_catalog_rows_without_item_id_are_all_kept_for_validation(raw_day_store):
    raw = raw_day_store
    raw.write_raw(
        "catalog_items",
        [raw.item(None), raw.item(None, updated_at=utc("2026-11-02")), raw.item("i1")],
        ds="2026-11-03",
    )
    extract_day(raw.store, RUN_DS, CFG)
    assert staged(raw, "catalog_items").column("item_id").null_count == 2


def test_optional_catalog_columns_are_kept_when_present(raw_day_store):
    raw = raw_day_store
    raw.write_raw("catalog_items", [raw.item("i1")], ds="2026-10-20")
    raw.write_raw("catalog_items", [raw.item("i2", description="a tale", tags=["x", "y"])], ds="2026-10-21")
    extract_day(raw.store, RUN_DS, CFG)
    rows = {r["item_id"]: r for r in staged(raw, "catalog_items").to_pylist()}
    assert rows["i2"]["description"] == "a tale" and rows["i2"]["tags"] == ["x", "y"]
    assert rows["i1"]["description"] is None


def test_optional_catalog_columns_are_absent_when_no_raw_file_has_them(raw_day_store):
    raw = raw_day_store
    raw.write_raw("catalog_items", [raw.item("i1")], ds="2026-10-20")
    extract_day(raw.store, RUN_DS, CFG)
    assert "description" not in staged(raw, "catalog_items").column_names


def test_no_raw_data_still_commits_empty_staging_partitions(raw_day_store):
    summary = extract_day(raw_day_store.store, RUN_DS, CFG)
    assert summary.rows == {"catalog_items": 0, "impressions": 0}
    for table_name in ("catalog_items", "impressions"):
        assert raw_day_store.store.has_partition(table_name, ds=RUN_DS, area="staging/extract")
        assert staged(raw_day_store, table_name).num_rows == 0


def test_injection_looking_and_non_ascii_titles_pass_unchanged(raw_day_store):
    raw = raw_day_store
    titles = [
        "'; DROP TABLE catalog_items; --",
        "Robert'); --",
        "Ærø — 東京の夜 🌙",
        'quote " and \\ backslash',
    ]
    raw.write_raw(
        "catalog_items", [raw.item(f"i{n}", title=t) for n, t in enumerate(titles)], ds="2026-10-20"
    )
    extract_day(raw.store, RUN_DS, CFG)
    assert sorted(staged(raw, "catalog_items").column("title").to_pylist()) == sorted(titles)


def test_naive_nanosecond_raw_timestamps_are_read_as_utc(raw_day_store):
    raw = raw_day_store
    raw.write_raw("catalog_items", [raw.item("i1")], ds="2026-10-20")
    foreign = pa.table(
        {
            "user_id": ["u1", "u2"],
            "item_id": ["i1", "i1"],
            "cover_uri": [raw.image("c"), raw.image("c")],
            "shown_at": pa.array(
                [dt.datetime(2026, 11, 3, 5), dt.datetime(2026, 11, 15)], pa.timestamp("ns")
            ),
            "clicked": [True, False],
        }
    )
    raw.write_uncontracted("raw", "impressions", foreign, ds="2026-11-03")
    raw.write_raw("impressions", [raw.impression("u3", "i1", utc("2026-11-04"))], ds="2026-11-04")
    extract_day(raw.store, RUN_DS, CFG)
    table = staged(raw, "impressions")
    assert sorted(table.column("user_id").to_pylist()) == ["u1", "u3"]
    assert table.column("shown_at")[0].as_py() == utc("2026-11-03", 5)


def test_raw_schema_drift_fails_extraction_naming_file_and_column(raw_day_store):
    raw = raw_day_store
    raw.write_raw("catalog_items", [raw.item("i1")], ds="2026-10-20")
    drifted = pa.table(
        {
            "user_id": ["u1"],
            "item_id": ["i1"],
            "cover_uri": [raw.image("c")],
            "shown_at": pa.array([utc("2026-11-03")], pa.timestamp("us", tz="UTC")),
            "clicked": ["yes"],
        }
    )
    raw.write_uncontracted("raw", "impressions", drifted, ds="2026-11-03")
    with pytest.raises(SchemaError, match=r"part-foreign\.parquet.*'clicked'.*bool"):
        extract_day(raw.store, RUN_DS, CFG)


def test_raw_partitions_read_are_only_those_that_can_hold_window_rows(raw_day_store):
    raw = raw_day_store
    for ds in ("2026-10-31", "2026-11-01", RUN_DS, "2026-11-16"):
        raw.write_raw("impressions", [], ds=ds)
        raw.write_raw("catalog_items", [], ds=ds)
    window = extraction_window(RUN_DS, 14)
    assert raw_partitions_for(raw.store, "impressions", window) == ["2026-11-01", RUN_DS]
    assert raw_partitions_for(raw.store, "catalog_items", window) == ["2026-10-31", "2026-11-01", RUN_DS]


def test_sql_uses_bound_parameters_only():
    for name, params in (
        ("extract_catalog", {"snapshot_end"}),
        ("extract_impressions", {"window_start", "window_end"}),
    ):
        code = "\n".join(line.split("--")[0] for line in load_sql(name).splitlines())  # comments dropped
        assert set(re.findall(r"\$(\w+)", code)) == params
        assert not re.search(r"\{\w*\}|%\(?\w*\)?s|QUALIFY", code, flags=re.IGNORECASE)


def test_bound_parameter_values_are_data_not_sql():
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    hostile = "2026-11-15'; DROP TABLE raw_impressions; --"
    rows = pa.table(
        {
            "user_id": ["u1"],
            "item_id": ["i1"],
            "cover_uri": ["file:///c.png"],
            "shown_at": pa.array([utc("2026-11-03")], pa.timestamp("us", tz="UTC")),
            "clicked": [True],
        }
    )
    connection.register("raw_impressions", rows)
    with pytest.raises(duckdb.Error):  # a string that is not a timestamp is refused, never executed
        run_extract_query(
            connection, "extract_impressions", {"window_start": hostile, "window_end": utc(RUN_DS)}
        )
    result = run_extract_query(
        connection, "extract_impressions", {"window_start": utc("2026-11-01"), "window_end": utc(RUN_DS)}
    )
    assert result.num_rows == 1
    assert connection.execute("SELECT count(*) FROM raw_impressions").fetchone() == (1,)
