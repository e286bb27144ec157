"""Extraction: the day's candidate tables from raw partitions, by SQL on DuckDB (docs/architecture.md, "Data contracts and object layout").

The nightly run for ``ds`` looks at the data interval that ENDS at ``ds`` 00:00 UTC:

- ``impressions``: rows with ``shown_at`` in ``[ds - lookback_days, ds)`` (half-open);
- ``catalog_items``: each item's latest row with ``updated_at < ds``, i.e. the catalog as it stood
  when the impressions window closed.

Raw partitions are day dumps, so a row can only appear in the dump of its own day or a later one.
Impressions are read from the partitions ``date(window_start) .. ds`` (the ``ds`` dump may still carry
late rows of the window's last day; later dumps are the next run's business, which keeps a rerun of
``ds`` reproducible). The catalog snapshot needs every dump up to and including ``ds``: an item last
changed months ago lives only in an old partition.

Raw files are read as one :mod:`pyarrow.dataset` over ``store.fs`` (local or S3) registered in DuckDB,
so filters push down into the Parquet scan. With ``extract.source: postgres`` the same queries run in
a PostgreSQL warehouse instead (:mod:`icg_core.data.warehouse`), over its ``raw_catalog_items`` and
``raw_impressions`` relations. The SQL lives in ``sql/`` with bound parameters only;
the results go to ``staging/extract/<table>/ds=<ds>/`` for validation, even when empty, as one day
commit (both tables appear together). The first thing a run does is retract the day it is about to
write, so a failed or half-finished extract can never be promoted by validate.

The commit also records what validate needs to judge completeness (docs/architecture.md, "Validation"):
impressions per day of the window, from the first day the logs exist, and the raw rows dated outside
their dump's day (``sql/raw_impressions_dates.sql``), which the window's SQL would otherwise drop
silently.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from icg_core import layout
from icg_core.config import ExtractConfig
from icg_core.data.schemas import OPTIONAL_COLUMNS, TABLES, SchemaError, conform
from icg_core.data.warehouse import Warehouse, warehouse_uri
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
CATALOG = "catalog_items"
IMPRESSIONS = "impressions"
SQL_FILES = {CATALOG: "extract_catalog", IMPRESSIONS: "extract_impressions"}  # table -> sql/<name>.sql
MISDATED_SAMPLE_ROWS = 10  # misdated raw impressions kept as examples for the validation report


@dataclass(frozen=True)
class ExtractWindow:
    """The data interval of the nightly run for ``ds`` (all instants UTC).

    ``snapshot_end`` and ``window_end`` are both ``ds`` 00:00: the catalog is taken as of the moment
    the impressions window closes.
    """

    ds: str
    window_start: dt.datetime  # inclusive bound on impressions.shown_at
    window_end: dt.datetime  # exclusive bound on impressions.shown_at
    snapshot_end: dt.datetime  # exclusive bound on catalog_items.updated_at

    def as_dict(self) -> dict[str, str]:
        return {
            "ds": self.ds,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "snapshot_end": self.snapshot_end.isoformat(),
        }


def extraction_window(ds: str, lookback_days: int) -> ExtractWindow:
    """The window of the run for ``ds``: impressions in ``[ds - lookback_days, ds)``, catalog before ``ds``.

    Args:
        ds: the run's date, ``YYYY-MM-DD``.
        lookback_days: length of the impressions window in days (>= 1).
    """
    if lookback_days < 1:
        raise ValueError(f"lookback_days must be >= 1, got {lookback_days}")
    day = dt.date.fromisoformat(ds)
    end = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return ExtractWindow(
        ds=ds, window_start=end - dt.timedelta(days=lookback_days), window_end=end, snapshot_end=end
    )


@dataclass(frozen=True)
class ExtractSummary:
    """What one extraction read and wrote."""

    ds: str
    window: ExtractWindow
    rows: dict[str, int]  # table -> rows written to staging
    partitions_read: dict[str, list[str]]  # table -> raw ds values read
    files_read: dict[str, list[str]]  # table -> raw object keys read
    files_written: dict[str, list[str]] = field(default_factory=dict)  # table -> staging object keys
    window_days: list[dict[str, Any]] = field(default_factory=list)  # [{day, rows}] from the log's first day
    misdated: dict[str, Any] = field(default_factory=dict)  # raw impressions dated outside their dump's day
    source: str = "parquet"  # where the raw tables were read: "parquet" (raw/ dumps) or "postgres"


# Runs one sql/ file by name with its parameters bound, on DuckDB or on the warehouse.
QueryRunner = Callable[[str, Mapping[str, object]], pa.Table]


@dataclass
class RawRead:
    """What a source gave for the day: the two tables and where they came from."""

    tables: dict[str, pa.Table]
    partitions: dict[str, list[str]]  # table -> raw ds values read
    files: dict[str, list[str]]  # table -> raw object keys read (none from a warehouse)
    misdated: dict[str, Any]
    first_logged: str | None  # the first day any raw impressions exist


def load_sql(name: str) -> str:
    """The text of ``sql/<name>.sql`` (placeholders such as ``$window_start`` left for binding)."""
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"SQL file {path} not found (expected next to the icg_core package)")
    return path.read_text(encoding="utf-8")


def raw_partitions_for(store: ObjectStore, table_name: str, window: ExtractWindow) -> list[str]:
    """The committed raw ``ds`` partitions of ``table_name`` that may hold rows of ``window``."""
    committed = layout.raw_table(table_name).days(store)
    if table_name == CATALOG:
        return [p for p in committed if p <= window.ds]
    if table_name == IMPRESSIONS:
        first = window.window_start.date().isoformat()
        return [p for p in committed if first <= p <= window.ds]
    raise ValueError(f"no extraction rule for table {table_name!r}")


def _scan_schema(table_name: str) -> pa.Schema:
    """Contract columns plus every optional column: the one schema all raw files are read as."""
    schema = TABLES[table_name]
    for name, type_ in OPTIONAL_COLUMNS.get(table_name, {}).items():
        schema = schema.append(pa.field(name, type_))
    return schema


def _with_all_columns(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` (already conformed) with the columns of ``schema`` it lacks added as nulls, in order."""
    columns = [
        table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def open_raw_dataset(
    store: ObjectStore, table_name: str, partitions: list[str]
) -> tuple[pads.Dataset, list[str], set[str]]:
    """The committed raw files of ``partitions`` as one dataset: the contract schema plus ``ds``.

    Files already in canonical types are scanned lazily from the store. A file of compatible but
    different types (naive or nanosecond timestamps, large strings) is conformed in memory first,
    because a pyarrow scan cannot evaluate pushed-down filters across mixed physical types.

    Returns:
        (dataset, keys of the files read, optional columns present in at least one file).

    Raises:
        SchemaError: a file drifted from the contract (the file, column and expected type named).
    """
    schema = _scan_schema(table_name)
    table = layout.raw_table(table_name)
    keys = [key for ds in partitions for key in table.files(store, ds)]
    canonical, conformed = [], []
    optional_present: set[str] = set()
    for key in keys:
        path = store.arrow_path(key)
        try:
            physical = pq.read_schema(path, filesystem=store.fs)
            conform(table_name, physical.empty_table())
        except pa.ArrowInvalid as exc:
            raise SchemaError(f"raw file {store.uri(key)} is not a readable Parquet file: {exc}") from exc
        except SchemaError as exc:
            raise SchemaError(f"raw file {store.uri(key)}: {exc}") from exc
        optional_present |= set(physical.names) & set(OPTIONAL_COLUMNS.get(table_name, {}))
        if all(physical.field(f.name).type.equals(f.type) for f in schema if f.name in physical.names):
            canonical.append(path)
        else:
            data = _with_all_columns(conform(table_name, pq.read_table(path, filesystem=store.fs)), schema)
            day = layout.partition_day(key)
            conformed.append(pads.dataset(data.append_column("ds", pa.array([day] * data.num_rows))))
    on_store = pads.dataset(
        canonical,
        schema=schema.append(pa.field("ds", pa.string())),
        format="parquet",
        filesystem=store.fs,
        partitioning=pads.partitioning(pa.schema([("ds", pa.string())]), flavor="hive"),
        partition_base_dir=store.arrow_path(table.root_key()),
    )
    dataset = pads.dataset([on_store, *conformed]) if conformed else on_store
    return dataset, keys, optional_present


def run_extract_query(
    connection: duckdb.DuckDBPyConnection, name: str, params: Mapping[str, object]
) -> pa.Table:
    """Run ``sql/<name>.sql`` with ``params`` bound by name (``$name`` placeholders); result as Arrow."""
    return connection.sql(load_sql(name), params=params).to_arrow_table()


def _extract_table(
    store: ObjectStore,
    connection: duckdb.DuckDBPyConnection,
    table_name: str,
    window: ExtractWindow,
    params: Mapping[str, object],
) -> tuple[pa.Table, list[str], list[str], dict[str, Any]]:
    """One table of the day, the raw partitions and files read, and (impressions) the misdated rows."""
    partitions = raw_partitions_for(store, table_name, window)
    dataset, keys, optional_present = open_raw_dataset(store, table_name, partitions)
    relation = f"raw_{table_name}"
    connection.register(relation, dataset)
    misdated: dict[str, Any] = {}
    try:
        result = run_extract_query(connection, SQL_FILES[table_name], params)
        if table_name == IMPRESSIONS:
            misdated = _misdated(lambda name, p: run_extract_query(connection, name, p))
    finally:
        connection.unregister(relation)
    # The SQL selects every optional column; keep only those some raw file actually carried.
    absent = [
        c
        for c in OPTIONAL_COLUMNS.get(table_name, {})
        if c in result.column_names and c not in optional_present
    ]
    return result.drop_columns(absent), partitions, keys, misdated


def _misdated(run: QueryRunner) -> dict[str, Any]:
    """Raw impressions dated outside their dump's day: counts per partition and a few examples."""
    per_partition = run("raw_impressions_dates", {}).to_pylist()
    sample = run("misdated_impressions", {"limit": MISDATED_SAMPLE_ROWS})
    return {
        "rows_read": sum(int(p["rows_read"]) for p in per_partition),
        "rows": sum(int(p["misdated"]) for p in per_partition),
        "partitions": {str(p["ds"]): int(p["misdated"]) for p in per_partition if p["misdated"]},
        "read": sorted(str(p["ds"]) for p in per_partition),
        "sample_rows": [
            {
                **row,
                "ds": str(row["ds"]),
                "shown_at": None if row["shown_at"] is None else row["shown_at"].isoformat(),
            }
            for row in sample.to_pylist()
        ],
    }


def window_days(
    first_logged: str | None, impressions: pa.Table, window: ExtractWindow
) -> list[dict[str, Any]]:
    """Impressions per UTC day of the window, from ``first_logged``, the first day any raw impressions exist.

    Days before the logs began are not listed: a young deployment is not missing them.
    """
    first = max(window.window_start.date(), dt.date.fromisoformat(first_logged)) if first_logged else None
    counts: dict[str, int] = {}
    if impressions.num_rows:
        for day in pc.strftime(impressions.column("shown_at"), format="%Y-%m-%d").to_pylist():
            counts[day] = counts.get(day, 0) + 1
    days = []
    day = first
    while day is not None and day < window.window_end.date():
        days.append({"day": day.isoformat(), "rows": counts.get(day.isoformat(), 0)})
        day += dt.timedelta(days=1)
    return days


def read_parquet_dumps(
    store: ObjectStore, window: ExtractWindow, params: Mapping[str, Mapping[str, object]]
) -> RawRead:
    """The day's tables from the committed ``raw/`` Parquet partitions, by the ``sql/`` files on DuckDB."""
    read = RawRead({}, {}, {}, {}, None)
    connection = duckdb.connect()
    try:
        # Session time zone fixed so timestamp results never depend on the host's zone.
        connection.execute("SET TimeZone = 'UTC'")
        with store.errors("scan the raw tables of", layout.RAW):
            for table_name in (CATALOG, IMPRESSIONS):
                read.tables[table_name], read.partitions[table_name], read.files[table_name], found = (
                    _extract_table(store, connection, table_name, window, params[table_name])
                )
                read.misdated = read.misdated or found
    finally:
        connection.close()
    logged = layout.RAW_IMPRESSIONS.days(store)
    read.first_logged = logged[0] if logged else None
    return read


def read_warehouse(
    cfg: ExtractConfig, window: ExtractWindow, params: Mapping[str, Mapping[str, object]]
) -> RawRead:
    """The day's tables from the PostgreSQL warehouse, by the same ``sql/`` files.

    Impressions come from the loads ``date(window_start) .. ds``, as the Parquet path reads those
    partitions. Optional catalog columns that are null in every row are dropped, as the Parquet path
    drops those no raw file carries.
    """
    loads = (window.window_start.date().isoformat(), window.ds)
    with Warehouse(warehouse_uri(cfg.postgres_conn_id), cfg.postgres_schema, loads) as warehouse:

        def run(name: str, bound: Mapping[str, object]) -> pa.Table:
            return warehouse.query(name, load_sql(name), bound)

        tables = {name: run(SQL_FILES[name], params[name]) for name in (CATALOG, IMPRESSIONS)}
        misdated = _misdated(run)
        first_logged = warehouse.first_load()
    catalog = tables[CATALOG]
    empty = [
        c
        for c in OPTIONAL_COLUMNS[CATALOG]
        if c in catalog.column_names and catalog[c].null_count == catalog.num_rows
    ]
    tables[CATALOG] = catalog.drop_columns(empty)
    partitions = {CATALOG: [], IMPRESSIONS: misdated["read"]}
    return RawRead(tables, partitions, {CATALOG: [], IMPRESSIONS: []}, misdated, first_logged)


def extract_day(store: ObjectStore, ds: str, cfg: ExtractConfig) -> ExtractSummary:
    """Extract the catalog snapshot and the impressions window of ``ds`` into ``staging/extract``.

    Args:
        store: the object store holding ``raw/`` partitions (and receiving the staged day).
        ds: the run's date, ``YYYY-MM-DD``.
        cfg: extraction settings (``lookback_days``, ``source`` and the warehouse's connection).

    Raises:
        SchemaError: a raw file drifted from its contract, or the warehouse refused a query.
        StorageUnavailable: the store or the warehouse did not answer.
    """
    window = extraction_window(ds, cfg.lookback_days)
    params = {
        CATALOG: {"snapshot_end": window.snapshot_end},
        IMPRESSIONS: {"window_start": window.window_start, "window_end": window.window_end},
    }
    layout.STAGED_DAY.retract(store, ds)  # from here on, only a complete run makes the day promotable
    read = (
        read_warehouse(cfg, window, params)
        if cfg.source == "postgres"
        else read_parquet_dumps(store, window, params)
    )
    misdated = read.misdated
    days = window_days(read.first_logged, read.tables[IMPRESSIONS], window)
    meta = {"window": window.as_dict(), "window_days": days, "misdated": misdated, "source": cfg.source}
    commits = layout.STAGED_DAY.write(store, read.tables, ds, meta)
    for table_name, commit in commits.items():
        log.info(
            "stage=extract ds=%s source=%s table=%s raw_partitions=%d raw_files=%d rows=%d window=[%s, %s)",
            ds,
            cfg.source,
            table_name,
            len(read.partitions[table_name]),
            len(read.files[table_name]),
            commit.rows,
            window.window_start.isoformat(),
            window.window_end.isoformat(),
        )
        if commit.rows == 0:
            log.warning(
                "stage=extract ds=%s table=%s extracted no rows; validation will reject the day",
                ds,
                table_name,
            )
    if misdated.get("rows"):
        log.warning(
            "stage=extract ds=%s misdated raw impressions=%d of %d (by partition: %s); not extracted",
            ds,
            misdated["rows"],
            misdated["rows_read"],
            misdated["partitions"],
        )
    return ExtractSummary(
        ds,
        window,
        {name: c.rows for name, c in commits.items()},
        read.partitions,
        read.files,
        {name: list(c.files) for name, c in commits.items()},
        days,
        misdated,
        cfg.source,
    )
