"""Stage features: the meta-token encoder over the day's catalog, on Ray Data, into the item-feature cache.

``python -m pipelines.features --root ROOT --ds DATE`` (or ``icg features``) reads the validated
catalog, streams it through a pool of actors that each load the generator's encoder once
(``generate.gpus_per_actor`` GPUs each, ``generate.gpu_dtype`` on GPU), and commits the
``item_features`` partition of ``ds`` (area ``features``). The cache itself is
:func:`icg_core.features.compute_item_features`: items whose (content hash, encoder version) is
already cached are not encoded again. Runs on local Ray, or on a cluster when ``RAY_ADDRESS`` is set.

The Ray helpers shared with the generate stage (pool size, block split, actor models) live here.
"""

from __future__ import annotations

import logging
import resource
import time
from typing import Annotated, Any

import pyarrow as pa
import typer

from icg_core.config import GenerateConfig, ICGConfig, ModelsConfig
from pipelines.runtime import ConfigOpt, DsOpt, JsonOpt, RootOpt, main, open_stage, print_summary

log = logging.getLogger(__name__)

ItemsLimitOpt = Annotated[
    int | None, typer.Option("--items-limit", min=1, help="Only the first N catalog items (by item_id).")
]
VersionOpt = Annotated[
    str | None, typer.Option("--version", help="Generator version (default generate.generator_version).")
]
BLOCKS_PER_ACTOR = 4  # input blocks per actor: enough to keep every actor busy and balance the tail
ACTOR_START_TIMEOUT_S = 600  # the pool waits for all its actors (models loaded) before taking work
# One batch queued per actor: batches take seconds, so a deeper queue only lets the first actor
# hoard the work of a small day while the others sit idle.
ACTOR_TASKS_IN_FLIGHT = 1


# ------------------------------------------------------------------ Ray helpers (shared with generate)
def actor_models(cfg: ICGConfig, gpus: float) -> ModelsConfig:
    """The models config an actor loads with: on a GPU actor, CUDA and ``generate.gpu_dtype``."""
    if gpus > 0:
        return cfg.models.model_copy(update={"device": "cuda", "dtype": cfg.generate.gpu_dtype})
    return cfg.models


def set_actor_threads(cfg: ICGConfig) -> None:
    """Torch intra-op threads of a model actor: ``models.cpu_threads``, else the CPUs Ray reserved for it."""
    import torch

    torch.set_num_threads(cfg.models.cpu_threads or max(1, int(cfg.generate.cpus_per_actor)))


def pool_size(gen: GenerateConfig, cluster_cpus: float, cluster_gpus: float, gpus: float, rows: int) -> int:
    """Actors in the pool: ``generate.actors``, else as many as the cluster's GPUs (or CPUs) hold; at most ``rows``."""
    if gen.actors:
        size = gen.actors
    elif gpus > 0:
        size = max(1, int(cluster_gpus // gpus))
    else:
        size = max(1, int(cluster_cpus // max(gen.cpus_per_actor, 1e-9)))
    return max(1, min(size, rows))


def split_blocks(table: pa.Table, blocks: int) -> list[pa.Table]:
    """``table`` cut into ``blocks`` contiguous slices (Ray Data gives each block to one task at a time)."""
    blocks = max(1, min(blocks, table.num_rows))
    step = -(-table.num_rows // blocks)
    return [table.slice(start, step) for start in range(0, table.num_rows, step)]


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB (Linux ru_maxrss is KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def start_actors_before_work() -> None:
    """Make actor pools wait until every actor has loaded its models before any batch is dispatched.

    Ray Data otherwise hands batches to the first actor that is ready; with models that take seconds
    to load, that one actor (one node) can finish a small day alone while the others still start.
    Actor locality is off too: blocks are a few rows of ids (actors read images and features from
    the store), and locality would send every block made by the driver to the driver's node.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    context.execution_options.actor_locality_enabled = False


def collect(dataset: Any) -> pa.Table:
    """Stream a Ray dataset's output batches into one table in the driver."""
    parts = [batch for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow")]
    return pa.concat_tables(parts) if parts else pa.table({})


# ------------------------------------------------------------------ the actor
class FeatureActor:
    """Loads the generator's encoder once; turns catalog batches into ``item_features`` rows."""

    def __init__(self, store: Any, cfg: ICGConfig, version: str, gpus: float) -> None:
        import ray

        from icg_core.models.bundle import load_bundle

        set_actor_threads(cfg)
        self.store = store
        self.batch_size = cfg.generate.features_batch_size
        self.encoder = load_bundle(store, actor_models(cfg, gpus), version).encoder
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        from icg_core.features import compute_item_features

        result = compute_item_features(self.encoder, batch, self.store, batch_size=self.batch_size)
        rows = result.table.num_rows
        # Batch-level counts ride on the batch's first row (0 elsewhere), so a column sum totals them.
        first = [1] + [0] * (rows - 1)
        return (
            result.table.append_column("encoded", pa.array([result.computed * f for f in first], pa.int64()))
            .append_column("forward_calls", pa.array([result.forward_calls * f for f in first], pa.int64()))
            .append_column("node_id", pa.array([self.node_id] * rows, pa.string()))
        )


# ------------------------------------------------------------------ the stage
def run_features(
    store: Any, cfg: ICGConfig, ds: str, *, items_limit: int | None = None, version: str | None = None
) -> dict[str, Any]:
    """Encode the day's catalog on Ray and commit ``item_features``; inputs are checked before Ray starts.

    Args:
        store: the object store.
        cfg: configuration (``generate`` section: pool, batch sizes, GPUs; ``models``: device, dtype).
        ds: the day.
        items_limit: only the first N items (by item_id).
        version: generator version whose encoder runs (default ``generate.generator_version``).

    Returns:
        The summary: items, encoded (VLM-encoded now), reused (from the cache), forward calls, nodes used.
    """
    import ray
    import ray.data

    from icg_core import layout
    from icg_core.covers import read_catalog_items, resolve_generator
    from pipelines.ray_runtime import gpus_per_actor, ray_session

    started = time.perf_counter()
    store.check_writable()
    catalog = read_catalog_items(store, ds, items_limit).select(["item_id", "title", "reference_image_uri"])
    generator_version, _ = resolve_generator(store, cfg.models, version or cfg.generate.generator_version)
    with ray_session() as session:
        gpus = gpus_per_actor(cfg.generate.gpus_per_actor, session.gpus)
        actors = pool_size(cfg.generate, session.cpus, session.gpus, gpus, catalog.num_rows)
        blocks = split_blocks(catalog, actors * BLOCKS_PER_ACTOR)
        start_actors_before_work()
        rows = collect(
            ray.data.from_arrow(blocks).map_batches(
                FeatureActor,
                fn_constructor_kwargs={
                    "store": store,
                    "cfg": cfg,
                    "version": generator_version,
                    "gpus": gpus,
                },
                batch_size=cfg.generate.features_batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(
                    size=actors, max_tasks_in_flight_per_actor=ACTOR_TASKS_IN_FLIGHT
                ),
                num_cpus=cfg.generate.cpus_per_actor,
                num_gpus=gpus,
                max_restarts=cfg.generate.max_actor_restarts,
            )
        )
        init_seconds = session.init_seconds
    table = rows.sort_by("item_id")
    layout.ITEM_FEATURES.write(store, table, ds)
    encoded = int(pa.compute.sum(table.column("encoded")).as_py())
    summary = {
        "ds": ds,
        "generator_version": generator_version,
        "encoder_version": table.column("encoder_version")[0].as_py(),
        "items": table.num_rows,
        "encoded": encoded,
        "reused": table.num_rows - encoded,
        "forward_calls": int(pa.compute.sum(table.column("forward_calls")).as_py()),
        "actors": actors,
        "gpus_per_actor": gpus,
        "nodes": sorted(set(table.column("node_id").to_pylist())),
        "ray_init_seconds": round(init_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
        "features_uri": layout.ITEM_FEATURES.uri(store, ds),
    }
    log.info("stage=features ds=%s %s", ds, summary)
    return summary


def features(
    ds: DsOpt,
    root: RootOpt = None,
    config: ConfigOpt = None,
    items_limit: ItemsLimitOpt = None,
    version: VersionOpt = None,
    json: JsonOpt = False,
) -> None:
    """Compute item features (meta-token encoder) for DS on Ray, reusing cached items."""
    cfg, store = open_stage("features", config, root)
    summary = run_features(
        store, cfg, ds, items_limit=items_limit or cfg.generate.items_limit, version=version
    )
    print_summary(summary, json)


if __name__ == "__main__":
    main(features)
