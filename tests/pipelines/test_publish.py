"""`python -m pipelines.publish`: expected rows come from the validated catalog and the segment table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa

from icg_core import layout
from icg_core.stages.publish import read_published
from icg_core.storage import ObjectStore
from tests.icg_core.conftest import table_of, utc
from tests.icg_core.stages.test_publish import ITEMS, SEGMENTS, _corrupt_image, full_day, stage, user_segments

DS = "2026-11-16"


def prepare_day(store: ObjectStore, *, segments: bool = True) -> list[dict]:
    """Validated catalog, segment centroids (optional) and a complete staged manifest for DS."""
    catalog = [
        {"item_id": item, "title": f"Title {item}", "category": "books",
         "reference_image_uri": store.uri(f"raw/images/reference/{item}.png"), "updated_at": utc("2026-11-10", 9)}
        for item in ITEMS
    ]  # fmt: skip
    store.write_table("catalog_items", table_of("catalog_items", catalog), ds=DS, area="validated")
    if segments:
        centroids = pa.table(
            {
                "segment_id": pa.array(SEGMENTS, pa.int32()),
                "centroid": pa.array(
                    np.eye(len(SEGMENTS), 4, dtype=np.float32).tolist(), pa.list_(pa.float32())
                ),
            }
        )
        store.write_table("segment_centroids", centroids, ds=DS, area="users")
        layout.USER_SEGMENTS.write(store, user_segments(), DS)
    rows = full_day(store, DS)
    stage(store, DS, rows)
    return rows


def run_publish(store: ObjectStore, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ}
    if store.s3_endpoint_url:
        env["AWS_ENDPOINT_URL_S3"] = store.s3_endpoint_url
    return subprocess.run(
        [sys.executable, "-m", "pipelines.publish", "--root", store.root, "--ds", DS, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_publish_stage_publishes_the_day(any_store: ObjectStore) -> None:
    prepare_day(any_store)
    out = run_publish(any_store, "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["rows"], summary["items"], summary["segments"], summary["latest"]) == (6, 3, 2, DS)
    assert read_published(any_store).num_rows == 6


def test_missing_segment_table_is_a_clear_error_and_nothing_is_published(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    prepare_day(store, segments=False)
    out = run_publish(store)
    assert out.returncode == 2
    assert (
        f"segment_centroids for ds={DS} is missing" in out.stderr
        and "run the users stage first" in out.stderr
    )
    assert layout.PUBLISHED_COVERS.latest(store) is None


def test_bad_manifest_is_refused_naming_the_row(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    rows = prepare_day(store)
    stage(store, DS, _corrupt_image(store, rows))
    out = run_publish(store)
    assert out.returncode == 2
    assert "error: covers for ds=2026-11-16 not published" in out.stderr
    assert "image_corrupt (1)" in out.stderr and "item=i2 segment=0" in out.stderr
    assert not layout.PUBLISHED_COVERS.exists(store, DS)
