"""features and generate on Ray: a real two-node cluster, a killed worker, S3 + publish + downstream readers.

Every test builds its tiny world where it runs (see tests/icg_core/stages/test_generate.py), then drives the
stages through ``RAY_ADDRESS`` as a cluster deployment would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from icg_core import layout
from icg_core.stages.publish import publish_day
from icg_core.storage import ObjectStore
from pipelines.features import run_features
from pipelines.generate import FAULT_ENV, run_generate
from tests.icg_core.stages.test_generate import build_tiny_world, next_day
from tests.ray_cluster import RayCluster, node_ids_by_role

pytestmark = pytest.mark.slow


@pytest.fixture
def on_cluster(ray_cluster: RayCluster, monkeypatch: pytest.MonkeyPatch) -> RayCluster:
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.gcs_address)
    return ray_cluster


def test_features_and_generate_run_on_both_nodes_vlm_once_per_item(on_cluster, tmp_path: Path) -> None:
    import ray

    store, cfg, ds = build_tiny_world(ObjectStore(str(tmp_path / "root")), tmp_path / "cache")
    encoder_version = store.read_table("item_features", ds=ds, area="features")["encoder_version"][0].as_py()
    store.delete_prefix(f"features/{encoder_version}")  # empty cache: the VLM must encode every item once

    features = run_features(store, cfg, ds)
    n_items = features["items"]
    assert (features["encoded"], features["reused"]) == (n_items, 0)
    assert run_features(store, cfg, ds)["encoded"] == 0  # cached now

    summary = run_generate(store, cfg, ds)
    n_rows = n_items * summary["segments"]
    assert summary["rows"] == summary["generated"] == n_rows
    assert summary["encoder_calls"] == 0  # diffusion only: the VLM ran once per item, in features
    with ray.init(address=on_cluster.gcs_address):
        nodes = set(node_ids_by_role().values())
    # Generation (the heavy stage, whose pool waits for every actor) spreads over both nodes; the
    # features pool may finish a tiny catalog on whichever actor started first.
    assert set(summary["extra"]["nodes"]) == nodes
    assert set(features["nodes"]) and set(features["nodes"]) <= nodes
    assert layout.STAGED_COVERS.read(store, ds).num_rows == n_rows


def test_killed_worker_is_retried_and_every_cover_written_once(
    on_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, cfg, ds = build_tiny_world(ObjectStore(str(tmp_path / "root")), tmp_path / "cache")
    cfg = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"reuse_previous_days": False})})
    monkeypatch.setenv(FAULT_ENV, "1")  # the first actor to finish a cover exits right after it

    summary = run_generate(store, cfg, ds)
    # The fault did happen: usually once, twice when both actors finished their first cover together.
    crashes = len(store.list(layout.fault_markers(ds)))
    assert crashes >= 1
    n_rows = summary["items"] * summary["segments"]
    # The cover each crashed actor finished was kept; every other one was generated exactly once.
    assert (summary["kept"], summary["generated"], summary["rows"]) == (crashes, n_rows - crashes, n_rows)
    manifest = layout.STAGED_COVERS.read(store, ds)
    keys = set(zip(manifest["item_id"].to_pylist(), manifest["segment_id"].to_pylist(), strict=True))
    assert len(keys) == manifest.num_rows == n_rows
    pngs = [k for k in store.list(f"covers/ds={ds}") if k.endswith(".png")]
    assert len(pngs) == n_rows


def test_generate_publish_on_s3_read_back_by_pandas_pyarrow_duckdb(
    on_cluster, s3_store, tmp_path: Path
) -> None:
    import duckdb
    import pandas as pd
    import pyarrow.dataset as pads

    store, cfg, ds = build_tiny_world(s3_store, tmp_path / "cache")
    run_features(store, cfg, ds)
    generated = run_generate(store, cfg, ds)
    catalog = store.read_table("catalog_items", ds=ds, area="validated")["item_id"].to_pylist()
    segments = store.read_table("segment_centroids", ds=ds, area="users")["segment_id"].to_pylist()
    published = publish_day(store, ds, expected_item_ids=catalog, expected_segment_ids=segments)
    assert published.rows == generated["rows"] == len(catalog) * len(segments)

    # A downstream service: follow _latest, read the committed files listed in _SUCCESS.
    fs = store.fsspec()
    table_dir = store.fsspec_path("manifests/covers")  # the documented downstream path
    latest = json.loads(fs.cat(f"{table_dir}/_latest"))["ds"]
    assert latest == ds
    files = [
        f"{table_dir}/ds={latest}/{name}"
        for name in json.loads(fs.cat(f"{table_dir}/ds={latest}/_SUCCESS"))["files"]
    ]

    frame = pd.concat([pd.read_parquet(f, filesystem=fs) for f in files])
    dataset = pads.dataset([f.removeprefix("s3://") for f in files], format="parquet", filesystem=store.fs)
    con = duckdb.connect()
    con.register_filesystem(fs)
    listed = ", ".join(f"'{f}'" for f in files)
    counted = con.sql(
        f"select count(*), count(distinct item_id || ':' || segment_id) from read_parquet([{listed}])"
    ).fetchall()[0]
    assert len(frame) == dataset.count_rows() == counted[0] == counted[1] == published.rows
    assert pc.all(pc.is_valid(dataset.to_table()["reward_preference"])).as_py()
    uri = frame.iloc[0]["cover_uri"]
    assert uri.startswith(store.uri("covers/ds=")) and store.read_uri(uri)[:8] == b"\x89PNG\r\n\x1a\n"

    # The next night on S3: one changed title -> only its covers are regenerated, the rest copied.
    day = next_day(store, ds, {catalog[0]: "another title entirely"})
    assert run_features(store, cfg, day)["encoded"] == 1
    nightly = run_generate(store, cfg, day)
    assert (nightly["generated"], nightly["copied"]) == (len(segments), (len(catalog) - 1) * len(segments))


def test_bad_input_is_a_clear_error_before_ray_starts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    for stage in ("features", "generate"):
        out = subprocess.run(
            [sys.executable, "-m", f"pipelines.{stage}", "--root", str(tmp_path), "--ds", "2026-11-15"],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert out.returncode == 2, out.stderr
        assert "no validated catalog for ds=2026-11-15" in out.stderr and "ray started" not in out.stderr
    assert not list(tmp_path.glob("staging/covers/**/_SUCCESS"))
