"""Generate on Ray vs a plain in-process loop; VLM calls vs segments; a nightly rerun with 5% changed items.

Usage (on a root with a validated day, a generator, features, segments and reward models)::

    python benchmarks/bench_ray_generate.py --root /path/to/root --ds 2026-11-15 --items 24

1. throughput: the same bundle, batch size and steps over ``--items`` items x every segment, all
   covers regenerated (``force``): in-process (the :class:`icg_core.stages.generate.CoverWriter` loop, model
   load timed apart), Ray with one actor (same compute as the loop), Ray with the default pool.
   Start-up is reported apart on both sides (in-process: model load; Ray: ``ray.init`` and the
   actors' model load); ``ratio_vs_in_process`` compares steady covers/s, ``ratio_end_to_end``
   compares covers over the whole time including start-up.
4. memory: peak RSS of the driver and of the actors for two catalog sizes (``--memory-items``).
2. VLM calls for 1, 4 and 8 segments: days with K segments, features cache emptied for them, the
   features stage then generate: encoder items = items whatever K, generate's encoder calls = 0.
3. nightly: the next day with 5% of the items' titles changed: features encode only those, and
   generate regenerates only their covers (the rest copied).

Writes days after ``--ds`` into the root (scratch days; use a copy of a world). Prints one JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time

import pyarrow as pa
import pyarrow.compute as pc

from icg_core import layout
from icg_core.config import load_config
from icg_core.stages.generate import generate_covers, plan_generation, read_catalog_items
from icg_core.storage import ObjectStore
from pipelines.features import run_features
from pipelines.generate import run_generate


def scratch_day(
    store: ObjectStore,
    ds: str,
    offset: int,
    *,
    segments: int | None = None,
    changed: dict[str, str] | None = None,
) -> str:
    """Copy ``ds``'s validated catalog (titles optionally changed) and segments (optionally the first K) to ds + offset."""
    day = (dt.date.fromisoformat(ds) + dt.timedelta(days=offset)).isoformat()
    catalog = layout.CATALOG.read(store, ds)
    titles = [
        (changed or {}).get(i, t)
        for i, t in zip(catalog["item_id"].to_pylist(), catalog["title"].to_pylist(), strict=True)
    ]
    catalog = catalog.set_column(
        catalog.schema.get_field_index("title"), "title", pa.array(titles, pa.string())
    )
    layout.CATALOG.write(store, catalog, day)
    centroids = layout.SEGMENT_CENTROIDS.read(store, ds).sort_by("segment_id")
    if segments is not None:
        centroids = centroids.slice(0, segments)
    layout.SEGMENT_CENTROIDS.write(store, centroids, day)
    users = layout.USER_SEGMENTS.read(store, ds)
    keep = pa.array(centroids["segment_id"].to_pylist(), pa.int32())
    layout.USER_SEGMENTS.write(store, users.filter(pc.is_in(users["segment_id"], keep)), day)
    return day


def throughput(store: ObjectStore, cfg, ds: str, items: int) -> dict:
    from icg_core.models.bundle import load_bundle
    from icg_core.runtime import torch_threads
    from icg_core.stages.generate import CoverWriter, load_plan_rewards, request_batches, stage_manifest

    plan = plan_generation(store, cfg, ds, items_limit=items)
    with torch_threads(cfg.models.cpu_threads):
        started = time.perf_counter()
        bundle = load_bundle(store, cfg.models, plan.generator_version)
        writer = CoverWriter(
            store, bundle, load_plan_rewards(store, plan, bundle.covers.image_size), plan, force=True
        )
        loaded = time.perf_counter()
        batches = request_batches(plan, cfg.generate.batch_size)
        stage_manifest(store, plan, (writer.write(batch) for batch in batches))
        done = time.perf_counter()
    loop = {
        "covers": plan.rows,
        "load_seconds": round(loaded - started, 2),
        "seconds": round(done - loaded, 2),
    }
    loop["covers_per_second"] = round(plan.rows / (done - loaded), 3)
    out = {"in_process": loop}
    for name, actors in (("ray_1_actor", 1), ("ray_pool", None)):
        gen = cfg.generate.model_copy(update={"actors": actors})
        summary = run_generate(
            store, cfg.model_copy(update={"generate": gen}), ds, items_limit=items, force=True
        )
        extra = summary["extra"]
        out[name] = {
            "covers": summary["rows"],
            "actors": extra["actors"],
            "seconds": extra["ray_seconds"],
            "covers_per_second": extra["covers_per_second"],
            "steady_covers_per_second": extra["steady_covers_per_second"],
            "actor_startup_seconds": extra["actor_startup_seconds"],
            "ray_init_seconds": extra["ray_init_seconds"],
            "driver_peak_rss_mb": extra["driver_peak_rss_mb"],
            "actor_peak_rss_mb": extra["actor_peak_rss_mb"],
        }
        out[name]["ratio_vs_in_process"] = round(
            extra["steady_covers_per_second"] / loop["covers_per_second"], 3
        )
        loop_total = loop["load_seconds"] + loop["seconds"]
        ray_total = extra["ray_init_seconds"] + extra["ray_seconds"]
        out[name]["ratio_end_to_end"] = round(loop_total / ray_total, 3)
    return out


def vlm_calls(store: ObjectStore, cfg, ds: str, items: int) -> dict:
    out = {}
    for offset, segments in ((11, 1), (12, 4), (13, 8)):
        day = scratch_day(store, ds, offset, segments=segments)
        plan_version = run_features(store, cfg, day, items_limit=items)["encoder_version"]
        # Empty the cache of exactly these items, so the features stage must encode them again.
        for row in layout.ITEM_FEATURES.read(store, day).to_pylist():
            store.delete(store.key(row["features_uri"]))
        features = run_features(store, cfg, day, items_limit=items)
        covers = generate_covers(store, cfg, day, items_limit=items, force=True)
        out[f"segments_{segments}"] = {
            "segments": covers.segments,
            "covers": covers.rows,
            "vlm_items_encoded": features["encoded"],
            "vlm_forward_calls": features["forward_calls"],
            "generate_encoder_calls": covers.encoder_calls,
            "encoder_version": plan_version,
        }
    return out


def nightly(store: ObjectStore, cfg, ds: str, items: int) -> dict:
    ids = read_catalog_items(store, ds, items)["item_id"].to_pylist()
    changed = {item: f"changed title {i}" for i, item in enumerate(ids[:: max(1, round(1 / 0.05))])}
    base = scratch_day(store, ds, 20)
    run_features(store, cfg, base, items_limit=items)
    first = run_generate(store, cfg, base, items_limit=items)
    day = scratch_day(store, ds, 21, changed=changed)
    features = run_features(store, cfg, day, items_limit=items)
    rerun = run_generate(store, cfg, day, items_limit=items)
    return {
        "items": len(ids),
        "changed_items": len(changed),
        "first_night": {"generated": first["generated"], "copied": first["copied"]},
        "vlm_items_encoded": features["encoded"],
        "rerun": {k: rerun[k] for k in ("rows", "generated", "copied", "kept")},
        "rerun_seconds": rerun["seconds"],
        "first_seconds": first["seconds"],
    }


def memory(store: ObjectStore, cfg, ds: str, sizes: list[int]) -> dict:
    """Peak RSS of driver and actors for each catalog size (fresh Ray each time, all covers regenerated)."""
    out = {}
    for items in sizes:
        summary = run_generate(store, cfg, ds, items_limit=items, force=True)
        extra = summary["extra"]
        out[f"items_{items}"] = {
            "covers": summary["rows"],
            "driver_peak_rss_mb": extra["driver_peak_rss_mb"],
            "actor_peak_rss_mb": extra["actor_peak_rss_mb"],
            "seconds": extra["ray_seconds"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--ds", required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--items", type=int, default=24, help="items for the throughput runs")
    parser.add_argument("--vlm-items", type=int, default=8, help="items for the VLM-count runs")
    parser.add_argument("--nightly-items", type=int, default=40, help="items for the nightly rerun")
    parser.add_argument("--memory-items", type=int, nargs=2, default=[30, 300], help="two catalog sizes")
    parser.add_argument("--only", choices=["throughput", "vlm", "nightly", "memory"], action="append")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config, root=args.root)
    store = ObjectStore.from_config(cfg.storage)
    parts = args.only or ["throughput", "vlm", "nightly", "memory"]
    result = {
        "root": store.root,
        "ds": args.ds,
        "batch_size": cfg.generate.batch_size,
        "steps": cfg.models.sample_steps,
    }
    if "throughput" in parts:
        result["throughput"] = throughput(store, cfg, args.ds, args.items)
    if "vlm" in parts:
        result["vlm_calls"] = vlm_calls(store, cfg, args.ds, args.vlm_items)
    if "nightly" in parts:
        result["nightly"] = nightly(store, cfg, args.ds, args.nightly_items)
    if "memory" in parts:
        result["memory"] = memory(store, cfg, args.ds, args.memory_items)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
