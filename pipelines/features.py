"""Stage features: the meta-token encoder over the day's catalog, on a Ray actor pool, into the item-feature cache.

``python -m pipelines.features --root ROOT --ds DATE`` (or ``icg features``). The stage's work is
:mod:`icg_core.stages.features` (plan, worker, commit); this module places the workers: a pool of
actors that each load the generator's encoder once (``generate.gpus_per_actor`` GPUs each,
``generate.gpu_dtype`` on GPU). Runs on local Ray, or on a cluster when ``RAY_ADDRESS`` is set.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

import pyarrow as pa
import typer

from icg_core.config import ICGConfig
from pipelines.runtime import ConfigOpt, DsOpt, JsonOpt, RootOpt, main, open_stage, print_summary

log = logging.getLogger(__name__)

ItemsLimitOpt = Annotated[
    int | None, typer.Option("--items-limit", min=1, help="Only the first N catalog items (by item_id).")
]
VersionOpt = Annotated[
    str | None, typer.Option("--version", help="Generator version (default generate.generator_version).")
]


class FeatureActor:
    """A :class:`~icg_core.stages.features.FeatureWorker` on one Ray actor; rows say which node made them."""

    def __init__(self, store: Any, cfg: ICGConfig, version: str, gpus: float) -> None:
        import ray

        from icg_core.stages.features import FeatureWorker
        from pipelines.ray_runtime import actor_models, set_actor_threads

        set_actor_threads(cfg)
        self.worker = FeatureWorker(store, actor_models(cfg, gpus), version, cfg.generate.features_batch_size)
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = self.worker(batch)
        return rows.append_column("node_id", pa.array([self.node_id] * rows.num_rows, pa.string()))


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

    from icg_core.stages.features import commit_features, plan_features
    from pipelines.ray_runtime import (
        ACTOR_TASKS_IN_FLIGHT,
        BLOCKS_PER_ACTOR,
        collect,
        gpus_per_actor,
        pool_size,
        ray_session,
        split_blocks,
        start_actors_before_work,
    )

    started = time.perf_counter()
    plan = plan_features(store, cfg, ds, items_limit=items_limit, version=version)
    with ray_session() as session:
        gpus = gpus_per_actor(cfg.generate.gpus_per_actor, session.gpus)
        actors = pool_size(cfg.generate, session.cpus, session.gpus, gpus, plan.catalog.num_rows)
        blocks = split_blocks(plan.catalog, actors * BLOCKS_PER_ACTOR)
        start_actors_before_work()
        rows = collect(
            ray.data.from_arrow(blocks).map_batches(
                FeatureActor,
                fn_constructor_kwargs={"store": store, "cfg": cfg, "version": plan.generator_version, "gpus": gpus},
                batch_size=cfg.generate.features_batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=ACTOR_TASKS_IN_FLIGHT),
                num_cpus=cfg.generate.cpus_per_actor,
                num_gpus=gpus,
                max_restarts=cfg.generate.max_actor_restarts,
            )
        )  # fmt: skip
        init_seconds = session.init_seconds
    placement = {
        "actors": actors,
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
