"""`make ui` (scripts/ui.sh) under a real scheduler: it serves on 127.0.0.1 only, `airflow backfill
create` over three dates runs each day's stages, and stopping the script leaves no process behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from icg_core import layout
from icg_core.config import WorldConfig
from icg_core.storage import ObjectStore
from icg_core.world.simulator import generate_world
from tests.dags.conftest import AIRFLOW, DAGS, REPO

pytestmark = pytest.mark.slow

DATES = ["2026-11-04", "2026-11-05", "2026-11-06"]
PROBE = "icg_backfill_probe"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5) as response:
            health = json.load(response)
    except OSError:
        return False
    return all((health.get(part) or {}).get("status") == "healthy" for part in ("metadatabase", "scheduler"))


@dataclass
class UI:
    """The running `make ui`: its script process, address, environment, object root and log."""

    process: subprocess.Popen
    url: str
    port: int
    env: dict[str, str]
    root: ObjectStore
    log: Path

    def airflow(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    base = tmp_path_factory.mktemp("ui")
    root = ObjectStore(str(base / "root"))
    generate_world(
        root, WorldConfig(n_items=10, n_users=20, days=6, impressions_per_day=50, n_taste_groups=2)
    )
    dags = base / "dags"
    shutil.copytree(DAGS, dags, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(Path(__file__).parent / "fixtures" / f"{PROBE}.py", dags)
    port = _free_port()
    env = {
        "PATH": os.environ["PATH"], "HOME": str(base), "PORT": str(port), "AIRFLOW_HOME": str(base / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags), "ICG__STORAGE__ROOT": root.root,
        "ICG__EXTRACT__LOOKBACK_DAYS": "3", "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        **{k: v for k, v in os.environ.items() if k.startswith(("AWS_", "RAY_"))},
    }  # fmt: skip
    log = (base / "ui.log").open("w")
    process = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "ui.sh")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while not _healthy(url) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(2)
    try:
        assert _healthy(url), (base / "ui.log").read_text()[-4000:]
        yield UI(process, url, port, env, root, base / "ui.log")
    finally:
        if process.poll() is None:  # a failed test: take down every component
            for member in psutil.Process(process.pid).children(recursive=True):
                member.kill()
            process.kill()


def test_the_ui_listens_on_loopback_only(ui: UI) -> None:
    listening = {
        c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == ui.port
    }
    assert listening == {"127.0.0.1"}


def test_backfill_create_runs_each_day_under_the_scheduler(ui: UI) -> None:
    # DAGs are paused when first seen; a paused DAG's backfill runs stay queued.
    deadline = time.monotonic() + 180
    while ui.airflow("dags", "unpause", PROBE).returncode != 0 and time.monotonic() < deadline:
        time.sleep(5)  # not parsed yet
    deadline = time.monotonic() + 180
    while True:  # the DAG processor has to have parsed the probe before a backfill can name it
        created = ui.airflow(
            "backfill", "create", "--dag-id", PROBE, "--from-date", DATES[0], "--to-date", DATES[-1]
        )
        if created.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert created.returncode == 0, created.stderr[-3000:]
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        listed = ui.airflow("dags", "list-runs", PROBE, "-o", "json")
        runs = json.loads(listed.stdout[listed.stdout.index("[") :]) if "[" in listed.stdout else []
        states = {r["logical_date"][:10]: r["state"] for r in runs if r["run_id"].startswith("backfill__")}
        if len(states) == len(DATES) and all(state in ("success", "failed") for state in states.values()):
            break
        time.sleep(10)
    assert states == dict.fromkeys(DATES, "success"), states
    for ds in DATES:
        assert layout.CATALOG.exists(ui.root, ds) and layout.IMPRESSIONS.exists(ui.root, ds), ds
    # The deadline alert (06:00 of each logical day) was long past: the scheduler ran the callback,
    # which knows a backfill and does not page anyone.
    log = ui.log.read_text()
    for ds in DATES:
        assert f"deadline passed for a backfill run, no alert: ICG {PROBE} run backfill__{ds}" in log


def test_stopping_the_script_stops_every_component(ui: UI) -> None:
    family = psutil.Process(ui.process.pid).children(recursive=True)
    assert len(family) >= 4  # scheduler, DAG processor, triggerer, API server (and their workers)
    ui.process.send_signal(signal.SIGTERM)
    ui.process.wait(timeout=90)
    _, alive = psutil.wait_procs(family, timeout=30)
    assert [_described(p) for p in alive if not _zombie(p)] == []


def _zombie(process: psutil.Process) -> bool:
    """Exited, waiting to be reaped (by init, in a container that may never happen): not running."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _described(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return f"pid {process.pid}"
