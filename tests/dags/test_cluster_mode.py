"""The DAGs' cluster mode: stages submitted as Ray jobs to a real two-node Ray cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from icg_core.config import WorldConfig
from icg_core.storage import ObjectStore
from icg_core.world.simulator import generate_world
from tests.dags.conftest import DAGS
from tests.ray_cluster import RayCluster

pytestmark = pytest.mark.slow

DS = "2026-11-03"


@pytest.fixture
def icg_common():
    sys.path.insert(0, str(DAGS))
    try:
        import icg_common

        yield icg_common
    finally:
        sys.path.remove(str(DAGS))


def test_dag_tasks_submit_stages_as_ray_jobs(ray_cluster: RayCluster, tmp_path: Path, icg_common) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    store = ObjectStore(str(tmp_path / "root"))
    generate_world(
        store, WorldConfig(n_items=12, n_users=20, days=2, impressions_per_day=60, n_taste_groups=2)
    )
    params = {"ray_address": ray_cluster.dashboard_url}
    args = ["--root", store.root]  # an absolute URI: the job's working directory is the cluster's

    result = icg_common.run_stage("extract", DS, params, args)
    assert result["where"].startswith("icg-extract-")  # a Ray job id, not "local"
    assert store.has_partition("impressions", ds=DS, area="staging/extract")

    store.put_bytes(store.list("raw/images/reference")[0], b"not an image")
    with pytest.raises(AirflowFailException, match="validate"):
        icg_common.run_stage("validate", DS, params, args)
    assert not store.has_partition("catalog_items", ds=DS, area="validated")
