"""Stage generate: one cover per (item, segment) on Ray Data, staged for publish.

``python -m pipelines.generate --root ROOT --ds DATE`` (or ``icg generate``):

1. checks every input before Ray starts (:func:`icg_core.stages.generate.plan_generation`): a writable root,
   a non-empty catalog, the segment table, the generator and reward versions, the day's features;
2. streams items x segments through a pool of actors; each loads the generator bundle and the
   reward models once and writes covers in batches (:class:`icg_core.stages.generate.CoverWriter`): PNG at
   ``covers/ds=<ds>/segment=<s>/<item_id>-<digest>.png``, a sidecar next to it, and the manifest row;
3. streams the rows to the staged manifest as they arrive (no process holds the day), checks one row
   per (item, segment) and only then commits it to ``staging/covers`` for publish.

Resumable: a cover whose fingerprint (item content hash, generator version, centroid, sampling) is
already written today is kept, and one written on the previous day is copied; ``--force``
regenerates. A crashed actor is restarted by Ray (at most ``generate.max_actor_restarts`` times, then
the stage fails) and its batch retried; covers it finished before crashing are kept, not redone.
The pool has ``generate.actors`` actors (default: as many as the cluster holds), or grows from
``generate.min_actors`` to that many while work waits. The driver logs "N of M covers, ETA" lines.

Test-only fault injection: with ``ICG_FAULT_EXIT_AFTER_COVERS=N`` in the driver's environment, the
first actor to write N covers exits (``os._exit``) once per day; a marker object per crash records it
(actors that finish their Nth cover at the same moment may both exit, and each leaves its marker).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.compute as pc
import typer

from icg_core.config import ICGConfig
from icg_core.progress import PROGRESS_EVERY_S, Progress
from icg_core.runtime import peak_rss_mb
from pipelines.features import ItemsLimitOpt, VersionOpt
from pipelines.ray_runtime import (
    actor_arguments,
    actor_models,
    actor_pool,
    block_count,
    block_ranges,
    open_actor,
    pool_bounds,
    pool_size,
    restart_ledger,
    start_actors_before_work,
)
from pipelines.runtime import ConfigOpt, DsOpt, JsonOpt, RootOpt, main, open_stage, print_summary

log = logging.getLogger(__name__)

FAULT_ENV = "ICG_FAULT_EXIT_AFTER_COVERS"
# Columns CoverActor adds to the manifest rows: where and how the work ran (for the summary, not the manifest).
ACTOR_COLUMNS = ("node_id", "actor_id", "actor_restarts", "encoder_calls", "actor_rss_mb", "actor_ready_at")

ForceOpt = Annotated[bool, typer.Option("--force", help="Regenerate covers even when a matching one exists.")]


class CoverActor:
    """Loads the generator and the reward models once; writes the covers of each batch of requests.

    Built from small plain values (:func:`pipelines.ray_runtime.actor_arguments` and
    :func:`icg_core.stages.generate.writer_fields`), so that Ray can restart it after a crash.
    """

    def __init__(
        self,
        store: dict[str, Any],
        config: dict[str, Any],
        restart_ledger: str,
        plan: dict[str, Any],
        gpus: float,
        force: bool,
        fault_after: int,
    ) -> None:
        import ray

        from icg_core.models.bundle import load_bundle
        from icg_core.stages.generate import CoverWriter, load_plan_rewards, writer_plan

        self.store, cfg, self.restarts = open_actor(store, config, restart_ledger)
        self.plan, self.fault_after = writer_plan(self.store, plan), fault_after
        bundle = load_bundle(self.store, actor_models(cfg, gpus), self.plan.generator_version)
        rewards = load_plan_rewards(self.store, self.plan, bundle.covers.image_size)
        self.writer = CoverWriter(
            self.store, bundle, rewards, self.plan, force, self._inject_fault if fault_after else None
        )
        context = ray.get_runtime_context()
        self.node_id, self.actor_id = context.get_node_id(), context.get_actor_id()
        self.ready_at = time.time()  # wall clock: start-up is reported apart from throughput

    def _inject_fault(self, generated: int) -> None:
        from icg_core import layout

        markers = layout.fault_markers(self.plan.ds)
        if generated >= self.fault_after and not self.store.list(markers):
            self.store.put_json(layout.fault_marker(self.plan.ds, os.getpid()), {"after_covers": generated})
            log.warning("fault injection: actor pid=%d exits after %d covers", os.getpid(), generated)
            os._exit(1)

    def __call__(self, batch: pa.Table) -> pa.Table:
        calls = self.writer.counts.encoder_calls
        out = self.writer.write(batch)
        rows = out.num_rows
        first = [1] + [0] * (rows - 1)  # batch-level values on the first row only, so sums total them
        return (
            out.append_column("node_id", pa.array([self.node_id] * rows, pa.string()))
            .append_column("actor_id", pa.array([self.actor_id] * rows, pa.string()))
            .append_column("actor_restarts", pa.array([self.restarts] * rows, pa.int64()))
            .append_column(
                "encoder_calls",
                pa.array([(self.writer.counts.encoder_calls - calls) * f for f in first], pa.int64()),
            )
            .append_column("actor_rss_mb", pa.array([peak_rss_mb()] * rows, pa.float64()))
            .append_column("actor_ready_at", pa.array([self.ready_at] * rows, pa.float64()))
        )


def run_generate(
    store: Any,
    cfg: ICGConfig,
    ds: str,
    *,
    items_limit: int | None = None,
    version: str | None = None,
    force: bool = False,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> dict[str, Any]:
    """Generate and stage the covers of ``ds`` on Ray; see the module docstring.

    Args:
        progress_every_s: least seconds between two "N of M covers, ETA" log lines.

    Returns:
        The summary: rows, generated / kept / copied counts, encoder calls (expected 0: features are
        cached per item), actors (largest and smallest pool), actors restarted after a crash, nodes
        used, peak RSS of driver and actors, Ray start-up, throughput.

    Raises:
        GenerateInputError / StorageError: bad inputs, before any worker starts; nothing is staged.
    """
    import ray.data

    from icg_core.stages.generate import plan_generation, requests, stage_manifest, summarize, writer_fields
    from pipelines.ray_runtime import gpus_per_actor, ray_session

    started = time.perf_counter()
    plan = plan_generation(store, cfg, ds, items_limit=items_limit, version=version)
    fault_after = int(os.environ.get(FAULT_ENV) or 0)
    with ray_session() as session, restart_ledger() as ledger:
        gpus = gpus_per_actor(cfg.generate.gpus_per_actor, session.gpus, device=cfg.models.device)
        largest = pool_size(cfg.generate, session.cpus, session.gpus, gpus, plan.rows)
        smallest, largest = pool_bounds(cfg.generate, largest)
        # Requests are expanded here, so every block is ready when the pool starts and each actor
        # (node) gets work at once; expanded by Ray tasks, blocks trickled in and the first ready
        # actor could take them all. The blocks are ids only (actors read images and features).
        blocks = block_ranges(
            plan.items.num_rows,
            block_count(plan.items.num_rows, len(plan.segment_ids), cfg.generate.batch_size, largest),
        )
        start_actors_before_work()
        progress = Progress(f"generate ds={ds}", plan.rows, "covers", progress_every_s)
        generating, generating_wall = time.perf_counter(), time.time()
        covers = ray.data.from_arrow([requests(plan, start, count) for start, count in blocks]).map_batches(
            CoverActor,
            fn_constructor_kwargs={
                **actor_arguments(store, cfg, ledger),
                "plan": writer_fields(plan), "gpus": gpus, "force": force, "fault_after": fault_after,
            },
            batch_size=cfg.generate.batch_size,
            batch_format="pyarrow",
            compute=actor_pool(smallest, largest),
            num_cpus=cfg.generate.cpus_per_actor,
            num_gpus=gpus,
        )  # fmt: skip
        actors = ActorFacts()
        tally = stage_manifest(store, plan, actors.manifest_rows(covers, progress))
        progress.finish()
        ray_seconds = time.perf_counter() - generating
        finished_wall = time.time()
        init_seconds = session.init_seconds
    extra = {"actors": largest, "min_actors": smallest, "gpus_per_actor": gpus}
    extra |= {"ray_init_seconds": round(init_seconds, 2)}
    extra |= actors.facts(tally.rows, ray_seconds, generating_wall, finished_wall)
    summary = summarize(
        store,
        plan,
        tally,
        seconds=time.perf_counter() - started,
        encoder_calls=actors.encoder_calls,
        extra=extra,
    )
    return dataclasses.asdict(summary)


@dataclasses.dataclass
class ActorFacts:
    """Where and how the covers were made, gathered from the actors' columns batch by batch."""

    nodes: set[str] = dataclasses.field(default_factory=set)
    restarted: set[str] = dataclasses.field(default_factory=set)  # actors that ran after a restart
    encoder_calls: int = 0
    first_ready: float | None = None  # wall time the first actor had its models loaded
    actor_peak_rss_mb: float | None = None

    def manifest_rows(self, covers: Any, progress: Progress) -> Iterator[pa.Table]:
        """The actors' output batches as manifest rows, their facts gathered on the way: one batch in memory."""
        for batch in covers.iter_batches(batch_size=None, batch_format="pyarrow"):
            self.add(batch)
            progress.add(batch.num_rows)
            yield batch.drop_columns(list(ACTOR_COLUMNS))

    def add(self, batch: pa.Table) -> None:
        self.nodes |= set(pc.unique(batch.column("node_id")).to_pylist())
        restarted = batch.filter(pc.greater(batch.column("actor_restarts"), 0))
        self.restarted |= set(pc.unique(restarted.column("actor_id")).to_pylist())
        self.encoder_calls += int(pc.sum(batch.column("encoder_calls")).as_py() or 0)
        ready, rss = (
            pc.min(batch.column("actor_ready_at")).as_py(),
            pc.max(batch.column("actor_rss_mb")).as_py(),
        )
        if ready is not None:
            self.first_ready = ready if self.first_ready is None else min(self.first_ready, ready)
        if rss is not None:
            self.actor_peak_rss_mb = (
                rss if self.actor_peak_rss_mb is None else max(self.actor_peak_rss_mb, rss)
            )

    def facts(
        self, rows: int, ray_seconds: float, started_wall: float, finished_wall: float
    ) -> dict[str, Any]:
        """Nodes, throughput and memory of a run. Actor start-up (model and reward loading) is reported
        apart: "steady" throughput counts from the moment the first actor was ready."""
        first_ready = finished_wall if self.first_ready is None else self.first_ready
        steady_seconds = finished_wall - first_ready
        return {
            "nodes": sorted(self.nodes),
            "restarted_actors": len(self.restarted),
            "ray_seconds": round(ray_seconds, 2),
            "covers_per_second": round(rows / ray_seconds, 2) if ray_seconds > 0 else None,
            "actor_startup_seconds": round(first_ready - started_wall, 2),
            "steady_covers_per_second": round(rows / steady_seconds, 2) if steady_seconds > 0 else None,
            "driver_peak_rss_mb": peak_rss_mb(),
            "actor_peak_rss_mb": self.actor_peak_rss_mb,
        }


def generate(
    ds: DsOpt,
    root: RootOpt = None,
    config: ConfigOpt = None,
    items_limit: ItemsLimitOpt = None,
    version: VersionOpt = None,
    force: ForceOpt = False,
    json: JsonOpt = False,
) -> None:
    """Generate one cover per (item, segment) for DS on Ray and stage the manifest for publish."""
    cfg, store = open_stage("generate", config, root)
    summary = run_generate(
        store, cfg, ds, items_limit=items_limit or cfg.generate.items_limit, version=version, force=force
    )
    print_summary(summary, json)


if __name__ == "__main__":
    main(generate)
