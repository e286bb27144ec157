"""Every DAG imports cleanly and fast, carries owner, tags and retries, and imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.dags.conftest import DAGS, REPO

EXPECTED_DAGS = {"icg_nightly", "icg_bootstrap", "icg_ablation"}
HEAVY_MODULES = ("torch", "ray", "diffusers", "transformers", "pandas", "great_expectations", "duckdb")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    if str(DAGS) not in sys.path:
        sys.path.insert(0, str(DAGS))  # as the DAG processor does for the dags folder
    started = time.monotonic()
    bag = DagBag(dag_folder=str(DAGS))
    bag.parse_seconds = time.monotonic() - started
    return bag


def test_every_dag_imports_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert EXPECTED_DAGS <= set(dagbag.dag_ids)


def test_dags_parse_in_under_two_seconds(dagbag) -> None:
    assert dagbag.parse_seconds < 2.0, f"DagBag took {dagbag.parse_seconds:.2f}s"


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_dag_has_owner_tags_and_retries(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert "icg" in dag.tags
    for task in dag.tasks:
        assert task.owner and task.owner != "airflow", f"{dag_id}.{task.task_id} has no owner"
        assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


def test_nightly_schedule_and_concurrency(dagbag) -> None:
    dag = dagbag.dags["icg_nightly"]
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.schedule == "@daily"


def test_dag_files_import_nothing_heavy() -> None:
    code = (
        "import sys; sys.path.insert(0, {!r}); import importlib;"
        "[importlib.import_module(m) for m in {!r}];"
        "print(','.join(m for m in {!r} if m in sys.modules))"
    ).format(str(DAGS), [p.stem for p in DAGS.glob("*.py")], HEAVY_MODULES)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"DAG files import heavy modules at top level: {out.stdout.strip()}"


def test_ruff_airflow3_rules_pass() -> None:
    ruff = str(Path(sys.executable).parent / "ruff")
    out = subprocess.run([ruff, "check", str(DAGS), "--select", "AIR3"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_nightly_runs_every_stage_in_order_and_publishes_the_manifest_asset(dagbag) -> None:
    dag = dagbag.dags["icg_nightly"]
    order = [
        "extract",
        "validate",
        "users",
        "rewards",
        "features",
        "finetune",
        "generate",
        "evaluate",
        "publish",
        "report",
    ]
    assert set(dag.task_ids) == set(order)
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    outlets = dag.get_task("publish").outlets
    assert [(a.name, a.uri) for a in outlets] == [("icg_covers_manifest", "icg://manifests/covers")]


def test_nightly_trigger_form_validates_its_params(dagbag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    params = dagbag.dags["icg_nightly"].params
    assert set(params) == {"segments", "items_limit", "skip_training", "force", "ray_address"}
    assert params.validate() == {
        "segments": None,
        "items_limit": None,
        "skip_training": False,
        "force": False,
        "ray_address": None,
    }
    with pytest.raises(ParamValidationError, match="minimum"):
        params["segments"] = 0  # the trigger form refuses it
