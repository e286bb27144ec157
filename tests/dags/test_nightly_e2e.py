"""`airflow dags test icg_nightly <ds>` end to end on a tiny embedded world."""

from __future__ import annotations

from pathlib import Path

import pytest

from icg_core.config import WorldConfig
from icg_core.storage import ObjectStore
from icg_core.world.simulator import generate_world
from tests.dags.conftest import dags_test

pytestmark = pytest.mark.slow

DS = "2026-11-03"


@pytest.fixture
def tiny_world(tmp_path: Path) -> ObjectStore:
    store = ObjectStore(str(tmp_path / "root"))
    generate_world(store, WorldConfig(n_items=16, n_users=24, days=2, impressions_per_day=80, n_taste_groups=2))
    return store


def test_nightly_runs_end_to_end(airflow_home: Path, tiny_world: ObjectStore) -> None:
    result = dags_test(airflow_home, "icg_nightly", DS, ICG__STORAGE__ROOT=tiny_world.root)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "state=success" in result.stdout + result.stderr
    assert tiny_world.has_partition("catalog_items", ds=DS, area="validated")
    assert tiny_world.read_table("impressions", ds=DS, area="validated").num_rows > 0


def test_bad_input_stops_the_run_with_the_reason(airflow_home: Path, tiny_world: ObjectStore) -> None:
    victim = tiny_world.list("raw/images/reference")[0]
    tiny_world.put_bytes(victim, b"this is not a png")
    result = dags_test(airflow_home, "icg_nightly", DS, ICG__STORAGE__ROOT=tiny_world.root)
    log = result.stdout + result.stderr
    assert "state=failed" in log
    assert "not_an_image" in log or "not an image" in log
    assert not tiny_world.has_partition("catalog_items", ds=DS, area="validated")
