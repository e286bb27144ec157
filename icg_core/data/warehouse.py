"""The raw tables in a PostgreSQL warehouse, queried with the same ``sql/`` files as the Parquet dumps.

docs/architecture.md, "Extraction". The extract SQL names two input relations, ``raw_catalog_items``
and ``raw_impressions``. On the Parquet path they are DuckDB views over the committed raw files; here
they are tables (or views) of that name in ``extract.postgres_schema``, with the raw contract's
columns:

- ``raw_catalog_items``: item_id, title, category, reference_image_uri, updated_at (timestamptz),
  description (text, may be null), tags (text[], may be null);
- ``raw_impressions``: user_id, item_id, cover_uri, shown_at (timestamptz), clicked, and ``ds``
  (date), the day of the load that brought the row, as the dumps' ``ds=`` partition does.

Each query runs with those names bound, by a ``WITH`` in front of the file's ``SELECT``, to the
schema's relations, and ``raw_impressions`` is limited to the loads the run reads, as the Parquet
path limits its partitions. Parameters stay bound (``$name`` in the files becomes ``$1, $2, ...``).
Results come back as Arrow through ADBC, in the contract's types.

The connection is an Airflow connection id (``extract.postgres_conn_id``). The stage reads it from
``AIRFLOW_CONN_<ID>`` (a ``postgresql://`` URI, or Airflow's JSON form). Under Airflow the extract
task resolves the id through Airflow's connections and secrets backends and passes the URI on
(:mod:`pipelines.orchestration`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import pyarrow as pa

from icg_core.data.schemas import SchemaError
from icg_core.storage import StorageUnavailable

RELATIONS = ("raw_catalog_items", "raw_impressions")  # the input relations the sql/ files name
_PARAMETER = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_COMMENT = re.compile(r"--[^\n]*")


def connection_env_var(conn_id: str) -> str:
    """The environment variable Airflow reads a connection from: ``AIRFLOW_CONN_<ID>``."""
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def warehouse_uri(conn_id: str, environ: Mapping[str, str] | None = None) -> str:
    """The ``postgresql://`` URI of Airflow connection ``conn_id``, from the environment.

    Raises:
        SchemaError: the variable is not set, or is not a PostgreSQL connection.
    """
    environ = os.environ if environ is None else environ
    name = connection_env_var(conn_id)
    value = environ.get(name)
    if not value:
        raise SchemaError(
            f"extract.source is postgres but {name} is not set: define the Airflow connection {conn_id!r} "
            f"or set {name}=postgresql://USER:PASSWORD@HOST:5432/DATABASE"
        )
    uri = _uri_from_json(json.loads(value)) if value.lstrip().startswith("{") else value
    scheme = urlsplit(uri).scheme
    if scheme not in ("postgres", "postgresql"):
        raise SchemaError(f"{name} must be a postgresql:// connection, got scheme {scheme!r}")
    return "postgresql" + uri[len(scheme) :]


def _uri_from_json(conn: dict[str, Any]) -> str:
    """Airflow's JSON connection form (``{"conn_type": "postgres", "host": ...}``) as a URI."""
    user = quote(str(conn.get("login") or ""), safe="")
    password = quote(str(conn.get("password") or ""), safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    port = f":{conn['port']}" if conn.get("port") else ""
    kind = "postgresql" if conn.get("conn_type") in ("postgres", "postgresql") else str(conn.get("conn_type"))
    return f"{kind}://{auth}{conn.get('host') or ''}{port}/{conn.get('schema') or ''}"


def positional(sql: str, params: Mapping[str, object]) -> tuple[str, list[object]]:
    """``sql`` with its ``$name`` placeholders as PostgreSQL's ``$1, $2, ...``, and the values in that order.

    Comments are dropped first, so a name a comment mentions never becomes a parameter.

    Raises:
        SchemaError: the SQL names a parameter ``params`` does not give.
    """
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            raise SchemaError(f"SQL parameter ${name} has no value (given: {sorted(params)})")
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    text = _PARAMETER.sub(number, _COMMENT.sub("", sql))
    return text, [params[name] for name in order]


class Warehouse:
    """One read-only session on the warehouse, for the raw relations of one extraction.

    Args:
        uri: ``postgresql://`` URI.
        schema: the schema holding ``raw_catalog_items`` and ``raw_impressions``.
        loads: (first, last) ``ds`` of the impression loads the run reads, inclusive.
    """

    def __init__(self, uri: str, schema: str, loads: tuple[str, str]) -> None:
        import adbc_driver_postgresql.dbapi as postgresql

        self.where = urlsplit(uri).hostname or "localhost"
        self.schema = schema
        self.loads = loads
        try:
            self._connection = postgresql.connect(uri)
        except postgresql.Error as exc:
            raise StorageUnavailable(f"warehouse {self.where} unavailable: {_first_line(exc)}") from exc

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _relations(self) -> str:
        schema = _identifier(self.schema)
        return (
            f"WITH raw_catalog_items AS (SELECT * FROM {schema}.raw_catalog_items), "
            f"raw_impressions AS (SELECT * FROM {schema}.raw_impressions "
            "WHERE ds >= CAST($first_load AS DATE) AND ds <= CAST($last_load AS DATE))\n"
        )

    def query(self, name: str, sql: str, params: Mapping[str, object]) -> pa.Table:
        """Run one ``sql/`` file's query with ``params`` bound; the result as an Arrow table.

        Raises:
            SchemaError: the warehouse refused the query (a relation or column missing, a type
                mismatch), with the file named.
            StorageUnavailable: the connection broke.
        """
        import adbc_driver_postgresql.dbapi as postgresql

        bound = {**params, "first_load": self.loads[0], "last_load": self.loads[1]}
        text, values = positional(self._relations() + sql, bound)
        try:
            with self._connection.cursor() as cursor:
                cursor.execute(text, values)
                result = cursor.fetch_arrow_table()
        except postgresql.OperationalError as exc:
            raise StorageUnavailable(f"warehouse {self.where} unavailable: {_first_line(exc)}") from exc
        except postgresql.Error as exc:
            raise SchemaError(
                f"warehouse query sql/{name}.sql failed on {self.where} (schema {self.schema}): {_first_line(exc)}"
            ) from exc
        finally:
            self._connection.rollback()  # read-only: end the transaction the query opened
        return _without_metadata(result)

    def first_load(self) -> str | None:
        """The first ``ds`` of ``raw_impressions`` (None when it is empty): when the logs began."""
        with self._connection.cursor() as cursor:
            cursor.execute(f"SELECT CAST(min(ds) AS TEXT) FROM {_identifier(self.schema)}.raw_impressions")
            row = cursor.fetchone()
        self._connection.rollback()
        return None if row is None or row[0] is None else str(row[0])


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _without_metadata(table: pa.Table) -> pa.Table:
    """Drop ADBC's per-field ``POSTGRESQL:type`` metadata, so results compare equal to DuckDB's."""
    fields = [pa.field(f.name, _plain(f.type), f.nullable) for f in table.schema]
    return table.cast(pa.schema(fields))


def _plain(type_: pa.DataType) -> pa.DataType:
    if pa.types.is_list(type_):
        return pa.list_(_plain(type_.value_type))
    return type_
