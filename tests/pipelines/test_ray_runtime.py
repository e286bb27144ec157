"""Ray sessions: local Ray in-process, or a real two-node cluster through RAY_ADDRESS."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import psutil
import pytest

from icg_core.config import GenerateConfig, ICGConfig
from icg_core.storage import ObjectStore
from pipelines.ray_runtime import (
    ACTOR_TASKS_IN_FLIGHT,
    AUTH_MODE_ENV,
    AUTH_TOKEN_ENV,
    AUTH_TOKEN_PATH_ENV,
    RestartLedger,
    _session_token,
    actor_arguments,
    actor_pool,
    block_count,
    block_ranges,
    gpus_per_actor,
    pool_bounds,
    pool_size,
    ray_session,
    run_task,
    store_settings,
    training_resources,
)
from pipelines.runtime import StageFailed
from tests.ray_cluster import RayCluster, node_ids_by_role


def test_gpus_per_actor_follows_config_and_cluster() -> None:
    assert gpus_per_actor("auto", cluster_gpus=0) == 0.0
    assert gpus_per_actor(None, cluster_gpus=4) == 1.0
    assert gpus_per_actor(0, cluster_gpus=4) == 0.0
    assert gpus_per_actor(0.5, cluster_gpus=1) == 0.5
    assert gpus_per_actor(1, cluster_gpus=0) == 1.0  # an autoscaler may add GPU nodes
    assert gpus_per_actor("auto", cluster_gpus=2, device="cuda") == 1.0
    with pytest.raises(RuntimeError, match="no GPU now .* set generate.gpus_per_actor: 1"):
        gpus_per_actor("auto", cluster_gpus=0, device="cuda")  # a GPU config never falls back to CPU
    with pytest.raises(ValueError, match="number or 'auto'"):
        gpus_per_actor("many", cluster_gpus=1)
    with pytest.raises(ValueError, match=">= 0"):
        gpus_per_actor(-1, cluster_gpus=1)


def test_training_tasks_declare_their_threads_and_a_gpu_only_on_cuda() -> None:
    assert training_resources("cpu", None) == {"num_cpus": None, "num_gpus": 0.0}  # local Ray: every CPU
    assert training_resources("cuda:0", 4) == {"num_cpus": 4.0, "num_gpus": 1.0}


def test_pool_is_fixed_by_default_and_grows_from_min_actors_to_the_largest() -> None:
    fixed = GenerateConfig()
    largest = pool_size(fixed, cluster_cpus=6, cluster_gpus=0, gpus=0, rows=100)
    assert largest == 6 and pool_bounds(fixed, largest) == (6, 6)
    assert pool_bounds(GenerateConfig(min_actors=2), largest) == (2, 6)
    assert pool_bounds(GenerateConfig(min_actors=2, actors=4), 4) == (2, 4)
    assert pool_bounds(GenerateConfig(min_actors=8), 3) == (3, 3)  # a small day: no more than it has rows
    with pytest.raises(ValueError, match="min_actors must be >= 1"):
        pool_bounds(GenerateConfig(min_actors=0), 4)


def test_actor_pool_strategy_has_the_bounds_and_one_batch_per_actor() -> None:
    growing, fixed = actor_pool(2, 6), actor_pool(3, 3)
    assert (growing.min_size, growing.max_size, growing.initial_size) == (2, 6, 2)  # starts (and waits for) 2
    assert (fixed.min_size, fixed.max_size, fixed.initial_size) == (3, 3, 3)
    assert (
        growing.max_tasks_in_flight_per_actor
        == fixed.max_tasks_in_flight_per_actor
        == ACTOR_TASKS_IN_FLIGHT
        == 1
    )


def test_actor_arguments_are_small_plain_values_that_rebuild_store_and_config(tmp_path) -> None:
    s3 = ObjectStore("s3://bucket/prefix", s3_endpoint_url="http://127.0.0.1:8333", s3_region="eu-west-1")
    reopened = ObjectStore(**store_settings(s3))
    assert (reopened.root, reopened.s3_endpoint_url, reopened.s3_region) == (
        "s3://bucket/prefix", "http://127.0.0.1:8333", "eu-west-1",
    )  # fmt: skip
    cfg = ICGConfig(generate=GenerateConfig(min_actors=2, max_actor_restarts=1))
    arguments = actor_arguments(ObjectStore(str(tmp_path)), cfg, "icg-restarts-1")
    encoded = json.dumps(arguments)  # plain values only: no store, config or table objects
    assert len(encoded) < 20_000
    assert ICGConfig.model_validate(json.loads(encoded)["config"]) == cfg
    assert ObjectStore(**arguments["store"]).root == ObjectStore(str(tmp_path)).root


def test_restart_ledger_counts_restarts_per_actor() -> None:
    ledger = RestartLedger()
    assert [ledger.started(a) for a in ("a", "b", "a", "a", "b")] == [0, 0, 1, 2, 1]


def _square_in_a_worker(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _refuse() -> None:
    raise StageFailed("gate refused: AUC 0.40 < 0.65")


@pytest.mark.slow
def test_run_task_runs_in_a_ray_worker_and_keeps_a_refusal_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    square, pid = run_task(_square_in_a_worker, 7, num_cpus=1, num_gpus=0)
    assert square == 49 and pid != os.getpid()  # ran in a Ray worker process
    with pytest.raises(StageFailed, match="AUC 0.40"):
        run_task(_refuse, num_cpus=1, num_gpus=0)


@pytest.mark.slow
def test_local_session_starts_ray_in_process_and_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with ray_session(num_cpus=1) as session:
        assert session.local and session.nodes == 1 and session.cpus == 1 and session.gpus == 0
        assert ray.get(ray.remote(lambda: 6 * 7).remote()) == 42
    assert not ray.is_initialized()
    print(f"local ray.init: {session.init_seconds:.1f}s")


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}  # ::ffff:127.0.0.1 is 127.0.0.1 on a dual-stack socket


def _listening(processes: list[psutil.Process]) -> set[tuple[str, int, str, int]]:
    """(process name, pid, address, port) of every listening TCP socket of ``processes``."""
    found = set()
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker that exited meanwhile
            name = process.name()
            for conn in process.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((name, process.pid, conn.laddr.ip, conn.laddr.port))
    return found


def _started_since(children_before: set[int]) -> list[psutil.Process]:
    """This process's children started since ``children_before`` was taken, and all their descendants.

    Not all descendants: a session fixture's ``ray start`` (``ray_cluster``) is a child of pytest too.
    """
    new = [child for child in psutil.Process().children() if child.pid not in children_before]
    tree = []
    for child in new:
        with contextlib.suppress(psutil.NoSuchProcess):  # exited meanwhile: nothing left to check
            tree += [child, *child.children(recursive=True)]
    return tree


class Echo:
    """A Ray Data actor: its worker process is among those whose sockets are checked."""

    def __call__(self, batch: dict) -> dict:
        return batch


@pytest.mark.slow
def test_local_session_listens_on_loopback_only_and_refuses_calls_without_its_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import grpc
    import ray
    import ray.data
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    for name in ("RAY_ADDRESS", AUTH_MODE_ENV, AUTH_TOKEN_ENV, AUTH_TOKEN_PATH_ENV):
        monkeypatch.delenv(name, raising=False)
    default_token = Path.home() / ".ray" / "auth_token"
    had_default_token = default_token.exists()
    me = psutil.Process()
    children_before = {child.pid for child in me.children()}
    driver_before = _listening([me])
    with ray_session(num_cpus=2) as session:
        assert os.environ[AUTH_MODE_ENV] == "token" and len(os.environ[AUTH_TOKEN_ENV]) == 64
        pool = ray.data.ActorPoolStrategy(size=1)
        echoed = ray.data.range(8, override_num_blocks=4).map_batches(Echo, batch_size=2, compute=pool)
        assert echoed.count() == 8
        sockets = (_listening([me]) - driver_before) | _listening(_started_since(children_before))
        with grpc.insecure_channel(session.address) as channel:  # the GCS, as anyone on this machine can
            gcs = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
            request = gcs_service_pb2.GetAllNodeInfoRequest()
            with pytest.raises(grpc.RpcError) as refused:
                gcs.GetAllNodeInfo(request, timeout=10)
            bearer = [("authorization", f"Bearer {os.environ[AUTH_TOKEN_ENV]}")]
            nodes = gcs.GetAllNodeInfo(request, timeout=10, metadata=bearer).node_info_list

    names = {name for name, *_ in sockets}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), sorted(sockets)
    assert all(address in LOOPBACK for _, _, address, _ in sockets), sorted(sockets)
    assert session.address.startswith("127.0.0.1:")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and len(nodes) == 1
    # The token lived in this process's environment for the session only, never in a file.
    assert AUTH_MODE_ENV not in os.environ and AUTH_TOKEN_ENV not in os.environ
    assert default_token.exists() == had_default_token


def test_session_token_is_fresh_each_time_and_leaves_the_environment_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(AUTH_MODE_ENV, raising=False)
    monkeypatch.setenv(AUTH_TOKEN_ENV, "the-caller's")
    monkeypatch.setenv(AUTH_TOKEN_PATH_ENV, "/elsewhere/token")
    tokens = []
    for _ in range(2):
        with _session_token():
            assert os.environ[AUTH_MODE_ENV] == "token" and AUTH_TOKEN_PATH_ENV not in os.environ
            tokens.append(os.environ[AUTH_TOKEN_ENV])
        assert AUTH_MODE_ENV not in os.environ
        assert os.environ[AUTH_TOKEN_ENV] == "the-caller's"
        assert os.environ[AUTH_TOKEN_PATH_ENV] == "/elsewhere/token"
    assert len(set(tokens)) == 2 and "the-caller's" not in tokens


class NodeTagger:
    """A Ray Data actor that tags each row with the node it ran on."""

    def __init__(self) -> None:
        import ray

        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict) -> dict:
        time.sleep(0.2)  # keep both actors busy, so the work cannot all land on one
        return {"id": batch["id"], "node_id": [self.node_id] * len(batch["id"])}


@pytest.mark.slow
def test_ray_address_joins_the_cluster_and_work_runs_on_both_nodes(
    ray_cluster: RayCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray
    import ray.data

    print(f"two-node cluster started in {ray_cluster.start_seconds:.1f}s")
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.gcs_address)
    with ray_session() as session:
        assert not session.local and session.nodes == 2 and session.cpus == 2
        print(f"connect to cluster: {session.init_seconds:.1f}s")
        nodes = node_ids_by_role()
        assert set(nodes) == {"head_node", "worker_node"} and nodes["head_node"] != nodes["worker_node"]

        @ray.remote(num_cpus=1)
        def where() -> str:
            return ray.get_runtime_context().get_node_id()

        ran_on = ray.get(
            [where.options(resources={name: 0.01}).remote() for name in ("head_node", "worker_node")]
        )
        assert ran_on == [nodes["head_node"], nodes["worker_node"]]

        # One CPU per node and one CPU per actor: a pool of two must place one actor on each node.
        tagged = ray.data.from_items([{"id": i} for i in range(16)], override_num_blocks=8).map_batches(
            NodeTagger, batch_size=2, num_cpus=1, compute=ray.data.ActorPoolStrategy(size=2)
        )
        rows = tagged.take_all()
        assert sorted(r["id"] for r in rows) == list(range(16))
        assert {r["node_id"] for r in rows} == set(nodes.values())
    assert not ray.is_initialized()


def test_blocks_are_small_enough_for_frequent_progress_and_enough_for_every_actor() -> None:
    assert block_count(300, rows_per_item=8, batch_size=16, actors=2) == 75  # 4 items = 32 covers a block
    assert block_count(300, rows_per_item=1, batch_size=32, actors=2) == 8  # 4 per actor beats 5 blocks of 64
    assert block_count(10, rows_per_item=64, batch_size=16, actors=1) == 10  # never less than an item
    assert block_ranges(10, 3) == [(0, 4), (4, 4), (8, 2)]
    assert block_ranges(2, 5) == [(0, 1), (1, 1)] and block_ranges(0, 3) == []
