"""Covers without Ray: inputs checked up front, one cover per (item, segment), reuse by fingerprint.

:func:`build_tiny_world` (also used by tests/pipelines/test_features_generate.py) makes a complete
tiny day: world, validated tables, a tiny stage-1 generator, item features, segments, rewards.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from icg_core import layout
from icg_core.config import ICGConfig
from icg_core.stages.generate import (
    MANIFEST_SCHEMA,
    GenerateInputError,
    Sampling,
    cover_fingerprint,
    generate_covers,
    plan_generation,
    requests,
    stage_manifest,
)
from icg_core.storage import ObjectStore, StorageError
from tests.tiny import prepare_tiny_day, tiny_settings

# Ten items and three segments: enough rows for batching and reuse, quick to generate.
COVERS = {
    "world": {"n_items": 10, "days": 3},
    "stage1": {"vae_steps": 1},
    "users": {"n_segments": 3, "bpr_epochs": 1, "kmeans_restarts": 1},
    "rewards": {"relevance": {"epochs": 1}, "preference": {"epochs": 1}},
}


def tiny_config(store: ObjectStore, cache_dir: Path, **generate: object) -> ICGConfig:
    settings = tiny_settings(
        **COVERS,
        storage={"root": store.root, "s3_endpoint_url": store.s3_endpoint_url},
        models={"cache_dir": str(cache_dir)},
        generate=generate,
    )
    return ICGConfig.model_validate(settings)


def build_tiny_world(store: ObjectStore, cache_dir: Path) -> tuple[ObjectStore, ICGConfig, str]:
    """A tiny validated day with a stage-1 generator, features, segments and the three rewards."""
    cfg = tiny_config(store, cache_dir)
    return store, cfg, prepare_tiny_day(store, cfg)


def next_day(store: ObjectStore, ds: str, changed_titles: dict[str, str] | None = None) -> str:
    """Copy ``ds``'s catalog (with some titles changed) and segments to the following day; returns it."""
    day = (dt.date.fromisoformat(ds) + dt.timedelta(days=1)).isoformat()
    catalog = store.read_table("catalog_items", ds=ds, area="validated")
    titles = [
        (changed_titles or {}).get(i, t)
        for i, t in zip(catalog["item_id"].to_pylist(), catalog["title"].to_pylist(), strict=True)
    ]
    catalog = catalog.set_column(
        catalog.schema.get_field_index("title"), "title", pa.array(titles, pa.string())
    )
    store.write_table("catalog_items", catalog, ds=day, area="validated")
    for table in ("segment_centroids", "user_segments"):
        store.write_table(table, store.read_table(table, ds=ds, area="users"), ds=day, area="users")
    return day


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[ObjectStore, ICGConfig, str]:
    root = tmp_path_factory.mktemp("covers-world")
    return build_tiny_world(ObjectStore(str(root / "root")), root / "cache")


def test_fingerprint_changes_with_every_input() -> None:
    sampling = Sampling(2, 3.0, "ddim")
    centroid = np.ones(8, np.float32)
    base = cover_fingerprint("h", "v1", centroid, sampling)
    assert base == cover_fingerprint("h", "v1", centroid.copy(), sampling)
    others = [
        cover_fingerprint("h2", "v1", centroid, sampling),
        cover_fingerprint("h", "v2", centroid, sampling),
        cover_fingerprint("h", "v1", centroid * 2, sampling),
        cover_fingerprint("h", "v1", centroid, Sampling(3, 3.0, "ddim")),
    ]
    assert base not in others and len(set(others)) == len(others)


@pytest.mark.slow
def test_covers_once_per_item_segment_then_reused_and_only_changed_items_regenerated(world) -> None:
    from icg_core.models.bundle import load_bundle
    from icg_core.serving.features import compute_item_features  # the features stage's core, without Ray

    store, cfg, ds = world
    first = generate_covers(store, cfg, ds)
    n_items, n_segments = first.items, first.segments
    assert first.rows == first.generated == n_items * n_segments and first.encoder_calls == 0
    manifest = layout.STAGED_COVERS.read(store, ds)
    assert manifest.num_rows == n_items * n_segments
    assert (
        len(set(zip(manifest["item_id"].to_pylist(), manifest["segment_id"].to_pylist(), strict=True)))
        == manifest.num_rows
    )
    for column in ("reward_aesthetic", "reward_relevance", "reward_preference"):
        assert pc.all(pc.is_finite(manifest[column])).as_py()
    row = manifest.slice(0, 1).to_pylist()[0]
    assert row["cover_uri"].startswith(f"covers/ds={ds}/segment=") and store.exists(row["cover_uri"])
    covers_before = {k: store.get_bytes(k) for k in store.list(f"covers/ds={ds}") if k.endswith(".png")}
    assert set(manifest["cover_uri"].to_pylist()) == set(covers_before)

    again = generate_covers(store, cfg, ds)  # a rerun: everything kept, same bytes
    assert (again.generated, again.kept) == (0, n_items * n_segments)
    assert {k: store.get_bytes(k) for k in covers_before} == covers_before

    # A regenerate that draws other pixels (another guidance scale, from noise) writes new keys: the
    # images the first manifest points to (perhaps already published) are never overwritten.
    plan = plan_generation(store, cfg, ds)
    redraw = dataclasses.replace(plan.sampling, guidance_scale=9.0, strengths=(1.0,))
    other = dataclasses.replace(plan, sampling=redraw)
    redrawn = generate_covers(store, cfg, ds, plan=other)
    assert redrawn.generated == n_items * n_segments
    assert {k: store.get_bytes(k) for k in covers_before} == covers_before
    new_keys = set(layout.STAGED_COVERS.read(store, ds)["cover_uri"].to_pylist())
    assert new_keys.isdisjoint(covers_before) and all(store.exists(k) for k in new_keys)
    generate_covers(store, cfg, ds)  # back to the day's own plan: regenerated, same keys as at first

    # The next night: one title changed. Only its item is re-encoded and only its covers regenerated.
    changed = row["item_id"]
    day = next_day(store, ds, {changed: "a brand new title"})
    bundle = load_bundle(store, cfg.models)
    catalog = store.read_table("catalog_items", ds=day, area="validated")
    features = compute_item_features(bundle.encoder, catalog, store, ds=day)
    assert (features.computed, features.reused) == (1, n_items - 1)
    nightly = generate_covers(store, cfg, day)
    assert (nightly.generated, nightly.copied) == (n_segments, (n_items - 1) * n_segments)
    assert layout.STAGED_COVERS.read(store, day).num_rows == n_items * n_segments


def test_bad_inputs_fail_before_any_work(world, tmp_path: Path) -> None:
    store, cfg, ds = world
    with pytest.raises(GenerateInputError, match="no validated catalog"):
        plan_generation(store, cfg, "2030-01-01")
    with pytest.raises(GenerateInputError, match="empty"):
        plan_generation(store, cfg, ds, items_limit=0)
    with pytest.raises(GenerateInputError, match="does not exist"):
        plan_generation(store, cfg, ds, version="s1-nope")
    other = ObjectStore(str(tmp_path / "other"))
    other.write_table(
        "catalog_items", store.read_table("catalog_items", ds=ds, area="validated"), ds=ds, area="validated"
    )
    with pytest.raises(GenerateInputError, match="no segment table"):
        plan_generation(other, cfg, ds)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the root directory should be")
    with pytest.raises(StorageError, match="cannot write"):
        plan_generation(ObjectStore(str(blocked)), cfg, ds)
    assert not layout.STAGED_COVERS.exists(store, "2030-01-01")


def test_a_manifest_with_lost_repeated_or_foreign_rows_is_not_committed(world) -> None:
    # The rows stream to the staged manifest; only counters are kept, and they must add up to
    # items x segments once each before anything is committed.
    store, cfg, ds = world
    plan = plan_generation(store, cfg, ds)
    day = "2030-02-01"  # a day of its own: the other tests' manifests stay as they are
    plan = dataclasses.replace(plan, ds=day)
    n = plan.rows
    given = {
        "item_id": requests(plan).column("item_id"),
        "segment_id": requests(plan).column("segment_id"),
        "cover_uri": pa.array([f"covers/x{i}.png" for i in range(n)]),
        "status": pa.array(["generated"] * n),
        "source": pa.array(["personalized"] * (n - 1) + ["base"]),
    }
    rows = pa.table(
        {f.name: given.get(f.name, pa.nulls(n, f.type)) for f in MANIFEST_SCHEMA}, MANIFEST_SCHEMA
    )
    foreign = rows.slice(0, 1).set_column(1, "segment_id", pa.array([99], pa.int32()))
    bad = {
        "1 repeated": [rows, rows.slice(0, 1)],
        "1 (item, segment) missing": [rows.slice(1)],
        "1 outside the plan": [rows.slice(1), foreign],
    }
    for mention, batches in bad.items():
        with pytest.raises(StorageError, match=re.escape(mention) + ".*manifest not committed"):
            stage_manifest(store, plan, batches)
        assert not layout.STAGED_COVERS.exists(store, day)
    tally = stage_manifest(store, plan, [rows.slice(0, 2), rows.slice(2)])  # complete, in two batches
    assert (tally.rows, tally.fallbacks, tally.statuses) == (n, 1, {"generated": n})
    assert layout.STAGED_COVERS.read(store, day).num_rows == n


@pytest.mark.slow
def test_a_promotion_under_a_quarter_budget_reaches_every_cover_in_four_nights(world) -> None:
    """Each night draws at most a quarter of the covers, busiest items first; every manifest is complete."""
    store, cfg, ds = world
    old = generate_covers(store, cfg, ds).generator_version
    rows = layout.STAGED_COVERS.read(store, ds).num_rows
    # The promotion: the champion becomes another version (the same weights under a new name: other seeds).
    name = cfg.models.generator_name
    source, target = layout.model(name, old), layout.model(name, "s1-promoted")
    for key in sorted(store.list(source), key=lambda k: k.endswith("_SUCCESS")):
        store.put_bytes(target + key[len(source) :], store.get_bytes(key))
    layout.set_latest(store, name, "s1-promoted")
    budgeted = cfg.model_copy(
        update={"generate": cfg.generate.model_copy(update={"max_covers_per_night": rows // 4 + 1})}
    )

    day, promoted = ds, 0
    for _ in range(4):
        previous, day = day, next_day(store, day)
        layout.ITEM_FEATURES.write(store, layout.ITEM_FEATURES.read(store, previous), day)  # nothing changed
        summary = generate_covers(store, budgeted, day)
        manifest = layout.STAGED_COVERS.read(store, day).to_pylist()
        assert len(manifest) == rows and summary.generated <= rows // 4 + 1  # complete, within budget
        fresh = [r for r in manifest if r["generator_version"] == "s1-promoted"]
        carried = [r for r in manifest if r["generator_version"] == old]
        assert len(fresh) == min(rows, promoted + summary.generated) and len(fresh) + len(carried) == rows
        assert all(r["made_ds"] < day for r in carried)  # carried rows say the night they were drawn
        assert summary.refresh["carried"] == len(carried)
        promoted = len(fresh)
    assert promoted == rows  # converged in four nights
    layout.set_latest(store, name, old)  # the module's other tests use the stage-1 champion
