"""Data contracts: the pyarrow schema of every table, declared once (docs/architecture.md, "Data contracts and object layout").

Every write and read in :mod:`icg_core.storage` goes through :func:`conform`, so a table that drifted
(a column missing, or of another type) fails loudly with the table, column and expected type named.
Tables are Hive-partitioned by ``ds``; ``ds`` lives in the directory name, not inside the files.
"""

from __future__ import annotations

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")
# Embeddings and features are fixed-size lists whose size depends on the model; the contract fixes
# the value type (float32) and checks that every row has the same length.
EMBEDDING = pa.list_(pa.float32())


class SchemaError(ValueError):
    """A table does not match its declared contract."""


def _schema(*fields: pa.Field) -> pa.Schema:
    return pa.schema(list(fields))


def _f(name: str, type_: pa.DataType, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


# Required columns per table (optional columns are listed in OPTIONAL_COLUMNS).
TABLES: dict[str, pa.Schema] = {
    "catalog_items": _schema(
        _f("item_id", pa.string()),
        _f("title", pa.string()),
        _f("category", pa.string()),
        _f("reference_image_uri", pa.string()),
        _f("updated_at", TIMESTAMP),
    ),
    "impressions": _schema(
        _f("user_id", pa.string()),
        _f("item_id", pa.string()),
        _f("cover_uri", pa.string()),
        _f("shown_at", TIMESTAMP),
        _f("clicked", pa.bool_()),
    ),
    "user_embeddings": _schema(
        _f("user_id", pa.string()),
        _f("embedding", EMBEDDING),
        _f("model_version", pa.string()),
    ),
    "user_segments": _schema(
        _f("user_id", pa.string()),
        _f("segment_id", pa.int32()),
    ),
    "segment_centroids": _schema(
        _f("segment_id", pa.int32()),
        _f("centroid", EMBEDDING),
    ),
    "item_features": _schema(
        _f("item_id", pa.string()),
        _f("content_hash", pa.string()),
        _f("encoder_version", pa.string()),
        _f("features_uri", pa.string()),
    ),
    "covers": _schema(
        _f("item_id", pa.string()),
        _f("segment_id", pa.int32()),
        _f("cover_uri", pa.string()),
        _f("width", pa.int32()),
        _f("height", pa.int32()),
        _f("format", pa.string()),
        _f("reward_aesthetic", pa.float32()),
        _f("reward_relevance", pa.float32()),
        _f("reward_preference", pa.float32()),
        _f("generator_version", pa.string()),
        _f("base_model", pa.string()),
        _f("seed", pa.int64()),
        _f("content_hash", pa.string()),
        _f("created_at", TIMESTAMP),
    ),
}

# Columns that name an object under the root: stored as keys relative to the root (icg_core.storage).
OBJECT_COLUMNS: dict[str, tuple[str, ...]] = {
    "catalog_items": ("reference_image_uri",),
    "impressions": ("cover_uri",),
    "item_features": ("features_uri",),
    "covers": ("cover_uri",),
}

# Columns only the manifests carry (docs/consumers.md): the day a cover was drawn for (earlier than the
# manifest's day when copied forward), how to fetch it, which contract version a row follows, and
# which publish wrote it (the two tables of one publish share the id).
_PUBLISHED = {"schema_version": pa.int32(), "publish_id": pa.string()}
OPTIONAL_COLUMNS: dict[str, dict[str, pa.DataType]] = {
    "catalog_items": {"description": pa.string(), "tags": pa.list_(pa.string())},
    "covers": {"made_ds": pa.string(), "cover_url": pa.string(), **_PUBLISHED},
    "user_segments": dict(_PUBLISHED),
}

# The published manifests' contract versions. A new version only adds columns: none is removed,
# renamed or retyped (a test checks), so a reader written for version N reads every later one. Days
# published before the column existed have no ``schema_version``: read them as version 1.
MANIFEST_SCHEMA_VERSION = 2
MANIFEST_COLUMNS: dict[int, dict[str, tuple[str, ...]]] = {
    1: {"covers": tuple(TABLES["covers"].names)},
    2: {
        "covers": (*TABLES["covers"].names, "made_ds", "cover_url", *_PUBLISHED),
        "user_segments": (*TABLES["user_segments"].names, *_PUBLISHED),
    },
}

# An id that becomes an object key or a file name (``covers/ds=D/segment=S/<item_id>-<digest>.png``): a letter
# or digit, then letters, digits, "_", "." or "-", at most MAX_ID_CHARS in all. No "/", no leading ".",
# no whitespace: nothing that could leave its folder or mean something to a shell or a query.
MAX_ID_CHARS = 128
SAFE_ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MAX_ID_CHARS - 1}}}\Z"  # \Z, not $: no trailing newline

# Keys that must be non-null in every table (null keys are a contract violation, not a data issue).
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "catalog_items": ("item_id",),
    "impressions": ("user_id", "item_id"),
    "user_embeddings": ("user_id",),
    "user_segments": ("user_id",),
    "segment_centroids": ("segment_id",),
    "item_features": ("item_id",),
    "covers": ("item_id", "segment_id"),
}


def _compatible(expected: pa.DataType, actual: pa.DataType) -> bool:
    """True if ``actual`` can be losslessly read as ``expected`` (same logical type)."""
    if expected.equals(actual):
        return True
    if pa.types.is_string(expected):
        return (
            pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_string_view(actual)
        )
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual)
    if pa.types.is_list(expected):
        is_list = (
            pa.types.is_list(actual) or pa.types.is_large_list(actual) or pa.types.is_fixed_size_list(actual)
        )
        return is_list and _compatible(expected.value_type, actual.value_type)
    return False


def _cast_column(name: str, column: pa.ChunkedArray, expected: pa.DataType) -> pa.ChunkedArray:
    if pa.types.is_timestamp(expected) and column.type.tz is None:
        # Naive timestamps are taken to be UTC: every producer in this project writes UTC.
        column = column.cast(pa.timestamp(column.type.unit, tz="UTC"))
    if pa.types.is_list(expected):
        return _as_fixed_size_list(name, column, expected.value_type)
    return column.cast(expected)


def _as_fixed_size_list(name: str, column: pa.ChunkedArray, value_type: pa.DataType) -> pa.ChunkedArray:
    if pa.types.is_fixed_size_list(column.type) and column.type.value_type.equals(value_type):
        return column
    combined = column.combine_chunks()
    if pa.types.is_fixed_size_list(combined.type):
        return pa.chunked_array([combined.cast(pa.list_(value_type, combined.type.list_size))])
    lengths = pa.compute.list_value_length(combined).drop_null().unique().to_pylist()
    if len(lengths) > 1:
        raise SchemaError(
            f"column '{name}': list lengths differ across rows ({sorted(lengths)}); expected one fixed size"
        )
    size = lengths[0] if lengths else 0
    return pa.chunked_array([combined.cast(pa.list_(value_type, size))])


def conform(table_name: str, table: pa.Table) -> pa.Table:
    """Check ``table`` against the contract of ``table_name`` and return it in canonical types.

    Required columns come first in contract order, then declared optional columns; unknown columns
    are dropped (a producer may carry extras, the contract does not). ``ds`` is never stored inside
    files: it is the partition key.

    Raises:
        SchemaError: naming the table, the column and the expected type.
    """
    if table_name not in TABLES:
        raise SchemaError(f"unknown table '{table_name}'; known: {sorted(TABLES)}")
    schema = TABLES[table_name]
    optional = OPTIONAL_COLUMNS.get(table_name, {})
    names, columns = [], []
    for field in schema:
        if field.name not in table.column_names:
            raise SchemaError(
                f"table {table_name}: missing column '{field.name}' (expected {field.type}); "
                f"found columns {table.column_names}"
            )
        column = table.column(field.name)
        if not _compatible(field.type, column.type) and not pa.types.is_null(column.type):
            raise SchemaError(
                f"table {table_name}: column '{field.name}' has type {column.type}, expected {field.type}"
            )
        try:
            names.append(field.name)
            columns.append(_cast_column(field.name, column, field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(
                f"table {table_name}: column '{field.name}' cannot be read as {field.type}: {exc}"
            ) from exc
    for name, type_ in optional.items():
        if name in table.column_names:
            column = table.column(name)
            if not _compatible(type_, column.type) and not pa.types.is_null(column.type):
                raise SchemaError(
                    f"table {table_name}: optional column '{name}' has type {column.type}, expected {type_}"
                )
            names.append(name)
            columns.append(column.cast(type_))
    return pa.Table.from_arrays(columns, names=names)


def empty_table(table_name: str) -> pa.Table:
    """A zero-row table with the contract's required columns."""
    return TABLES[table_name].empty_table()
