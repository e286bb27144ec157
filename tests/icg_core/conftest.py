"""Shared fixtures for the extraction and validation tests: a tiny raw day built with pyarrow + Pillow."""

from __future__ import annotations

import datetime as dt
import io
import struct
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from icg_core.config import ICGConfig
from icg_core.data.schemas import OPTIONAL_COLUMNS, TABLES
from icg_core.storage import ObjectStore

RUN_DS = "2026-11-15"  # the nightly run under test; lookback 14 -> impressions in [2026-11-01, 2026-11-15)
WINDOW_DAYS = 14  # the default lookback


def utc(day: str, hour: int = 0, minute: int = 0, second: int = 0, microsecond: int = 0) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(
        hour=hour, minute=minute, second=second, microsecond=microsecond, tzinfo=dt.UTC
    )


def png_bytes(size: tuple[int, int] = (32, 32), color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (IHDR patched, CRC fixed): a bomb that allocates nothing."""
    data = png_bytes((16, 16))
    assert data[12:16] == b"IHDR"
    body = struct.pack(">II", width, height) + data[24:29]
    return data[:16] + body + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + data[33:]


def table_of(table_name: str, rows: list[dict]) -> pa.Table:
    """``rows`` as a table of the contract's types (plus any optional columns the rows carry)."""
    schema = TABLES[table_name]
    for name, type_ in OPTIONAL_COLUMNS.get(table_name, {}).items():
        if any(name in row for row in rows):
            schema = schema.append(pa.field(name, type_))
    return pa.Table.from_pylist(rows, schema=schema)


class RawDay:
    """Builds raw partitions, image objects and staging partitions for one run date in one store."""

    ds = RUN_DS

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.cfg = ICGConfig()

    def image(self, name: str, data: bytes | None = None) -> str:
        return self.store.put_bytes(f"raw/images/test/{name}.png", png_bytes() if data is None else data)

    def item(
        self, item_id: str, *, title: str | None = None, updated_at: dt.datetime | None = None, **extra
    ) -> dict:
        return {
            "item_id": item_id,
            "title": f"Title of {item_id}" if title is None else title,
            "category": "books",
            "reference_image_uri": self.image(f"ref-{item_id}"),
            "updated_at": updated_at or utc("2026-10-20", 9),
            **extra,
        }

    def impression(self, user_id: str, item_id: str, shown_at: dt.datetime, *, clicked: bool = False) -> dict:
        return {
            "user_id": user_id,
            "item_id": item_id,
            "cover_uri": self.image(f"cover-{item_id}"),
            "shown_at": shown_at,
            "clicked": clicked,
        }

    def write_raw(self, table_name: str, rows: list[dict], ds: str) -> None:
        self.store.write_table(table_name, table_of(table_name, rows), ds=ds, area="raw")

    def write_staging(self, table_name: str, rows: list[dict]) -> None:
        """Replace one table of the extracted day (as a faulty extraction would have written it)."""
        marker = self.store.day_commit("staging/extract", self.ds)
        assert marker is not None, "extract the day first"
        tables = {
            name: self.store.read_table(name, ds=self.ds, area="staging/extract") for name in marker["tables"]
        }
        tables[table_name] = table_of(table_name, rows)
        self.store.write_day(tables, ds=self.ds, area="staging/extract", meta=marker["meta"])

    def write_uncontracted(self, area: str, table_name: str, table: pa.Table, ds: str | None = None) -> None:
        """Commit a partition the way a foreign writer could, bypassing the contract check."""
        ds = ds or self.ds
        prefix = self.store.partition_prefix(area, table_name, ds)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.store.put_bytes(f"{prefix}/part-foreign.parquet", buf.getvalue())
        entry = {"files": ["part-foreign.parquet"], "rows": table.num_rows}
        marker = self.store.day_commit(area, ds)
        if marker is None:
            self.store.put_json(f"{prefix}/_SUCCESS", entry)
        else:  # a table of a day commit: point the day's marker at the foreign file
            marker["tables"][table_name] = entry
            self.store.put_json(self.store.day_marker(area, ds), marker)

    def populate(self) -> None:
        """A small valid world: 3 items (one retitled), 6 impressions on every day of the window."""
        self.write_raw("catalog_items", [self.item("i1"), self.item("i2"), self.item("i3")], ds="2026-10-20")
        self.write_raw(
            "catalog_items",
            [self.item("i2", title="Retitled i2", updated_at=utc("2026-11-10", 8))],
            ds="2026-11-10",
        )
        pairs = (("u1", "u2"), ("u2", "u3"), ("u1", "u3"))
        for n in range(WINDOW_DAYS):
            day = (dt.date(2026, 11, 1) + dt.timedelta(days=n)).isoformat()
            rows = [
                self.impression(user, item, utc(day, 12, minute), clicked=minute % 2 == 0)
                for minute, (user, item) in enumerate(
                    (u, i) for u in pairs[n % 3] for i in ("i1", "i2", "i3")
                )
            ]
            self.write_raw("impressions", rows, ds=day)

    def validated_keys(self) -> list[str]:
        return [k for k in self.store.list("validated") if f"/ds={self.ds}/" in k]


@pytest.fixture
def raw_day_store(tmp_path) -> RawDay:
    """An empty store under ``tmp_path`` with helpers to build the raw day of :data:`RUN_DS`."""
    return RawDay(ObjectStore(str(tmp_path)))
