"""An isolated Airflow home (SQLite, no examples) with the project's dags/ folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
AIRFLOW = str(Path(sys.executable).parent / "airflow")

# In-process imports of airflow (the DagBag test) must not touch ~/airflow or load the examples.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="icg-airflow-"))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)


def airflow_env(home: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        **extra,
    }


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite metadata database in a temporary AIRFLOW_HOME."""
    home = tmp_path_factory.mktemp("airflow_home")
    subprocess.run(
        [AIRFLOW, "db", "migrate"], env=airflow_env(home), check=True, capture_output=True, timeout=300
    )
    return home


def dags_test(
    home: Path, dag_id: str, ds: str, *, conf: dict | None = None, timeout: int = 900, **env: str
) -> subprocess.CompletedProcess:
    """``airflow dags test DAG DS`` in-process in a child, with trigger params and extra environment."""
    return subprocess.run(
        [AIRFLOW, "dags", "test", dag_id, ds, *(["--conf", json.dumps(conf)] if conf else [])],
        env=airflow_env(home, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
