"""features and generate on Ray: a real two-node cluster, a killed worker, S3 + publish + downstream readers.

Every test builds its tiny world where it runs (see tests/icg_core/stages/test_generate.py), then drives the
stages through ``RAY_ADDRESS`` as a cluster deployment would.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from icg_core import layout
from icg_core.config import RewardWeights
from icg_core.serving.policy import Sampling
from icg_core.stages.generate import GenerateInputError, GeneratePlan, writer_fields, writer_plan
from icg_core.stages.publish import run_publish
from icg_core.storage import ObjectStore
from pipelines.features import run_features
from pipelines.generate import FAULT_ENV, run_generate
from tests.icg_core.stages.test_generate import build_tiny_world, next_day
from tests.ray_cluster import RayCluster, node_ids_by_role

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RAY_WORD = re.compile(r"\bray\b|/ray/|RayDeprecationWarning", re.IGNORECASE)  # not "array"


@pytest.fixture
def on_cluster(ray_cluster: RayCluster, monkeypatch: pytest.MonkeyPatch) -> RayCluster:
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.gcs_address)
    return ray_cluster


def test_features_and_generate_run_on_both_nodes_vlm_once_per_item(
    on_cluster, tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import ray

    store, cfg, ds = build_tiny_world(ObjectStore(str(tmp_path / "root")), tmp_path / "cache")
    encoder_version = store.read_table("item_features", ds=ds, area="features")["encoder_version"][0].as_py()
    store.delete_prefix(f"features/{encoder_version}")  # empty cache: the VLM must encode every item once
    capfd.readouterr()  # what building the world printed

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        features = run_features(store, cfg, ds)
        n_items = features["items"]
        assert (features["encoded"], features["reused"]) == (n_items, 0)
        cached = run_features(store, cfg, ds)  # cached now: answered without Ray or the encoder
        assert (cached["encoded"], cached["actors"]) == (0, 0)
        summary = run_generate(store, cfg, ds)
    # No deprecated Ray API in our calls: no deprecation warning pointing at our code (Ray points its
    # warnings at the caller; Ray's own DataContext() warns about its own fields, which is not ours),
    # and no "deprecated" line about Ray in the logs or the output of the driver and the actors.
    deprecated = [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, DeprecationWarning) and Path(w.filename).is_relative_to(REPO)
        and not Path(w.filename).is_relative_to(REPO / ".venv")
    ]  # fmt: skip
    printed = capfd.readouterr()
    lines = [*(printed.out + printed.err).splitlines(), *(r.getMessage() for r in caplog.records)]
    deprecated += [line for line in lines if "deprecat" in line.lower() and RAY_WORD.search(line)]
    assert deprecated == []
    n_rows = n_items * summary["segments"]
    assert summary["rows"] == summary["generated"] == n_rows
    assert summary["encoder_calls"] == 0  # diffusion only: the VLM ran once per item, in features
    assert (summary["extra"]["actors"], summary["extra"]["min_actors"]) == (2, 2)  # a fixed pool by default
    progress = [r.getMessage() for r in caplog.records if r.name == "icg_core.progress"]
    assert f"generate ds={ds}: {n_rows} of {n_rows} covers (100%)" in progress[-1]
    assert any(f"features ds={ds}: {n_items} of {n_items} items (100%)" in line for line in progress)
    with ray.init(address=on_cluster.gcs_address):
        nodes = set(node_ids_by_role().values())
    # Generation (the heavy stage, whose pool waits for every actor) spreads over both nodes; the
    # features pool may finish a tiny catalog on whichever actor started first.
    assert set(summary["extra"]["nodes"]) == nodes
    assert set(features["nodes"]) and set(features["nodes"]) <= nodes
    assert layout.STAGED_COVERS.read(store, ds).num_rows == n_rows


def test_killed_worker_is_restarted_and_every_cover_written_once(
    on_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, cfg, ds = build_tiny_world(ObjectStore(str(tmp_path / "root")), tmp_path / "cache")
    generate = {"reuse_previous_days": False, "max_actor_restarts": 1}
    cfg = cfg.model_copy(update={"generate": cfg.generate.model_copy(update=generate)})
    monkeypatch.setenv(FAULT_ENV, "1")  # the first actor to finish a cover exits right after it

    summary = run_generate(store, cfg, ds)
    # The fault did happen: usually once, twice when both actors finished their first cover together.
    crashes = len(store.list(layout.fault_markers(ds)))
    assert crashes >= 1
    # Ray restarted the crashed actor (rebuilt from its plain arguments), and it wrote covers again.
    assert summary["extra"]["restarted_actors"] >= 1
    n_rows = summary["items"] * summary["segments"]
    # The cover each crashed actor finished was kept; every other one was generated exactly once.
    assert (summary["kept"], summary["generated"], summary["rows"]) == (crashes, n_rows - crashes, n_rows)
    manifest = layout.STAGED_COVERS.read(store, ds)
    keys = set(zip(manifest["item_id"].to_pylist(), manifest["segment_id"].to_pylist(), strict=True))
    assert len(keys) == manifest.num_rows == n_rows
    pngs = [k for k in store.list(f"covers/ds={ds}") if k.endswith(".png")]
    assert len(pngs) == n_rows


def test_an_actor_crashing_past_max_actor_restarts_fails_the_stage(
    on_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, cfg, ds = build_tiny_world(ObjectStore(str(tmp_path / "root")), tmp_path / "cache")
    cfg = cfg.model_copy(update={"generate": cfg.generate.model_copy(update={"max_actor_restarts": 0})})
    monkeypatch.setenv(FAULT_ENV, "1")

    with pytest.raises(Exception, match="max_actor_restarts=0"):
        run_generate(store, cfg, ds)
    assert store.list(layout.fault_markers(ds))
    assert not layout.STAGED_COVERS.exists(store, ds)


def test_a_writer_plan_travels_as_plain_values(tmp_path: Path) -> None:
    store, ds = ObjectStore(str(tmp_path)), "2026-11-15"
    centroids = {0: np.ones(4, np.float32), 3: np.arange(4, dtype=np.float32)}
    table = pa.table(
        {
            "segment_id": pa.array(list(centroids), pa.int32()),
            "centroid": pa.array([c.tolist() for c in centroids.values()], pa.list_(pa.float32())),
        }
    )
    layout.SEGMENT_CENTROIDS.write(store, table, ds)
    plan = GeneratePlan(
        ds, pa.table({"item_id": ["a"]}), centroids, "v3", {"aesthetic": "v1"}, "2026-11-14",
        Sampling(4, 3.0, "ddim", reward_steps=2, candidates=3), RewardWeights(preference=1.0),
    )  # fmt: skip
    fields = writer_fields(plan)
    rebuilt = writer_plan(store, json.loads(json.dumps(fields)))  # plain values: JSON round trip
    assert rebuilt.items.num_rows == 0 and rebuilt.segment_ids == plan.segment_ids
    for name in ("ds", "generator_version", "reward_versions", "previous_ds", "sampling", "reward_weights"):
        assert getattr(rebuilt, name) == getattr(plan, name), name
    assert all(np.array_equal(rebuilt.centroids[s], centroids[s]) for s in centroids)
    with pytest.raises(GenerateInputError, match="segments of ds=2026-11-15 changed"):
        writer_plan(store, {**fields, "segment_ids": [0, 1, 3]})


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
    published = run_publish(store, cfg, ds)
    assert published.rows == generated["rows"] == len(catalog) * len(segments)

    # A downstream service (docs/consumers.md): follow _latest, read the day's Parquet files.
    fs = store.fsspec()
    table_dir = store.fsspec_path("manifests/covers")  # the documented downstream path
    latest = json.loads(fs.cat(f"{table_dir}/_latest"))["ds"]
    assert latest == ds
    files = [f"s3://{f}" for f in fs.glob(f"{table_dir}/ds={latest}/*.parquet")]
    assert len(files) == 1

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
    assert uri.startswith("covers/ds=") and store.read_object(uri)[:8] == b"\x89PNG\r\n\x1a\n"

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
