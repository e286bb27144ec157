"""The DAGs' cluster mode: stages submitted as Ray jobs to a real two-node Ray cluster.

The operator runs as an Airflow task would run it (``airflow tasks test`` in a child process for the
kill test): its Ray job's log reaches the task log while the job runs, and killing the task stops
the job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from icg_core.config import WorldConfig
from icg_core.storage import ObjectStore
from icg_core.world.simulator import generate_world
from pipelines.orchestration import FAILURE_XCOM_KEY, StageOperator
from tests.dags.conftest import AIRFLOW, airflow_env
from tests.ray_cluster import RayCluster

pytestmark = pytest.mark.slow

DS = "2026-11-03"


class RecordingTaskInstance:
    """The one task-instance method a stage operator calls (on a refusal): keeps what was pushed."""

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def test_dag_tasks_submit_stages_as_ray_jobs(ray_cluster: RayCluster, tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    store = ObjectStore(str(tmp_path / "root"))
    generate_world(
        store, WorldConfig(n_items=12, n_users=20, days=2, impressions_per_day=60, n_taste_groups=2)
    )
    context = {"ds": DS, "params": {"ray_address": ray_cluster.dashboard_url}, "ti": RecordingTaskInstance()}
    root_args = ["--root", store.root]  # an absolute URI: the job's working directory is the cluster's

    result = StageOperator(stage="extract", doc="", args=lambda _: root_args).execute(context)
    assert result["where"].startswith("icg-extract-")  # a Ray job id, not "local"
    assert store.has_partition("impressions", ds=DS, area="staging/extract")

    store.put_bytes(store.list("raw/images/reference")[0], b"not an image")
    with pytest.raises(AirflowFailException, match="validate"):
        StageOperator(stage="validate", doc="", args=lambda _: root_args).execute(context)
    assert not store.has_partition("catalog_items", ds=DS, area="validated")
    assert "validation failed" in context["ti"].pushed[FAILURE_XCOM_KEY]  # for the report task


def test_a_bad_ray_address_fails_the_task_at_once(tmp_path: Path) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    context = {"ds": DS, "params": {"ray_address": "ray://head:10001"}, "ti": RecordingTaskInstance()}
    with pytest.raises(AirflowFailException, match="dashboard's HTTP address"):
        StageOperator(stage="extract", doc="").execute(context)


def _job(ray_cluster: RayCluster, stage: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray_cluster.dashboard_url)
    jobs = [job for job in client.list_jobs() if (job.metadata or {}).get("stage") == stage]
    return client, (jobs[-1] if jobs else None)


def _read_until(task: subprocess.Popen, marker: str, timeout_s: float) -> list[str]:
    """The task's output lines up to the first one containing ``marker`` (or until the timeout)."""
    assert task.stdout is not None
    os.set_blocking(task.stdout.fileno(), False)
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not any(marker in line for line in lines):
        line = task.stdout.readline()
        lines.append(line) if line else time.sleep(0.1)
    return lines


def test_killing_the_airflow_task_stops_its_ray_job_and_the_log_streams_before_the_end(
    ray_cluster: RayCluster, airflow_home: Path, tmp_path: Path
) -> None:
    from pipelines.launch import start_stage

    root = ObjectStore(str(tmp_path / "root"))
    generate_world(
        root, WorldConfig(n_items=12, n_users=20, days=2, impressions_per_day=60, n_taste_groups=2)
    )
    for stage in ("extract", "validate"):
        start_stage(stage, ds=DS, root=root.root).wait(300)
    # Bootstrap trains for minutes: the task is killed while its Ray job runs. The root reaches the
    # job as the worker's ICG__ setting (pipelines.orchestration.forwarded_settings).
    env = airflow_env(
        airflow_home, ICG_RAY_JOBS_ADDRESS=ray_cluster.dashboard_url, ICG__STORAGE__ROOT=root.root
    )
    task = subprocess.Popen(
        [AIRFLOW, "tasks", "test", "icg_bootstrap", "bootstrap", DS],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        lines = _read_until(task, "stage=bootstrap root=", timeout_s=300)  # the stage's first log line
        assert any("stage=bootstrap root=" in line for line in lines), "".join(lines[-40:])
        client, job = _job(ray_cluster, "bootstrap")
        assert job is not None and not client.get_job_status(job.submission_id).is_terminal()

        os.killpg(task.pid, signal.SIGTERM)  # what Airflow's supervisor sends a task it kills
        task.wait(timeout=120)
        for _ in range(60):
            status = client.get_job_status(job.submission_id)
            if status.is_terminal():
                break
            time.sleep(1)
        assert status == "STOPPED", status
    finally:
        if task.poll() is None:
            os.killpg(task.pid, signal.SIGKILL)
    print(json.dumps({"task_exit": task.returncode, "job": job.submission_id}))
