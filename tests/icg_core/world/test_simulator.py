"""The simulator writes the raw tables and images of a seeded world, deterministically and idempotently."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from icg_core import layout
from icg_core.config import WorldConfig
from icg_core.data.schemas import TABLES
from icg_core.storage import ObjectStore
from icg_core.world import drawing
from icg_core.world.simulator import (
    CATEGORIES,
    WorldSummary,
    check_world,
    generate_world,
)

SMALL = WorldConfig(
    seed=3,
    n_items=24,
    n_users=50,
    days=2,
    impressions_per_day=200,
    image_size=64,
    variants_per_item=4,
    daily_title_update_fraction=0.2,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[ObjectStore, WorldSummary]:
    store = ObjectStore(str(tmp_path_factory.mktemp("world")))
    return store, generate_world(store, SMALL)


def _table_rows(store: ObjectStore, table: str) -> dict[str, list[dict]]:
    """Every partition's rows, with URIs made relative to the root (so two roots compare equal)."""
    out = {}
    for ds in store.partitions(table, area="raw"):
        rows = store.read_table(table, ds=ds, area="raw").to_pylist()
        for row in rows:
            for column in ("reference_image_uri", "cover_uri"):
                if column in row:
                    row[column] = store.key(row[column])
        out[ds] = rows
    return out


def _image_bytes(store: ObjectStore) -> dict[str, bytes]:
    return {key: store.get_bytes(key) for key in store.list("raw/images")}


def test_summary_and_partitions_match_config(world: tuple[ObjectStore, WorldSummary]) -> None:
    store, summary = world
    start = SMALL.start_date
    assert summary.ds_list == [start.isoformat(), (start + dt.timedelta(days=1)).isoformat()]
    assert summary.first_nightly_ds == (start + dt.timedelta(days=SMALL.days)).isoformat()
    assert store.partitions("impressions", area="raw") == summary.ds_list
    assert store.partitions("catalog_items", area="raw") == summary.ds_list
    assert summary.n_images == SMALL.n_items * (1 + SMALL.variants_per_item)
    assert 0.0 < summary.mean_ctr < 1.0
    assert json.loads(json.dumps(summary.to_dict()))["table_rows"] == summary.table_rows
    impressions = store.read_tables("impressions", dss=summary.ds_list, area="raw")
    assert impressions.num_rows == summary.table_rows["impressions"]
    for ds in summary.ds_list:
        n = store.read_table("impressions", ds=ds, area="raw").num_rows
        assert abs(n - SMALL.impressions_per_day) < 5 * np.sqrt(SMALL.impressions_per_day)  # Poisson per day


def test_tables_conform_to_contracts(world: tuple[ObjectStore, WorldSummary]) -> None:
    store, summary = world
    for table in ("catalog_items", "impressions"):
        for ds in summary.ds_list:
            read = store.read_table(table, ds=ds, area="raw")
            assert read.schema.equals(TABLES[table]), table


def test_catalog_day_zero_has_every_item(world: tuple[ObjectStore, WorldSummary]) -> None:
    store, summary = world
    catalog = store.read_table("catalog_items", ds=summary.ds_list[0], area="raw").to_pylist()
    start = dt.datetime.combine(SMALL.start_date, dt.time(), tzinfo=dt.UTC)
    assert sorted(r["item_id"] for r in catalog) == [f"item_{i:05d}" for i in range(SMALL.n_items)]
    assert {r["category"] for r in catalog} == set(CATEGORIES[: SMALL.n_categories])  # every category used
    for row in catalog:
        assert start - dt.timedelta(days=1) <= row["updated_at"] < start
        words = row["title"].split()
        assert 2 <= len(words) <= 4 and all(w[0].isupper() for w in words), row["title"]
        assert store.exists(store.key(row["reference_image_uri"]))


def test_later_days_hold_only_title_changes(world: tuple[ObjectStore, WorldSummary]) -> None:
    store, summary = world
    day0 = {
        r["item_id"]: r
        for r in store.read_table("catalog_items", ds=summary.ds_list[0], area="raw").to_pylist()
    }
    changes = store.read_table("catalog_items", ds=summary.ds_list[1], area="raw").to_pylist()
    assert 0 < len(changes) < SMALL.n_items
    ds = dt.datetime.combine(dt.date.fromisoformat(summary.ds_list[1]), dt.time(), tzinfo=dt.UTC)
    for row in changes:
        before = day0[row["item_id"]]
        assert row["title"] != before["title"]
        assert row["category"] == before["category"]
        assert row["reference_image_uri"] == before["reference_image_uri"]
        assert ds - dt.timedelta(days=1) <= row["updated_at"] < ds  # snapshot "as of ds" includes it


def test_impressions_reference_shown_variants(world: tuple[ObjectStore, WorldSummary]) -> None:
    store, summary = world
    for ds in summary.ds_list:
        rows = store.read_table("impressions", ds=ds, area="raw").to_pylist()
        day = dt.datetime.combine(dt.date.fromisoformat(ds), dt.time(), tzinfo=dt.UTC)
        shown = [r["shown_at"] for r in rows]
        assert shown == sorted(shown) and day <= shown[0] and shown[-1] < day + dt.timedelta(days=1)
        for row in rows[:50]:
            key = store.key(row["cover_uri"])
            assert key.startswith(f"{layout.variant_images()}/{row['item_id']}/") and store.exists(key)
            assert 0 <= int(row["user_id"].split("_")[1]) < SMALL.n_users


def test_images_decode_at_image_size(world: tuple[ObjectStore, WorldSummary]) -> None:
    store, _ = world
    references = store.list(layout.reference_images())
    variants = store.list(layout.variant_images())
    assert len(references) == SMALL.n_items
    assert len(variants) == SMALL.n_items * SMALL.variants_per_item
    for key in references[:3] + variants[:6]:
        assert drawing.decode_png(store.get_bytes(key)).shape == (SMALL.image_size, SMALL.image_size, 3)


def test_variants_jitter_every_attribute_both_ways(world: tuple[ObjectStore, WorldSummary]) -> None:
    store, _ = world
    deltas = []
    for item in [f"item_{i:05d}" for i in range(SMALL.n_items)]:
        reference = drawing.decode_png(store.get_bytes(layout.reference_image(item)))[None]
        variants = np.stack(
            [
                drawing.decode_png(store.get_bytes(layout.variant_image(item, k)))
                for k in range(SMALL.variants_per_item)
            ]
        )
        deltas.append(drawing.image_attributes(variants) - drawing.image_attributes(reference))
    deltas = np.concatenate(deltas)
    assert (deltas.max(axis=0) > 0).all() and (deltas.min(axis=0) < 0).all()


def test_same_seed_same_world_and_other_seed_differs(
    world: tuple[ObjectStore, WorldSummary], tmp_path: Path
) -> None:
    store, _ = world
    twin = ObjectStore(str(tmp_path / "twin"))
    generate_world(twin, SMALL)
    for table in ("catalog_items", "impressions"):
        assert _table_rows(twin, table) == _table_rows(store, table)
    assert _image_bytes(twin) == _image_bytes(store)
    for key in store.list("oracle"):
        assert twin.get_bytes(key) == store.get_bytes(key), key

    other = ObjectStore(str(tmp_path / "other"))
    generate_world(other, SMALL.model_copy(update={"seed": SMALL.seed + 1}))
    assert _table_rows(other, "impressions") != _table_rows(store, "impressions")
    assert _table_rows(other, "catalog_items") != _table_rows(store, "catalog_items")
    other_images = _image_bytes(other)
    assert other_images.keys() == _image_bytes(store).keys()
    assert all(
        other_images[k] != v
        for k, v in _image_bytes(store).items()
        if k.startswith(layout.reference_images())
    )


def test_rerun_replaces_and_removes_leftovers(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path))
    config = SMALL.model_copy(update={"n_items": 12, "days": 3, "impressions_per_day": 50})
    first = generate_world(store, config)
    before = _table_rows(store, "impressions")
    again = generate_world(store, config)
    assert _table_rows(store, "impressions") == before
    assert again.table_rows == first.table_rows
    for ds in first.ds_list:
        assert len(store.committed_files("impressions", ds=ds, area="raw")) == 1
        parquet = [k for k in store.list(f"raw/impressions/ds={ds}") if k.endswith(".parquet")]
        assert len(parquet) == 1  # replaced, not duplicated

    smaller = generate_world(store, config.model_copy(update={"n_items": 8, "days": 2}))
    assert store.partitions("impressions", area="raw") == smaller.ds_list
    assert store.partitions("catalog_items", area="raw") == smaller.ds_list
    assert len(store.list(layout.reference_images())) == 8
    assert len(store.list(layout.variant_images())) == 8 * config.variants_per_item
    assert smaller.removed_stale["partitions"] == 2 and smaller.removed_stale["images"] == 4 * (1 + 4)


@pytest.mark.parametrize(
    ("update", "knob"),
    [
        ({"n_categories": len(drawing.MOTIFS) + 1}, "n_categories"),
        ({"n_taste_groups": 1}, "n_taste_groups"),
        ({"image_size": 16}, "image_size"),
        ({"click_noise": 1.5}, "click_noise"),
    ],
)
def test_invalid_config_is_refused_naming_the_knob(update: dict, knob: str) -> None:
    with pytest.raises(ValueError, match=knob):
        check_world(SMALL.model_copy(update=update))
