"""The stage launcher: the same entry point as a local child process and as a Ray job on a real cluster."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from icg_core import layout
from icg_core.config import WorldConfig
from icg_core.storage import ObjectStore
from icg_core.world.simulator import generate_world
from pipelines.launch import StageCrashed, StageRefused, run_stage
from tests.ray_cluster import RayCluster

TINY = WorldConfig(
    seed=1,
    n_items=6,
    n_categories=2,
    n_users=12,
    n_taste_groups=2,
    days=2,
    impressions_per_day=40,
    image_size=32,
    variants_per_item=2,
)


def tiny_world(root: Path) -> tuple[str, str]:
    """A tiny embedded world under ``root``; returns (absolute root, first nightly ds)."""
    store = ObjectStore(str(root))
    summary = generate_world(store, TINY)
    return store.root, summary.first_nightly_ds


def corrupt_reference_image(root: str) -> None:
    store = ObjectStore(root)
    key = layout.reference_image("item_00000")
    store.put_bytes(key, store.get_bytes(key)[:60])  # header intact, pixel data cut off


def test_local_extract_succeeds_and_validate_refuses_a_corrupt_image(tmp_path: Path) -> None:
    root, ds = tiny_world(tmp_path / "world")
    run = run_stage("extract", ds=ds, root=root, timeout_s=300)
    assert run.where == "local" and run.ds == ds
    assert ObjectStore(root).has_partition("catalog_items", ds=ds, area="staging/extract")

    corrupt_reference_image(root)
    with pytest.raises(StageRefused) as refused:
        run_stage("validate", ds=ds, root=root, timeout_s=300)
    message = str(refused.value)
    assert f"stage validate ds={ds} refused: validation failed for ds={ds}" in message
    assert "item_00000" in message and "corrupt" in message  # the failed check, not just "failed"
    assert not ObjectStore(root).has_partition("catalog_items", ds=ds, area="validated")


def test_local_crash_is_not_a_refusal(tmp_path: Path) -> None:
    with pytest.raises(StageCrashed, match="No module named pipelines.no_such_stage"):
        run_stage("no_such_stage", ds="2026-11-03", root=str(tmp_path), timeout_s=120)


def test_local_timeout_stops_a_silent_stage(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(StageCrashed, match="ran past 1s"):
        run_stage(
            "extract",
            ds="2026-11-03",
            root=str(tmp_path),
            timeout_s=1,
            env={"PYTHONPATH": str(_sleeper(tmp_path))},
        )
    assert time.monotonic() - started < 30


def _sleeper(tmp_path: Path) -> Path:
    """A ``sitecustomize`` that sleeps silently, so the child hangs before printing anything."""
    folder = tmp_path / "sleeper"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text("import time\ntime.sleep(120)\n")
    return folder


@pytest.mark.slow
def test_ray_job_runs_the_stage_and_reports_refusals(ray_cluster: RayCluster, tmp_path: Path) -> None:
    root, ds = tiny_world(tmp_path / "world")
    started = time.monotonic()
    run = run_stage("extract", ds=ds, root=root, ray_address=ray_cluster.dashboard_url, timeout_s=300)
    print(f"Ray job round trip (extract): {time.monotonic() - started:.1f}s")
    assert run.where.startswith(f"icg-extract-{ds}-")
    assert ObjectStore(root).has_partition("catalog_items", ds=ds, area="staging/extract")
    assert "staging/extract" in run.output_tail  # the job's own output came back

    # publish refuses (exit 2) a day that was never validated: a refusal, not a crash.
    with pytest.raises(
        StageRefused, match="catalog_items for ds=.* is missing .* run the validate stage first"
    ):
        run_stage("publish", ds=ds, root=root, ray_address=ray_cluster.dashboard_url, timeout_s=300)

    with pytest.raises(StageCrashed, match="exit status 1"):
        run_stage("no_such_stage", ds=ds, root=root, ray_address=ray_cluster.dashboard_url, timeout_s=300)
