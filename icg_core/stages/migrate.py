"""One-time migration of a root's tables to object keys relative to the root (docs/operations.md, "Moving a root").

Tables written before keys became relative hold absolute URIs (``file:///old/path/raw/images/...``),
which break when the root is copied, moved or restored elsewhere. :func:`migrate_keys` rewrites every
committed partition of every table with object columns, turning each absolute URI into its key, and
commits it the way it was committed (a day's tables together). It is idempotent: a second run finds
nothing to change. Run it on the root as it is now, after the copy or move.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pyarrow as pa

from icg_core import layout
from icg_core.data.schemas import OBJECT_COLUMNS
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class MigrationSummary:
    """What a migration changed (or, dry, would change)."""

    root: str
    dry_run: bool
    partitions_checked: int = 0
    partitions_rewritten: list[str] = field(default_factory=list)  # "<area>/<table>/ds=<ds>"
    values_rewritten: int = 0


def _relative(store: ObjectStore, table: pa.Table, table_name: str) -> tuple[pa.Table, int]:
    """``table`` with every absolute URI in its object columns turned into a key; and how many changed.

    A published ``cover_url`` that names the storage (no public base URL was configured) is pointed at
    this root; one behind a public base URL (``http(s)://``) is left as it is.
    """
    changed = 0
    for column in OBJECT_COLUMNS.get(table_name, ()):
        values = table.column(column).to_pylist()
        keys = [layout.key_in_moved_root(v) if v is not None and "://" in v else v for v in values]
        changed += sum(a != b for a, b in zip(values, keys, strict=True))
        table = table.set_column(table.schema.get_field_index(column), column, pa.array(keys, pa.string()))
    if "cover_url" in table.column_names:
        urls = table.column("cover_url").to_pylist()
        fresh = [
            store.uri(key) if url is not None and not url.startswith(("https://", "http://")) else url
            for url, key in zip(urls, table.column("cover_uri").to_pylist(), strict=True)
        ]
        changed += sum(a != b for a, b in zip(urls, fresh, strict=True))
        table = table.set_column(
            table.schema.get_field_index("cover_url"), "cover_url", pa.array(fresh, pa.string())
        )
    return table, changed


def _whole_day(store: ObjectStore, area: str, ds: str, tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """``tables`` plus the day's other committed tables (those without object columns), unchanged."""
    marker = store.day_commit(area, ds) or {}
    others = {
        name: layout.Table(area, name).read(store, ds)
        for name in marker.get("tables", {})
        if name not in tables
    }
    return {**others, **tables}


def migrate_keys(store: ObjectStore, *, dry_run: bool = False) -> MigrationSummary:
    """Rewrite absolute object URIs in every committed table of ``store`` as keys relative to its root."""
    summary = MigrationSummary(store.root, dry_run)
    days: dict[tuple[str, str], dict[str, pa.Table]] = {}  # (area, ds) -> the day's tables, for day areas
    for handle in layout.OBJECT_TABLES:
        for ds in handle.days(store):
            summary.partitions_checked += 1
            table, changed = _relative(store, handle.read(store, ds), handle.name)
            if handle.area in layout.DAYS:
                days.setdefault((handle.area, ds), {})[handle.name] = table
            if not changed:
                continue
            summary.values_rewritten += changed
            summary.partitions_rewritten.append(handle.prefix(ds))
            if not dry_run and handle.area not in layout.DAYS:
                handle.write(store, table, ds)
    rewritten = set(summary.partitions_rewritten)
    for (area, ds), tables in days.items():
        if dry_run or not any(layout.Table(area, name).prefix(ds) in rewritten for name in tables):
            continue
        marker = store.day_commit(area, ds)
        meta = (marker or {}).get("meta", {})
        if marker is None:  # a day from before day commits: its tables move together from now on
            log.info("migrate: %s/ds=%s becomes a day commit", area, ds)
        layout.DAYS[area].write(store, _whole_day(store, area, ds, tables), ds, meta)
    log.info(
        "migrate: root=%s partitions=%d rewritten=%d values=%d dry_run=%s",
        store.root,
        summary.partitions_checked,
        len(summary.partitions_rewritten),
        summary.values_rewritten,
        dry_run,
    )
    return summary
