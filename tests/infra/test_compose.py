"""The single-box compose stack: complete, healthy-checked, private by default; its bucket step works.

Structure (read, since no container engine runs here): the Airflow 3 components and the metadata
migration, the project's dags/ mounted where Airflow looks, a Ray head and a GPU worker with an
NVIDIA device reservation, an object store with a bucket-creation step; pinned images, healthchecks
on every long-running service, published ports on 127.0.0.1 only, declared named volumes, and
dependencies that exist. The bucket-creation script itself runs against a real SeaweedFS.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from icg_core.storage import ObjectStore
from tests.infra import COMPOSE_DIR, REPO, command_text, compose_environment, compose_mounts, load_compose

AIRFLOW_COMMANDS = (
    "airflow api-server",
    "airflow scheduler",
    "airflow dag-processor",
    "airflow triggerer",
    "airflow db migrate",
)
PUBLIC_PORTS: set[str] = set()  # services allowed to publish beyond loopback: none


def compose_structure_problems(compose: dict[str, Any], compose_dir: Path = COMPOSE_DIR) -> list[str]:
    services, problems = compose["services"], []
    declared_volumes = set(compose.get("volumes") or {})
    used_volumes = set()
    for name, service in services.items():
        image = str(service.get("image", ""))
        tag = image.rpartition(":")[2] if ":" in image.split("/")[-1] else ""
        if not tag or tag == "latest":
            problems.append(f"{name}: image {image!r} is not pinned to an exact tag")
        one_shot = service.get("restart") == "no"  # an init step others wait to complete
        if not one_shot and not (service.get("healthcheck") or {}).get("test"):
            problems.append(f"{name}: a long-running service needs a healthcheck")
        for port in service.get("ports") or []:
            if not str(port).startswith("127.0.0.1:") and name not in PUBLIC_PORTS:
                problems.append(f"{name}: port {port!r} is published beyond 127.0.0.1")
        for volume in service.get("volumes") or []:
            source = volume.get("source", "") if isinstance(volume, dict) else str(volume).split(":")[0]
            if source.startswith((".", "/")):
                if not (compose_dir / source).resolve().exists():
                    problems.append(f"{name}: bind mount source {source} does not exist")
            elif source:
                used_volumes.add(source)
        for dependency, rule in (service.get("depends_on") or {}).items():
            if dependency not in services:
                problems.append(f"{name}: depends on {dependency!r}, which is not a service")
            elif (rule or {}).get("condition") == "service_healthy" and not services[dependency].get(
                "healthcheck"
            ):
                problems.append(f"{name}: waits for {dependency} to be healthy, which has no healthcheck")
    problems += [
        f"named volume {v!r} is used but not declared" for v in sorted(used_volumes - declared_volumes)
    ]
    problems += [
        f"named volume {v!r} is declared but never used" for v in sorted(declared_volumes - used_volumes)
    ]
    commands = {name: command_text(s) for name, s in services.items()}
    for wanted in AIRFLOW_COMMANDS:
        if not any(c.startswith(wanted) for c in commands.values()):
            problems.append(f"no service runs `{wanted}`")
    for name, command in commands.items():
        if command.startswith("airflow"):
            folder = compose_environment(services[name]).get(
                "AIRFLOW__CORE__DAGS_FOLDER", "/opt/airflow/dags"
            )
            if compose_mounts(services[name], compose_dir).get(folder) != REPO / "dags":
                problems.append(f"{name}: the project's dags/ is not mounted at its DAGs folder {folder}")
    if not any(re.search(r"ray start .*--head", c) for c in commands.values()):
        problems.append("no Ray head (ray start --head)")
    gpu_workers = [
        n for n, s in services.items() if "ray start" in commands[n] and "--head" not in commands[n]
        and any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
                for d in (((s.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or [])
    ]  # fmt: skip
    if not gpu_workers:
        problems.append("no Ray worker reserves an NVIDIA GPU (deploy.resources.reservations.devices)")
    if not any("create_bucket.py" in c for c in commands.values()):
        problems.append("no bucket-creation step (create_bucket.py)")
    return problems


def test_compose_stack_is_complete_and_private() -> None:
    assert compose_structure_problems(load_compose()) == []


def test_checker_rejects_a_weak_stack() -> None:
    compose = copy.deepcopy(load_compose())
    services = compose["services"]
    services["airflow-api-server"]["ports"] = ["8080:8080"]
    del services["ray-head"]["healthcheck"]
    services["postgres"]["image"] = "postgres:latest"
    services["postgres"]["volumes"] = ["pgdata:/var/lib/postgresql/data"]
    del services["ray-gpu-worker"]["deploy"]
    del services["airflow-triggerer"]
    services["airflow-scheduler"]["volumes"] = []
    problems = "\n".join(compose_structure_problems(compose))
    for expected in ("'8080:8080' is published beyond 127.0.0.1", "ray-head: a long-running service needs a healthcheck",
                     "'postgres:latest' is not pinned", "named volume 'pgdata' is used but not declared",
                     "'postgres-data' is declared but never used", "reserves an NVIDIA GPU", "`airflow triggerer`",
                     "airflow-scheduler: the project's dags/ is not mounted", "waits for ray-head to be healthy"):  # fmt: skip
        assert expected in problems


def _create_bucket_module() -> Any:
    spec = importlib.util.spec_from_file_location("icg_create_bucket", COMPOSE_DIR / "create_bucket.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bucket_step_creates_the_configured_bucket_idempotently(
    s3_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = f"icg-compose-{uuid.uuid4().hex[:8]}"
    monkeypatch.delenv("ICG_CONFIG", raising=False)
    monkeypatch.setenv("ICG__STORAGE__ROOT", f"s3://{bucket}/icg")
    monkeypatch.setenv("ICG__STORAGE__S3_ENDPOINT_URL", s3_server.endpoint_url)
    create_bucket = _create_bucket_module()
    assert create_bucket.ensure_bucket(timeout_s=30) == bucket
    assert create_bucket.ensure_bucket(timeout_s=30) == bucket  # a restart of the stack finds it
    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")
    client.head_bucket(Bucket=bucket)
    store = ObjectStore(f"s3://{bucket}/icg", s3_endpoint_url=s3_server.endpoint_url)
    assert store.list("_probe") == []  # the write check cleans up after itself
    monkeypatch.setenv("ICG__STORAGE__ROOT", "./data")
    assert create_bucket.main() == 1  # a local root is refused with a message, not a traceback
