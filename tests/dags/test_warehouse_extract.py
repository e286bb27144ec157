"""The nightly's extract task reads a PostgreSQL warehouse named by an Airflow connection id."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from icg_core import layout
from icg_core.storage import ObjectStore
from tests.dags.conftest import AIRFLOW, airflow_env
from tests.icg_core.conftest import RUN_DS, RawDay
from tests.icg_core.data.test_warehouse import load_warehouse
from tests.postgres import PostgresServer


@pytest.mark.slow
def test_extract_task_resolves_the_connection_from_airflows_metadata_database(
    airflow_home: Path, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    raw = RawDay(ObjectStore(str(tmp_path / "root")))
    raw.populate()
    uri = postgres_server.database()
    load_warehouse(raw.store, uri, schema="shop")
    # The connection lives in Airflow's metadata database, not in the environment.
    env = airflow_env(airflow_home, ICG__STORAGE__ROOT=raw.store.root, ICG__EXTRACT__SOURCE="postgres",
                      ICG__EXTRACT__POSTGRES_CONN_ID="shop_dw", ICG__EXTRACT__POSTGRES_SCHEMA="shop")  # fmt: skip
    env.pop("AIRFLOW_CONN_SHOP_DW", None)
    added = subprocess.run(
        [AIRFLOW, "connections", "add", "shop_dw", "--conn-uri", uri.replace("postgresql://", "postgres://")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    out = subprocess.run(
        [AIRFLOW, "tasks", "test", "icg_nightly", "extract", RUN_DS],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    meta = layout.STAGED_DAY.meta(raw.store, RUN_DS)
    assert meta is not None and meta["source"] == "postgres"
    assert layout.staged_table("impressions").read(raw.store, RUN_DS).num_rows == 84
