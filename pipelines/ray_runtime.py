"""Where a stage's Ray work runs: an existing cluster (``RAY_ADDRESS``) or local Ray started in-process.

Every Ray stage opens one :func:`ray_session`. The same stage code then runs

- on this machine: no address set, so Ray starts in-process with the machine's CPUs (and GPUs);
- on a cluster: ``RAY_ADDRESS=<head>:6379`` set by the operator, or by the Ray Jobs API, which sets
  it for every job's driver, so a stage submitted with :mod:`pipelines.launch` joins its cluster.

Local Ray is private to this process. Its node address is 127.0.0.1, so its GCS, raylet (with the
object manager), core workers, dashboard agent, metrics and autoscaler monitor listen on loopback only
(:func:`_loopback_node`), and it runs with token auth (``RAY_AUTH_MODE=token``) under a random token
that lives only in the environment of this process and the Ray processes it starts, never in a file
(:func:`_session_token`): another user of this machine cannot run code through it either. A caller
that sets ``RAY_AUTH_MODE`` itself keeps its choice. A cluster's auth mode and addresses are the
cluster's business and are left as the environment says.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

if TYPE_CHECKING:
    from icg_core.config import GenerateConfig, ICGConfig, ModelsConfig
    from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)

AUTO_GPUS = "auto"
BLOCKS_PER_ACTOR = 4  # input blocks per actor at least: enough to keep every actor busy and balance the tail
# Batches per input block at most. A block is one actor task, and its rows reach the driver (and its
# progress line) only when the task ends: small blocks keep progress lines seconds apart.
BATCHES_PER_BLOCK = 2
ACTOR_START_TIMEOUT_S = 600  # the pool waits this long for its first (smallest pool) actors to load models
# One batch queued per actor: batches take seconds, so a deeper queue only lets the first actor
# hoard the work of a small day while the others sit idle.
ACTOR_TASKS_IN_FLIGHT = 1
T = TypeVar("T")
AUTH_MODE_ENV = "RAY_AUTH_MODE"  # Ray's auth mode: "token", "disabled"
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"  # the token itself; Ray looks here before RAY_AUTH_TOKEN_PATH and ~/.ray
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


@dataclass(frozen=True)
class RaySession:
    """The Ray cluster a stage runs on, as seen when the session opened."""

    address: str  # the GCS address ("host:port"); for local Ray the in-process head's
    local: bool  # True when this session started Ray in this process
    nodes: int  # alive nodes
    cpus: float
    gpus: float
    init_seconds: float  # time spent in ray.init (start-up or connection)


def cluster_resources() -> tuple[int, float, float]:
    """(alive nodes, CPUs, GPUs) of the connected cluster."""
    import ray

    alive = [node for node in ray.nodes() if node.get("Alive")]
    total = ray.cluster_resources()
    return len(alive), float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))


@contextmanager
def ray_session(
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    address: str | None = None,
    progress_bars: bool = False,
) -> Iterator[RaySession]:
    """Connect to the configured Ray cluster, or start Ray in this process, for the ``with`` block.

    Args:
        num_cpus: CPUs of a local Ray (default: all this machine has); ignored on a cluster.
        num_gpus: GPUs of a local Ray (default: Ray detects them); ignored on a cluster.
        address: cluster address (``host:port`` or ``ray://...``); default ``$RAY_ADDRESS``. Without
            either, Ray starts locally, never attaching to another Ray that happens to run here.
        progress_bars: Ray Data progress bars (off by default: they flood batch logs).

    Yields:
        The session's :class:`RaySession`. If Ray was already initialized in this process (a test, a
        notebook), that connection is used and left open at the end.
    """
    import ray
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = progress_bars
    if not progress_bars:  # a choice, not a problem: the stages log their own progress lines
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    if ray.is_initialized():
        yield _describe(_current_address(), local=False, init_seconds=0.0)
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    started = time.perf_counter()
    with ExitStack() as local_auth:  # closed after ray.shutdown: the token outlives no session
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            if AUTH_MODE_ENV not in os.environ:
                local_auth.enter_context(_session_token())
            # "local" rather than None: None would join whatever cluster `ray start` left in /tmp/ray.
            # num_cpus=None lets Ray count this machine's CPUs (container CPU limits included).
            with _loopback_node():
                ray.init(
                    address="local",
                    num_cpus=num_cpus,
                    num_gpus=num_gpus,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                )
        init_seconds = time.perf_counter() - started
        try:
            yield _describe(_current_address(), local=not address, init_seconds=init_seconds)
        finally:
            ray.shutdown()


@contextmanager
def _loopback_node() -> Iterator[None]:
    """While Ray starts locally: make 127.0.0.1 the node's address, so nothing it starts listens beyond it.

    Ray's servers listen on every interface unless the node's address is loopback, and ``ray.init``
    turns a ``_node_ip_address`` of 127.0.0.1 into the host's routable address
    (``resolve_ip_for_localhost``). Ray's single-machine switch (its default on macOS and Windows),
    ``ray_constants.ENABLE_RAY_CLUSTER`` False, makes ``ray.init`` pick 127.0.0.1 and keep it. That
    is a module constant, read from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when ray is imported, so it
    is switched here for the start-up only: a later ``ray.init(address=...)`` in this process still
    finds its routable address. The processes Ray starts get the address as an argument.
    """
    from ray._private import ray_constants

    single_machine = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = single_machine


@contextmanager
def _session_token() -> Iterator[None]:
    """For one local session: token auth under a random token held in ``RAY_AUTH_TOKEN``; then as before.

    Ray reads the auth mode into its config when ray is imported and caches the token it loads, so
    both are reloaded after the environment changes, at the start and again at the end (mode first,
    as Ray's own tests do). Every Ray process inherits the token with the environment; without
    ``RAY_AUTH_TOKEN`` Ray would write ``~/.ray/auth_token`` for good.
    """
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # not in its stub

    saved = {name: os.environ.get(name) for name in (AUTH_MODE_ENV, AUTH_TOKEN_ENV, AUTH_TOKEN_PATH_ENV)}
    os.environ.pop(AUTH_TOKEN_PATH_ENV, None)
    os.environ[AUTH_MODE_ENV] = "token"
    os.environ[AUTH_TOKEN_ENV] = secrets.token_hex(32)
    try:
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def _current_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def _describe(address: str, *, local: bool, init_seconds: float) -> RaySession:
    nodes, cpus, gpus = cluster_resources()
    session = RaySession(address, local, nodes, cpus, gpus, init_seconds)
    log.info(
        "ray %s at %s: nodes=%d cpus=%g gpus=%g (init %.1fs)",
        "started locally" if local else "connected",
        address,
        nodes,
        cpus,
        gpus,
        init_seconds,
    )
    return session


def gpus_per_actor(requested: float | str | None, cluster_gpus: float, *, device: str = "cpu") -> float:
    """GPUs each model actor asks Ray for, from the config value.

    Args:
        requested: ``"auto"`` or None: one GPU per actor when the cluster has GPUs, else 0 (CPU).
            A number is used as given (0 forces CPU; fractions share a GPU between actors), even when
            no GPU is visible now, since an autoscaling cluster adds GPU nodes on demand.
        cluster_gpus: GPUs the cluster has now (:attr:`RaySession.gpus`).
        device: ``models.device``. A config that asks for CUDA never falls back to CPU actors:
            ``"auto"`` finding no GPU is an error, not a night of covers on idle GPUs' CPUs.

    Raises:
        ValueError: a negative number or an unknown word.
        RuntimeError: ``models.device`` is CUDA, ``requested`` is ``"auto"`` and the cluster has no GPU now.
    """
    if requested is None or requested == AUTO_GPUS:
        if cluster_gpus < 1 and device.startswith("cuda"):
            raise RuntimeError(
                f"models.device is {device!r} but the Ray cluster has no GPU now and generate.gpus_per_actor is "
                f"{AUTO_GPUS!r}: set generate.gpus_per_actor: 1 so actors wait for the autoscaler's GPU "
                "nodes (configs/cluster.example.yaml), or models.device: cpu to run on CPUs"
            )
        return 1.0 if cluster_gpus >= 1 else 0.0
    if isinstance(requested, str):
        raise ValueError(f"num_gpus per actor must be a number or {AUTO_GPUS!r}, got {requested!r}")
    if requested < 0:
        raise ValueError(f"num_gpus per actor must be >= 0, got {requested}")
    if requested > 0 and cluster_gpus == 0:
        log.warning(
            "actors ask for %g GPU each but the cluster has none now: they wait until a GPU node joins",
            requested,
        )
    return float(requested)


def run_task(fn: Callable[..., T], *args: Any, num_cpus: float | None, num_gpus: float, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` as one Ray task with declared resources; return its result.

    The training stages (users, rewards, finetune) run this way, so a cluster places them on a node
    that has what they declare (a GPU node when ``num_gpus`` > 0); here they run on local Ray.
    ``num_cpus`` None: every CPU of a local Ray the task has to itself (Ray gives the task as many
    torch threads), one CPU on a cluster.

    Raises:
        The task's own exception (a refused gate stays a refusal), not Ray's wrapper.
    """
    import ray

    with ray_session() as session:
        cpus = num_cpus if num_cpus is not None else (session.cpus if session.local else 1.0)
        task = ray.remote(num_cpus=cpus, num_gpus=num_gpus, max_retries=0)(fn)
        try:
            return ray.get(task.remote(*args, **kwargs))
        except ray.exceptions.RayTaskError as exc:
            raise exc.cause from None


def task_threads(cfg: ICGConfig) -> int:
    """Torch threads inside a training task: ``models.cpu_threads``, else the CPUs Ray assigned to it."""
    import ray

    if cfg.models.cpu_threads:
        return cfg.models.cpu_threads
    if not ray.is_initialized():  # called outside a task: every core
        return len(os.sched_getaffinity(0))
    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def training_resources(device: str, cpu_threads: int | None) -> dict[str, Any]:
    """Ray resources of a training task: the torch threads it uses (None: :func:`run_task` decides), and
    one GPU when it trains on CUDA."""
    num_cpus = float(cpu_threads) if cpu_threads else None
    return {"num_cpus": num_cpus, "num_gpus": 1.0 if device.startswith("cuda") else 0.0}


# ------------------------------------------------------------------ actor pools (features, generate)
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


def pool_bounds(gen: GenerateConfig, largest: int) -> tuple[int, int]:
    """(smallest, largest) pool: from ``generate.min_actors`` (at most ``largest``) to ``largest``.

    Args:
        gen: the ``generate`` section; ``min_actors`` None makes a fixed pool of ``largest`` actors.
        largest: the largest pool (:func:`pool_size`).

    Raises:
        ValueError: ``min_actors`` below 1.
    """
    if gen.min_actors is None:
        return largest, largest
    if gen.min_actors < 1:
        raise ValueError(f"generate.min_actors must be >= 1 or null, got {gen.min_actors}")
    return min(gen.min_actors, largest), largest


def actor_pool(smallest: int, largest: int) -> Any:
    """The Ray Data compute strategy of a model actor pool: ``smallest`` to ``largest`` actors, one batch each.

    The pool starts ``smallest`` actors and work waits until they are ready
    (:func:`start_actors_before_work`); while batches wait and the cluster has room, Ray Data adds
    actors up to ``largest``, and it gives idle ones back down to ``smallest``. Equal bounds make
    a fixed pool, all of whose actors start before the first batch.
    """
    import ray.data

    return ray.data.ActorPoolStrategy(
        min_size=smallest, max_size=largest, max_tasks_in_flight_per_actor=ACTOR_TASKS_IN_FLIGHT
    )


def block_count(items: int, rows_per_item: int, batch_size: int, actors: int) -> int:
    """Input blocks for ``items`` (each expanding to ``rows_per_item`` rows): at least
    ``BLOCKS_PER_ACTOR`` per actor, and no block of more than ``BATCHES_PER_BLOCK`` batches."""
    items_per_block = max(1, batch_size * BATCHES_PER_BLOCK // max(1, rows_per_item))
    return max(actors * BLOCKS_PER_ACTOR, -(-items // items_per_block))


def block_ranges(rows: int, blocks: int) -> list[tuple[int, int]]:
    """(start, count) of at most ``blocks`` contiguous slices of ``rows`` rows (Ray Data gives each block to one task at a time)."""
    step = max(1, -(-rows // max(1, min(blocks, rows))))
    return [(start, min(step, rows - start)) for start in range(0, rows, step)]


def split_blocks(table: pa.Table, blocks: int) -> list[pa.Table]:
    """``table`` cut into :func:`block_ranges`."""
    return [table.slice(start, count) for start, count in block_ranges(table.num_rows, blocks)]


def start_actors_before_work() -> None:
    """Make actor pools wait until their first actors (the pool's smallest size) have loaded their models.

    Ray Data otherwise hands batches to the first actor that is ready; with models that take seconds
    to load, that one actor (one node) can finish a small day alone while the others still start.
    Where blocks go among the ready actors is Ray Data's choice (it prefers an idle actor on the
    node that holds the block); with one batch in flight per actor, it is always an idle one.
    """
    import ray.data

    ray.data.DataContext.get_current().wait_for_min_actors_s = ACTOR_START_TIMEOUT_S


# ------------------------------------------------------------------ what a pool actor is built from
def store_settings(store: ObjectStore) -> dict[str, Any]:
    """The constructor settings of ``store`` (root, S3 endpoint, region, timeouts): :func:`open_actor` reopens it."""
    return store.settings()


def actor_arguments(store: ObjectStore, cfg: ICGConfig, restart_ledger: str) -> dict[str, Any]:
    """The constructor arguments every model actor gets: small plain values, rebuilt by :func:`open_actor`.

    Ray restarts a crashed actor with its original arguments; plain values (no store object, no
    config object, no tables) are a few kilobytes, so they are cheap to keep and to send again.
    """
    return {
        "store": store_settings(store),
        "config": cfg.model_dump(mode="json"),
        "restart_ledger": restart_ledger,
    }


def open_actor(
    store: dict[str, Any], config: dict[str, Any], restart_ledger: str
) -> tuple[ObjectStore, ICGConfig, int]:
    """In a model actor's constructor: check its restarts, rebuild store and config, set torch threads.

    Args:
        store, config, restart_ledger: what :func:`actor_arguments` made.

    Returns:
        (store, config, restarts of this actor so far).

    Raises:
        ActorRestartsExhausted: the actor was restarted more than ``generate.max_actor_restarts`` times.
    """
    from icg_core.config import ICGConfig
    from icg_core.storage import ObjectStore

    cfg = ICGConfig.model_validate(config)
    restarts = check_restarts(restart_ledger, cfg.generate.max_actor_restarts)
    set_actor_threads(cfg)
    return ObjectStore(**store), cfg, restarts


class ActorRestartsExhausted(RuntimeError):
    """A pool actor crashed more often than ``generate.max_actor_restarts`` allows: the stage fails."""


class RestartLedger:
    """How often each actor of a pool started (a named Ray actor, one per stage run).

    Ray restarts a crashed actor under the same actor id, so every start after an id's first is a restart.
    """

    def __init__(self) -> None:
        self.starts: dict[str, int] = {}

    def started(self, actor_id: str) -> int:
        """Count one start of ``actor_id``; return its restarts so far (0 on its first start)."""
        self.starts[actor_id] = self.starts.get(actor_id, 0) + 1
        return self.starts[actor_id] - 1


@contextmanager
def restart_ledger() -> Iterator[str]:
    """A :class:`RestartLedger` for the ``with`` block (inside a :func:`ray_session`); yields its name."""
    import ray

    name = f"icg-restarts-{uuid.uuid4().hex[:12]}"
    ledger = ray.remote(num_cpus=0)(RestartLedger).options(name=name).remote()
    try:
        yield name
    finally:
        ray.kill(ledger)


def check_restarts(ledger: str, max_restarts: int) -> int:
    """In a pool actor's constructor: record its start; its restarts so far must be within ``max_restarts``.

    Ray Data restarts a crashed pool actor without limit and retries its batch on it; this bounds
    the restarts, so an actor that crashes on every batch fails the stage instead of looping.

    Args:
        ledger: the name of the run's :class:`RestartLedger` (:func:`restart_ledger`).
        max_restarts: ``generate.max_actor_restarts``.

    Returns:
        The actor's restarts so far (0 on its first start).

    Raises:
        ActorRestartsExhausted: the actor was restarted more than ``max_restarts`` times.
    """
    import ray

    actor_id = ray.get_runtime_context().get_actor_id()
    restarts = int(ray.get(ray.get_actor(ledger).started.remote(actor_id)))
    if restarts > max_restarts:
        raise ActorRestartsExhausted(
            f"actor {actor_id} crashed {restarts} times; generate.max_actor_restarts={max_restarts}"
        )
    if restarts:
        log.warning("actor %s restarted after a crash (%d of %d restarts)", actor_id, restarts, max_restarts)
    return restarts


# ------------------------------------------------------------------ output and progress
def collect(dataset: Any, on_rows: Callable[[int], object] | None = None) -> pa.Table:
    """Stream a Ray dataset's output batches into one table in the driver.

    Args:
        dataset: the Ray dataset.
        on_rows: called with each batch's row count as it arrives (e.g. :meth:`Progress.add`).
    """
    parts = []
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        parts.append(batch)
        if on_rows is not None:
            on_rows(batch.num_rows)
    return pa.concat_tables(parts) if parts else pa.table({})
