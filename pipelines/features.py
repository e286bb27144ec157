"""Stage features: the meta-token encoder over the day's catalog, on a Ray actor pool, into the item-feature cache.

``python -m pipelines.features --root ROOT --ds DATE`` (or ``icg features``). The stage's work is
:mod:`icg_core.stages.features` (plan, worker, commit); this module places the workers: a pool of
actors that each load the generator's encoder once (``generate.gpus_per_actor`` GPUs each,
``generate.gpu_dtype`` on GPU; ``generate.min_actors`` to ``generate.actors`` of them). Runs on local
Ray, or on a cluster when ``RAY_ADDRESS`` is set. The driver logs "N of M items, ETA" lines.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

import pyarrow as pa
import typer

from icg_core.config import ICGConfig
from icg_core.progress import PROGRESS_EVERY_S, Progress
from pipelines.runtime import ConfigOpt, DsOpt, JsonOpt, RootOpt, main, open_stage, print_summary

log = logging.getLogger(__name__)

ItemsLimitOpt = Annotated[
    int | None, typer.Option("--items-limit", min=1, help="Only the first N catalog items (by item_id).")
]
VersionOpt = Annotated[
    str | None, typer.Option("--version", help="Generator version (default generate.generator_version).")
]


class FeatureActor:
    """A :class:`~icg_core.stages.features.FeatureWorker` on one Ray actor; rows say which node made them.

    Built from small plain values (:func:`pipelines.ray_runtime.actor_arguments`), so that Ray can
    restart it after a crash.
    """

    def __init__(
        self, store: dict[str, Any], config: dict[str, Any], restart_ledger: str, version: str, gpus: float
    ) -> None:
        import ray

        from icg_core.stages.features import FeatureWorker
        from pipelines.ray_runtime import actor_models, open_actor

        object_store, cfg, _ = open_actor(store, config, restart_ledger)
        self.worker = FeatureWorker(
            object_store, actor_models(cfg, gpus), version, cfg.generate.features_batch_size
        )
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = self.worker(batch)
        return rows.append_column("node_id", pa.array([self.node_id] * rows.num_rows, pa.string()))


def run_features(
    store: Any,
    cfg: ICGConfig,
    ds: str,
    *,
    items_limit: int | None = None,
    version: str | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> dict[str, Any]:
    """Encode the day's catalog on Ray and commit ``item_features``; inputs are checked before Ray starts.

    Args:
        store: the object store.
        cfg: configuration (``generate`` section: pool, batch sizes, GPUs; ``models``: device, dtype).
        ds: the day.
        items_limit: only the first N items (by item_id).
        version: generator version whose encoder runs (default ``generate.generator_version``).
        progress_every_s: least seconds between two "N of M items, ETA" log lines.

    Returns:
        The summary: items, encoded (VLM-encoded now), reused (from the cache), forward calls, nodes used.
    """
    import ray.data

    from icg_core.stages.features import cached_rows, commit_features, plan_features
    from pipelines.ray_runtime import (
        actor_arguments,
        actor_pool,
        block_count,
        collect,
        gpus_per_actor,
        pool_bounds,
        pool_size,
        ray_session,
        restart_ledger,
        split_blocks,
        start_actors_before_work,
    )

    started = time.perf_counter()
    plan = plan_features(store, cfg, ds, items_limit=items_limit, version=version)
    cached = cached_rows(store, plan)
    if cached is not None:  # nothing to encode: no Ray start-up, no encoder loaded
        log.info("stage=features ds=%s every item is cached: Ray not started", ds)
        return commit_features(
            store, plan, cached, {"actors": 0, "seconds": round(time.perf_counter() - started, 2)}
        )
    with ray_session() as session, restart_ledger() as ledger:
        gpus = gpus_per_actor(cfg.generate.gpus_per_actor, session.gpus, device=cfg.models.device)
        largest = pool_size(cfg.generate, session.cpus, session.gpus, gpus, plan.catalog.num_rows)
        smallest, largest = pool_bounds(cfg.generate, largest)
        count = block_count(plan.catalog.num_rows, 1, cfg.generate.features_batch_size, largest)
        blocks = split_blocks(plan.catalog, count)
        start_actors_before_work()
        progress = Progress(f"features ds={ds}", plan.catalog.num_rows, "items", progress_every_s)
        features = ray.data.from_arrow(blocks).map_batches(
            FeatureActor,
            fn_constructor_kwargs={
                **actor_arguments(store, cfg, ledger),
                "version": plan.generator_version,
                "gpus": gpus,
            },
            batch_size=cfg.generate.features_batch_size,
            batch_format="pyarrow",
            compute=actor_pool(smallest, largest),
            num_cpus=cfg.generate.cpus_per_actor,
            num_gpus=gpus,
        )
        rows = collect(features, progress.add)
        progress.finish()
        init_seconds = session.init_seconds
    placement = {
        "actors": largest,
        "min_actors": smallest,
        "gpus_per_actor": gpus,
        "nodes": sorted(set(rows.column("node_id").to_pylist())),
        "ray_init_seconds": round(init_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return commit_features(store, plan, rows, placement)


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
