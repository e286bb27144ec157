"""Validation of a day's extraction with great-expectations suites, and the gate to ``validated/``.

``validate_day`` reads the day extract committed under ``staging/extract/`` (both tables, or none),
runs one suite per table plus the day's completeness checks, and always writes
``reports/ds=<ds>/validation.json`` (great-expectations' result JSON plus our summary). Only when
everything passes are both tables copied, unchanged, to ``validated/``, as one day commit whose marker
carries the validation summary: readers see the new catalog, impressions and verdict together or the
old ones. A failing day leaves ``validated/`` untouched, including the tables that passed on their own.

Completeness (from what extract recorded): every day of the window since the logs began has
impressions, none fewer than ``min_day_rows_fraction`` x the median day; raw impressions dated outside
their dump's day are reported, and refused above ``max_misdated_fraction``.

A table that cannot be read against its contract (a column missing or of another type) is a failure
of that table, reported with the column and expected type, not a crash. Image columns are checked
through :mod:`icg_core.data.images` (each distinct URI once) into a per-row verdict column, so a failure
names the rows and the reason, e.g. ``reference_image_check='corrupt: ...'``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Any

logging.getLogger("great_expectations").setLevel(logging.WARNING)  # set before import: GX floods INFO

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from icg_core import layout  # noqa: E402
from icg_core.config import ICGConfig, ValidationConfig  # noqa: E402
from icg_core.data.images import ImageCheck, check_image_uris  # noqa: E402
from icg_core.data.schemas import MAX_ID_CHARS, SAFE_ID_PATTERN, SchemaError  # noqa: E402
from icg_core.stages.extract import CATALOG, IMPRESSIONS, ExtractWindow, extraction_window  # noqa: E402
from icg_core.storage import ObjectStore, StorageError  # noqa: E402

log = logging.getLogger(__name__)

# Derived per-row image verdict columns: "ok", or "<status> (<uri>): <detail>".
REFERENCE_IMAGE_CHECK = "reference_image_check"
COVER_IMAGE_CHECK = "cover_image_check"
ITEM_IN_CATALOG = "item_id_in_catalog"  # derived per-row column: True, False, or None for a null item_id
# Columns that identify a row in failure samples, per table.
ROW_KEYS = {CATALOG: ["item_id"], IMPRESSIONS: ["user_id", "item_id"]}


@dataclass(frozen=True)
class ValidationFailure:
    """One failed expectation: what, where, how many, and a few offending rows (keys + value)."""

    table: str
    expectation: str  # a great-expectations type, or "schema_contract" / "partition_readable"
    column: str | None
    unexpected_count: int | None
    sample_rows: list[dict[str, Any]]
    detail: str = ""


@dataclass(frozen=True)
class TableValidation:
    table: str
    success: bool
    rows: int | None  # None when the table could not be read
    evaluated: int  # expectations evaluated
    failed: int  # expectations failed (a schema failure counts as one)


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_day`; ``report_uri`` is the JSON written to ``reports/``."""

    ds: str
    success: bool
    window: ExtractWindow
    tables: dict[str, TableValidation]
    failures: list[ValidationFailure]
    report_uri: str = ""
    validated_files: dict[str, list[str]] = field(default_factory=dict)
    extraction: dict[str, Any] = field(default_factory=dict)  # extract's window days and misdated rows

    def summary(self) -> dict[str, Any]:
        return {
            "ds": self.ds,
            "success": self.success,
            "window": self.window.as_dict(),
            "tables": {name: dataclasses.asdict(t) for name, t in self.tables.items()},
            "failures": [dataclasses.asdict(f) for f in self.failures],
            "validated_files": self.validated_files,
            "extraction": self.extraction,
        }


# ----------------------------------------------------------------------------- suites
def safe_id_expectation(column: str) -> gxe.Expectation:
    """``column`` holds ids that become object keys: the safe-id rule (icg_core.data.schemas)."""
    return gxe.ExpectColumnValuesToMatchRegex(
        column=column,
        regex=SAFE_ID_PATTERN,
        description=(
            f"{column} is 1..{MAX_ID_CHARS} letters, digits, '_', '.', '-', starting with a letter or "
            "digit (ids become object keys)"
        ),
    )


def catalog_expectations(cfg: ValidationConfig, window: ExtractWindow) -> list[gxe.Expectation]:
    """The catalog_items suite: non-empty, keys present and unique, sane titles, images usable."""
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, description="the catalog snapshot must not be empty"),
        *(
            gxe.ExpectColumnValuesToNotBeNull(column=column, description=f"{column} is required")
            for column in ("item_id", "title", "category", "reference_image_uri", "updated_at")
        ),
        gxe.ExpectColumnValuesToBeUnique(column="item_id", description="one row per item in the snapshot"),
        safe_id_expectation("item_id"),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column="title",
            min_value=cfg.title_min_chars,
            max_value=cfg.title_max_chars,
            description=f"titles have {cfg.title_min_chars}..{cfg.title_max_chars} characters",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="updated_at",
            max_value=window.snapshot_end,
            strict_max=True,
            description=f"no item version from after the snapshot end {window.snapshot_end.isoformat()}",
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column=REFERENCE_IMAGE_CHECK,
            value_set=["ok"],
            description="every reference image is readable, decodable and within the size limits",
        ),
    ]


def impression_expectations(window: ExtractWindow, check_catalog: bool) -> list[gxe.Expectation]:
    """The impressions suite: non-empty, complete rows, inside the window, known items, usable covers."""
    expectations: list[gxe.Expectation] = [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=1, description="the impressions window must not be empty"
        ),
        *(
            gxe.ExpectColumnValuesToNotBeNull(column=column, description=f"{column} is required")
            for column in ("user_id", "item_id", "cover_uri", "shown_at", "clicked")
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="clicked", value_set=[True, False], description="clicked is a boolean"
        ),
        safe_id_expectation("item_id"),
        gxe.ExpectColumnValuesToBeBetween(
            column="shown_at",
            min_value=window.window_start,
            max_value=window.window_end,
            strict_max=True,
            description=f"shown_at inside [{window.window_start.isoformat()}, {window.window_end.isoformat()})",
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column=COVER_IMAGE_CHECK,
            value_set=["ok"],
            description="every shown cover is readable, decodable and within the size limits",
        ),
    ]
    if check_catalog:
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(
                column=ITEM_IN_CATALOG,
                value_set=[True],
                description="every impression's item_id is in the catalog snapshot",
            )
        )
    return expectations


# ----------------------------------------------------------------------------- frames
def _image_labels(uris: pd.Series, checks: dict[str, ImageCheck]) -> list[str | None]:
    labels: list[str | None] = []
    for uri in uris:
        if uri is None or (isinstance(uri, float) and math.isnan(uri)):
            labels.append(None)  # a missing URI is the not-null expectation's finding
        else:
            check = checks[uri]
            labels.append("ok" if check.ok else f"{check.status} ({uri}): {check.detail}")
    return labels


def _checked_images(store: ObjectStore, uris: pd.Series, cfg: ValidationConfig) -> list[str | None]:
    checks = check_image_uris(
        store,
        uris.dropna().tolist(),
        max_bytes=cfg.max_image_bytes,
        max_pixels=cfg.max_image_pixels,
        min_side=cfg.min_image_side,
    )
    return _image_labels(uris, checks)


def catalog_frame(store: ObjectStore, table: pa.Table, cfg: ValidationConfig) -> pd.DataFrame:
    """The catalog columns under test, plus the per-row reference image verdict."""
    frame = table.select(["item_id", "title", "category", "reference_image_uri", "updated_at"]).to_pandas()
    frame[REFERENCE_IMAGE_CHECK] = pd.Series(
        _checked_images(store, frame["reference_image_uri"], cfg), dtype=object
    )
    return frame


def impressions_frame(
    store: ObjectStore, table: pa.Table, cfg: ValidationConfig, catalog_ids: set[str] | None
) -> pd.DataFrame:
    """The impression columns under test, plus per-row cover verdicts and catalog membership."""
    frame = table.select(["user_id", "item_id", "cover_uri", "shown_at", "clicked"]).to_pandas()
    frame[COVER_IMAGE_CHECK] = pd.Series(_checked_images(store, frame["cover_uri"], cfg), dtype=object)
    if catalog_ids is not None:
        known = frame["item_id"].isin(catalog_ids).astype(object)
        frame[ITEM_IN_CATALOG] = known.where(frame["item_id"].notna(), None)
    return frame


# ----------------------------------------------------------------------------- running suites
def _ephemeral_context() -> Any:
    """An in-memory GX context: no docs site, no usage statistics, no progress bars in task logs."""
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _run_suite(
    context: Any, table_name: str, frame: pd.DataFrame, expectations: list[gxe.Expectation], sample_rows: int
) -> Any:
    """Validate ``frame`` against ``expectations``; returns GX's ExpectationSuiteValidationResult."""
    source = context.data_sources.add_pandas(name=f"staging_{table_name}")
    batch_definition = source.add_dataframe_asset(name=table_name).add_batch_definition_whole_dataframe(
        "whole"
    )
    suite = context.suites.add(gx.ExpectationSuite(name=table_name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
    result_format = {
        "result_format": "SUMMARY",
        "partial_unexpected_count": max(1, sample_rows),
        "unexpected_index_column_names": ROW_KEYS[table_name],
    }
    return batch.validate(suite, result_format=result_format)


def _plain(value: Any) -> Any:
    """A sample value as plain JSON-able Python (NaN/NaT -> None, timestamps -> ISO strings)."""
    if isinstance(value, (pd.Timestamp, dt.datetime)):
        return None if pd.isna(value) else value.isoformat()
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()  # numpy scalar
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _exception_messages(info: Any) -> list[str]:
    # exception_info is either one {"raised_exception", "exception_message"} dict or a dict of them.
    if not isinstance(info, dict):
        return []
    if "raised_exception" in info:
        return [str(info.get("exception_message"))] if info.get("raised_exception") else []
    return [m for sub in info.values() for m in _exception_messages(sub)]


def suite_failures(table_name: str, result: Any, sample_rows: int) -> list[ValidationFailure]:
    """The failed expectations of one suite result, each with up to ``sample_rows`` offending rows."""
    failures = []
    for outcome in result.results:
        if outcome.success:
            continue
        config = outcome.expectation_config
        details = outcome.result or {}
        detail = config.description or ""
        if "observed_value" in details:
            detail += f" (observed {details['observed_value']})"
        errors = _exception_messages(outcome.exception_info)
        if errors:
            detail += f" (could not evaluate: {'; '.join(errors)})"
        keys = ROW_KEYS[table_name]
        samples = [
            # Row keys first, then the offending value.
            {
                key: _plain(row[key])
                for key in sorted(row, key=lambda k: keys.index(k) if k in keys else len(keys))
            }
            for row in (details.get("partial_unexpected_index_list") or [])[:sample_rows]
        ]
        failures.append(
            ValidationFailure(
                table=table_name,
                expectation=config.type,
                column=config.kwargs.get("column"),
                unexpected_count=details.get("unexpected_count"),
                sample_rows=samples,
                detail=detail,
            )
        )
    return failures


def completeness_failures(extracted: dict[str, Any], cfg: ValidationConfig) -> list[ValidationFailure]:
    """Missing or implausibly small window days, and too many misdated raw rows (extract's facts)."""
    failures = []
    days = extracted.get("window_days", []) if cfg.min_day_rows_fraction > 0 else []
    median = float(statistics.median(d["rows"] for d in days)) if days else 0.0
    floor = cfg.min_day_rows_fraction * median
    short = [d for d in days if d["rows"] == 0 or d["rows"] < floor]
    if short:
        failures.append(
            ValidationFailure(
                IMPRESSIONS,
                "window_day_complete",
                "shown_at",
                len(short),
                [{**d, "median_day_rows": median} for d in short],
                f"every day of the window since the logs began has impressions, at least "
                f"{cfg.min_day_rows_fraction} x the median day ({median:.0f} rows): a missing or truncated "
                "dump would silently shrink the window",
            )
        )
    misdated = extracted.get("misdated") or {}
    rows, read = int(misdated.get("rows", 0)), int(misdated.get("rows_read", 0))
    if read and rows / read > cfg.max_misdated_fraction:
        failures.append(
            ValidationFailure(
                IMPRESSIONS,
                "raw_rows_dated_in_their_dump",
                "shown_at",
                rows,
                list(misdated.get("sample_rows", [])),
                f"at most {cfg.max_misdated_fraction:.2%} of raw impressions dated outside their dump's day "
                f"(observed {rows} of {read} = {rows / read:.2%}; by dump: {misdated.get('partitions')})",
            )
        )
    return failures


def _read_staging(
    store: ObjectStore, table_name: str, ds: str
) -> tuple[pa.Table | None, ValidationFailure | None]:
    """The staged table, or the failure explaining why it cannot be validated (never raises on bad data)."""
    try:
        return layout.staged_table(table_name).read(store, ds), None
    except SchemaError as exc:
        named = re.search(r"column '([^']+)'", str(exc))
        return None, ValidationFailure(
            table_name, "schema_contract", named.group(1) if named else None, None, [], str(exc)
        )
    except (StorageError, OSError, pa.ArrowException) as exc:
        return None, ValidationFailure(table_name, "partition_readable", None, None, [], str(exc))


# ----------------------------------------------------------------------------- the day
def _validate_tables(
    store: ObjectStore,
    ds: str,
    staged: dict[str, pa.Table],
    window: ExtractWindow,
    limits: ValidationConfig,
    tables: dict[str, TableValidation],
    failures: list[ValidationFailure],
) -> dict[str, Any]:
    """Run each readable table's suite, filling ``tables`` and ``failures``; GX's result JSON per table."""
    context = _ephemeral_context()
    suite_results: dict[str, Any] = {}
    catalog_ids = None
    if CATALOG in staged:
        catalog_ids = set(staged[CATALOG].column("item_id").drop_null().to_pylist())
    elif IMPRESSIONS in staged:
        log.warning(
            "stage=validate ds=%s catalog unreadable: impressions' item_id membership not checked", ds
        )
    for table_name, table in staged.items():
        if table_name == CATALOG:
            frame = catalog_frame(store, table, limits)
            expectations = catalog_expectations(limits, window)
        else:
            frame = impressions_frame(store, table, limits, catalog_ids)
            expectations = impression_expectations(window, check_catalog=catalog_ids is not None)
        result = _run_suite(context, table_name, frame, expectations, limits.sample_rows)
        suite_results[table_name] = result.to_json_dict()
        table_failures = suite_failures(table_name, result, limits.sample_rows)
        failures.extend(table_failures)
        tables[table_name] = TableValidation(
            table_name, bool(result.success), table.num_rows, len(result.results), len(table_failures)
        )
        log.info(
            "stage=validate ds=%s table=%s rows=%d expectations=%d failed=%d",
            ds,
            table_name,
            table.num_rows,
            len(result.results),
            len(table_failures),
        )
    return suite_results


def validate_day(store: ObjectStore, ds: str, cfg: ICGConfig) -> ValidationReport:
    """Validate the staged extraction of ``ds``; publish it to ``validated/`` only if everything passes.

    Args:
        store: the object store holding ``staging/extract/`` partitions.
        ds: the run's date, ``YYYY-MM-DD``.
        cfg: the configuration (``extract.lookback_days`` fixes the window, ``validation`` the limits).

    Returns:
        The report; its JSON is at ``report_uri`` whatever the outcome.
    """
    window = extraction_window(ds, cfg.extract.lookback_days)
    limits = cfg.validation
    tables: dict[str, TableValidation] = {}
    failures: list[ValidationFailure] = []
    staged: dict[str, pa.Table] = {}

    extracted = layout.STAGED_DAY.meta(store, ds)
    if extracted is None:
        raise StorageError(
            f"no complete extraction of ds={ds} under {store.uri(layout.STAGING_EXTRACT)} "
            "(run `icg extract` first; a failed or interrupted extract leaves nothing to validate)"
        )
    for table_name in (CATALOG, IMPRESSIONS):
        table, unreadable = _read_staging(store, table_name, ds)
        if unreadable is not None:
            failures.append(unreadable)
            tables[table_name] = TableValidation(table_name, False, None, 0, 1)
            log.warning("stage=validate ds=%s table=%s unreadable: %s", ds, table_name, unreadable.detail)
        else:
            staged[table_name] = table

    suite_results = _validate_tables(store, ds, staged, window, limits, tables, failures)
    day_failures = completeness_failures(extracted, limits)
    failures.extend(day_failures)
    if day_failures and IMPRESSIONS in tables:
        t = tables[IMPRESSIONS]
        tables[IMPRESSIONS] = dataclasses.replace(
            t, success=False, evaluated=t.evaluated + 2, failed=t.failed + len(day_failures)
        )
    report = ValidationReport(ds, not failures, window, tables, failures)
    report.extraction = {
        "window_days": extracted.get("window_days", []),
        "misdated": extracted.get("misdated", {}),
    }
    document: dict[str, Any] = {"summary": report.summary(), "suites": suite_results}
    try:
        if report.success:
            commits = layout.VALIDATED_DAY.write(store, staged, ds, {"validation": report.summary()})
            report.validated_files = {name: list(c.files) for name, c in commits.items()}
            document["summary"] = report.summary()
    except Exception as exc:
        document["summary"]["publish_error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        report.report_uri = store.uri(store.put_json(layout.validation_report(ds), document))
    log.info(
        "stage=validate ds=%s success=%s failures=%d report=%s",
        ds,
        report.success,
        len(failures),
        report.report_uri,
    )
    return report


def _shown(value: Any, limit: int = 240) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def format_failures(report: ValidationReport) -> str:
    """A human-readable account of ``report``: each failed expectation with its sample rows."""
    if report.success:
        return f"validation of ds={report.ds} passed (report: {report.report_uri})"
    lines = [
        f"validation of ds={report.ds} failed: {len(report.failures)} failed check(s) (report: {report.report_uri})"
    ]
    for failure in report.failures:
        where = f" on column '{failure.column}'" if failure.column else ""
        count = (
            f": {failure.unexpected_count} unexpected row(s)" if failure.unexpected_count is not None else ""
        )
        lines.append(f"- {failure.table}: {failure.expectation}{where}{count} - {failure.detail}")
        for row in failure.sample_rows:
            lines.append("    " + ", ".join(f"{key}={_shown(value)}" for key, value in row.items()))
    return "\n".join(lines)
