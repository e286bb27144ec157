"""A genuine two-node Ray cluster on this host, for the tests that need a real distributed engine.

`ray_cluster` runs ``ray start --head --block`` and a second ``ray start --address=... --block``
(each its own raylet, object store and temp dir, 1 CPU each) as child processes of pytest, waits
until both nodes are alive, and at the end stops exactly the processes it started, by PID: never
``ray stop``, which would kill any other Ray on the machine.

The head carries the custom resource ``head_node`` and the second node ``worker_node``, so a test can
pin work to either. Both nodes get the venv's ``bin/`` first on PATH, as an activated venv or a
cluster image gives, so a job's ``python -m pipelines.<stage>`` finds this interpreter.

Addresses: tests reach the GCS and the dashboard at 127.0.0.1, and the dashboard and Ray client
server listen only there. This two-node cluster (``ray start``, as an operator starts one) replaces a
``--node-ip-address`` of 127.0.0.1 by the host's routable address (``resolve_ip_for_localhost``), so
its GCS, raylet and object manager gRPC servers listen on all interfaces for the session; the local
Ray a stage starts on its own is loopback-only with token auth (pipelines.ray_runtime).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

NODE_START_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class RayCluster:
    gcs_address: str  # host:port, what ray.init(address=...) and RAY_ADDRESS take
    dashboard_url: str  # http://host:port, what the Jobs API (JobSubmissionClient) takes
    start_seconds: float  # from the first `ray start` to both nodes alive


def node_ids_by_role() -> dict[str, str]:
    """``{"head_node": id, "worker_node": id}`` of the connected cluster (call inside a Ray session)."""
    import ray

    return {
        role: node["NodeID"]
        for node in ray.nodes()
        if node["Alive"]
        for role in ("head_node", "worker_node")
        if role in node["Resources"]
    }


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open while choosing, so no duplicates)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def cluster_env() -> dict[str, str]:
    """The environment of the cluster's processes: no token auth, no usage stats, the venv on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        # No drain wait on SIGTERM (default 30 s, for Serve proxies): there is no traffic to drain.
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
    }


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM it when pytest dies, so a killed test run leaks no cluster."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _start_node(args: list[str], log: Path) -> subprocess.Popen:
    ray = str(Path(sys.executable).parent / "ray")
    with log.open("wb") as out:
        # Own session: a Ctrl-C in the terminal reaches pytest, which then stops the nodes in order.
        return subprocess.Popen(
            [ray, "start", "--block", "--disable-usage-stats", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cluster_env(),
            start_new_session=True,
            preexec_fn=_terminate_with_parent,
        )


def _alive_nodes(dashboard_url: str) -> int:
    from ray.util.state import list_nodes

    return len(
        list_nodes(
            address=dashboard_url, filters=[("state", "=", "ALIVE")], timeout=5, raise_on_missing_output=False
        )
    )


def _wait_for_nodes(dashboard_url: str, count: int, nodes: list[tuple[subprocess.Popen, Path]]) -> None:
    deadline = time.monotonic() + NODE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        for process, log in nodes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"ray start exited early ({process.returncode}):\n{log.read_text(errors='replace')[-3000:]}"
                )
        with contextlib.suppress(Exception):  # the dashboard answers only once it is up
            if _alive_nodes(dashboard_url) >= count:
                return
        time.sleep(0.5)
    logs = "\n".join(log.read_text(errors="replace")[-2000:] for _, log in nodes)
    raise RuntimeError(f"Ray cluster did not reach {count} alive nodes in {NODE_START_TIMEOUT_S}s:\n{logs}")


def _process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_node(process: subprocess.Popen, known: list[psutil.Process], grace_s: float = 30.0) -> None:
    """Stop one ``ray start --block`` and every process it started, by PID.

    SIGTERM makes ``ray start --block`` shut its raylet (and GCS, dashboard...) down gracefully; any
    process of its tree that outlives the grace period is killed.
    """
    tree = {p.pid: p for p in [*known, *_process_tree(process.pid)]}
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    _, alive = psutil.wait_procs(list(tree.values()), timeout=10)
    for leftover in alive:
        with contextlib.suppress(psutil.NoSuchProcess):  # exited meanwhile
            leftover.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="session")
def ray_cluster(s3_credentials: None) -> Iterator[RayCluster]:
    """A head node and a worker node (1 CPU each) on this host; yields the GCS and dashboard addresses.

    The nodes' environment carries the S3 test credentials (as a cluster's nodes carry theirs), so
    workers can reach the `s3_server` fixture.
    """
    # A short temp dir: Ray puts Unix sockets under it, and socket paths are limited to 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="icg-ray-"))
    gcs_port, dashboard_port, client_port, head_agent_port, worker_agent_port = _free_ports(5)
    common = ["--num-cpus=1", "--num-gpus=0", "--min-worker-port=0", "--max-worker-port=0"]
    gcs_address = f"127.0.0.1:{gcs_port}"
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    started = time.monotonic()
    nodes: list[tuple[subprocess.Popen, Path]] = []
    trees: list[list[psutil.Process]] = []
    saved_auth = os.environ.get("RAY_AUTH_MODE")
    # This process talks to the cluster too (drivers, the Jobs API): same auth mode as the cluster.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        head_args = [
            "--head", f"--port={gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={client_port}", f"--dashboard-agent-listen-port={head_agent_port}",
            f"--temp-dir={base / 'head'}", "--resources=" + json.dumps({"head_node": 1}), *common,
        ]  # fmt: skip
        nodes.append((_start_node(head_args, base / "head.log"), base / "head.log"))
        _wait_for_nodes(dashboard_url, 1, nodes)
        worker_args = [
            f"--address={gcs_address}", f"--dashboard-agent-listen-port={worker_agent_port}",
            f"--temp-dir={base / 'worker'}", "--resources=" + json.dumps({"worker_node": 1}), *common,
        ]  # fmt: skip
        nodes.append((_start_node(worker_args, base / "worker.log"), base / "worker.log"))
        _wait_for_nodes(dashboard_url, 2, nodes)
        trees = [_process_tree(process.pid) for process, _ in nodes]
        yield RayCluster(gcs_address, dashboard_url, time.monotonic() - started)
    finally:
        # Worker node first, so the head never sees it as failed mid-shutdown.
        for index in reversed(range(len(nodes))):
            stop_node(nodes[index][0], trees[index] if index < len(trees) else [])
        if saved_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved_auth
        shutil.rmtree(base, ignore_errors=True)
