"""Extraction from a real PostgreSQL warehouse: the same sql/ files, the same validated day as the dumps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

import adbc_driver_postgresql.dbapi as postgresql
import pyarrow as pa
import pytest

from icg_core import layout
from icg_core.data.schemas import OPTIONAL_COLUMNS, SchemaError
from icg_core.data.warehouse import positional, warehouse_uri
from icg_core.stages.extract import extract_day
from icg_core.stages.validate import format_failures, validate_day
from icg_core.storage import ObjectStore
from tests.icg_core.conftest import RUN_DS, RawDay, utc
from tests.postgres import PostgresServer

WAREHOUSE = "AIRFLOW_CONN_ICG_WAREHOUSE"


def load_warehouse(store: ObjectStore, uri: str, schema: str = "public") -> None:
    """Copy every committed raw partition into ``<schema>.raw_catalog_items`` / ``raw_impressions``.

    The load day becomes a ``ds`` date column, as a warehouse's load partitions carry it.
    """
    with postgresql.connect(uri) as connection, connection.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        for handle in (layout.RAW_CATALOG, layout.RAW_IMPRESSIONS):
            table = handle.read_days(store, handle.days(store))
            for name, type_ in OPTIONAL_COLUMNS.get(handle.name, {}).items():
                if name not in table.column_names:
                    table = table.append_column(name, pa.nulls(table.num_rows, type_))
            table = table.set_column(table.schema.get_field_index("ds"), "ds", table["ds"].cast(pa.date32()))
            cursor.adbc_ingest(f"raw_{handle.name}", table, mode="create", db_schema_name=schema)
        connection.commit()


def _with_misdated_rows(raw: RawDay) -> None:
    rows = raw.store.read_table("impressions", ds="2026-11-05", area="raw").to_pylist()
    rows[0]["shown_at"], rows[1]["shown_at"] = utc("2099-01-01"), utc("1960-01-01")
    raw.write_raw("impressions", rows, ds="2026-11-05")
    raw.cfg = raw.cfg.model_copy(
        update={"validation": raw.cfg.validation.model_copy(update={"max_misdated_fraction": 0.05})}
    )


def _extract_and_validate(raw: RawDay, source: str) -> tuple[dict[str, list[dict]], dict]:
    cfg = raw.cfg.extract.model_copy(update={"source": source})
    summary = extract_day(raw.store, RUN_DS, cfg)
    assert summary.source == source
    report = validate_day(raw.store, RUN_DS, raw.cfg)
    assert report.success, format_failures(report)
    tables = {
        handle.name: sorted(
            handle.read(raw.store, RUN_DS).to_pylist(), key=lambda r: json.dumps(r, default=str)
        )
        for handle in (layout.CATALOG, layout.IMPRESSIONS)
    }
    meta = layout.STAGED_DAY.meta(raw.store, RUN_DS) or {}
    return tables, {k: meta[k] for k in ("window", "window_days", "misdated")}


def test_the_warehouse_gives_the_same_validated_day_as_the_dumps(
    raw_day_store: RawDay, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = raw_day_store
    raw.populate()
    _with_misdated_rows(raw)
    uri = postgres_server.database()
    load_warehouse(raw.store, uri)
    monkeypatch.setenv(WAREHOUSE, uri)

    from_dumps = _extract_and_validate(raw, "parquet")
    from_warehouse = _extract_and_validate(raw, "postgres")
    assert from_warehouse == from_dumps
    tables, meta = from_warehouse
    assert len(tables["catalog_items"]) == 3 and len(tables["impressions"]) == 82
    assert meta["misdated"]["partitions"] == {"2026-11-05": 2}


def test_the_stage_reads_the_airflow_connection_in_its_json_form(
    raw_day_store: RawDay, postgres_server: PostgresServer
) -> None:
    raw = raw_day_store
    raw.populate()
    uri = postgres_server.database()
    load_warehouse(raw.store, uri, schema="shop")
    parts = urlsplit(uri)
    connection = {"conn_type": "postgres", "host": parts.hostname, "port": parts.port,
                  "login": parts.username, "schema": parts.path.lstrip("/")}  # fmt: skip
    env = {**os.environ, WAREHOUSE: json.dumps(connection), "ICG__EXTRACT__SOURCE": "postgres",
           "ICG__EXTRACT__POSTGRES_SCHEMA": "shop"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.extract", "--root", raw.store.root, "--ds", RUN_DS, "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["source"] == "postgres" and summary["rows"] == {"catalog_items": 3, "impressions": 84}


@pytest.mark.parametrize("case", ["no_connection", "no_tables", "server_down"])
def test_warehouse_problems_are_one_clear_line_and_nothing_is_staged(
    raw_day_store: RawDay, postgres_server: PostgresServer, case: str
) -> None:
    raw = raw_day_store
    raw.populate()
    env = {k: v for k, v in os.environ.items() if k != WAREHOUSE}
    env["ICG__EXTRACT__SOURCE"] = "postgres"
    if case == "no_tables":
        env[WAREHOUSE] = postgres_server.database()  # an empty database
    elif case == "server_down":
        env[WAREHOUSE] = f"postgresql://icg@127.0.0.1:{postgres_server.port + 1}/postgres"
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.extract", "--root", raw.store.root, "--ds", RUN_DS],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    expected = {
        "no_connection": (2, f"{WAREHOUSE} is not set: define the Airflow connection 'icg_warehouse'"),
        "no_tables": (2, "warehouse query sql/extract_catalog.sql failed on 127.0.0.1 (schema public)"),
        "server_down": (1, "warehouse 127.0.0.1 unavailable"),
    }[case]
    assert (out.returncode, expected[1] in out.stderr) == (expected[0], True), out.stderr
    if case == "no_tables":
        assert "raw_catalog_items" in out.stderr  # the relation to create is named
    assert "Traceback" not in out.stderr
    assert layout.STAGED_DAY.meta(raw.store, RUN_DS) is None


def test_named_parameters_become_positional_and_comments_never_bind() -> None:
    sql = "-- binds $window_start and $nothing\nSELECT 1 WHERE a >= $window_start AND b < $window_end OR a = $window_start"
    text, values = positional(sql, {"window_start": 1, "window_end": 2})
    assert text.strip() == "SELECT 1 WHERE a >= $1 AND b < $2 OR a = $1" and values == [1, 2]
    with pytest.raises(SchemaError, match=r"\$limit has no value"):
        positional("SELECT 1 LIMIT $limit", {})


def test_the_connection_comes_as_an_airflow_uri_or_json() -> None:
    assert (
        warehouse_uri("icg_warehouse", {WAREHOUSE: "postgres://u:p@db:5432/shop"})
        == "postgresql://u:p@db:5432/shop"
    )
    form = {
        "conn_type": "postgres",
        "host": "db",
        "port": 5432,
        "login": "u",
        "password": "p@ss",
        "schema": "shop",
    }
    assert (
        warehouse_uri("icg_warehouse", {WAREHOUSE: json.dumps(form)}) == "postgresql://u:p%40ss@db:5432/shop"
    )
    with pytest.raises(SchemaError, match="must be a postgresql:// connection"):
        warehouse_uri("icg_warehouse", {WAREHOUSE: "mysql://u@db/shop"})
