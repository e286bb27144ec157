"""Real-format data end to end: a MovieLens-format release imported, bootstrapped and run nightly, no oracle."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from icg_core import layout
from icg_core.stages.publish import cover_for, read_published
from icg_core.storage import ObjectStore
from tests.dags.conftest import dags_test
from tests.movielens import write_movielens
from tests.tiny import write_tiny_config

pytestmark = pytest.mark.slow
DS = "2026-11-15"  # the day after the release's last ratings


def test_a_movielens_release_gets_covers_and_a_report_without_an_oracle(
    airflow_home: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    release = write_movielens(tmp_path / "ml-format")
    store = ObjectStore(str(tmp_path / "root"))
    config = write_tiny_config(tmp_path / "tiny.yaml", validation={"min_day_rows_fraction": 0.25})
    imported = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "import", "movielens", str(release), "--root", store.root],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr[-3000:]
    env = {"ICG__STORAGE__ROOT": store.root, "ICG_CONFIG": str(config)}
    for dag in ("icg_bootstrap", "icg_nightly"):
        run = dags_test(airflow_home, dag, DS, **env)
        assert "state=success" in run.stdout + run.stderr, (run.stdout + run.stderr)[-6000:]
    seconds = time.monotonic() - started

    assert not store.list(layout.oracle_root())  # real data: nothing knows why users clicked
    manifest = read_published(store)
    items = layout.CATALOG.read(store, DS).column("item_id").to_pylist()
    segments = layout.SEGMENT_CENTROIDS.read(store, DS).column("segment_id").to_pylist()
    assert len(items) == 240 and manifest.num_rows == len(items) * len(segments)
    users = read_published(store, table=layout.PUBLISHED_USER_SEGMENTS)
    found = cover_for(store, users["user_id"][0].as_py(), items[0])
    assert store.read_object(found.cover_uri)[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = store.get_json(layout.metrics(DS))
    assert set(metrics["not_measured"]) >= {"oracle_ctr", "category_top1", "oracle_best"}
    icg = metrics["variants"]["icg"]
    assert icg["oracle_ctr"] is None and "oracle_best" not in metrics["variants"]
    for measured in ("aesthetic", "relevance", "preference", "item_recall_1"):
        assert icg[measured] is not None, measured
    # No oracle: the only click score is the reward the covers were made with, so no win is claimed.
    assert metrics["verdict"]["outcome"] == "not shown"
    page = store.get_bytes(layout.report_page(DS)).decode()
    assert "Not measured on this data" in page and 'data-verdict="not shown"' in page
    print(f"\nMovieLens-format release ({len(items)} items, {len(segments)} segments): import, bootstrap "
          f"and nightly in {seconds:.0f} s")  # fmt: skip
