"""The stage launcher: the same entry point as a local child process and as a Ray job on a real cluster."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from icg_core import layout
from icg_core.config import WorldConfig
from icg_core.storage import ObjectStore
from icg_core.world.simulator import generate_world
from pipelines.launch import LineRelay, StageCrashed, StageRefused, check_ray_address, start_stage
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
    run = start_stage("extract", ds=ds, root=root).wait(300)
    assert run.where == "local" and run.ds == ds
    assert ObjectStore(root).has_partition("catalog_items", ds=ds, area="staging/extract")

    corrupt_reference_image(root)
    with pytest.raises(StageRefused) as refused:
        start_stage("validate", ds=ds, root=root).wait(300)
    message = str(refused.value)
    assert f"stage validate ds={ds} refused: validation failed for ds={ds}" in message
    assert "item_00000" in message and "corrupt" in message  # the failed check, not just "failed"
    assert not ObjectStore(root).has_partition("catalog_items", ds=ds, area="validated")


def test_local_crash_is_not_a_refusal(tmp_path: Path) -> None:
    with pytest.raises(StageCrashed, match="No module named pipelines.no_such_stage"):
        start_stage("no_such_stage", ds="2026-11-03", root=str(tmp_path)).wait(120)


def test_local_timeout_stops_a_silent_stage(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(StageCrashed, match="ran past 1s"):
        start_stage(
            "extract", ds="2026-11-03", root=str(tmp_path), env={"PYTHONPATH": str(_sleeper(tmp_path))}
        ).wait(timeout_s=1)
    assert time.monotonic() - started < 30


def _sleeper(tmp_path: Path, first_line: str = "") -> Path:
    """A ``sitecustomize`` that (optionally prints a line, then) sleeps silently: a hung child."""
    folder = tmp_path / "sleeper"
    folder.mkdir()
    say = f"print({first_line!r}, flush=True)\n" if first_line else ""
    (folder / "sitecustomize.py").write_text(f"import time\n{say}time.sleep(120)\n")
    return folder


def test_a_local_stage_streams_its_log_and_stops_with_its_process_group(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipelines.launch")
    env = {"PYTHONPATH": str(_sleeper(tmp_path, first_line="working on it"))}
    launched = start_stage("extract", ds="2026-11-03", root=str(tmp_path), env=env)
    deadline = time.monotonic() + 60
    while "working on it" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "[extract local] working on it" in caplog.text  # relayed while the stage still runs

    launched.stop("the test stops it")
    with pytest.raises(StageCrashed, match="stopped: the test stops it"):
        launched.wait(timeout_s=30)
    with pytest.raises(ProcessLookupError):
        os.killpg(launched.process.pid, 0)  # the whole group is gone


def test_relayed_lines_keep_the_stage_s_levels(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pipelines.launch")
    relay = LineRelay("validate", "local")
    relay.feed('{"ts": "t", "level": "WARNING", "logger": "icg.x", "message": "3 rows dropped"}\n')
    relay.feed("2026-12-01 02:00:00,123 ERROR icg.stages.validate: bad rows\n")
    relay.feed(
        '\x1b[36m(_train pid=4242)\x1b[0m {"level": "DEBUG", "logger": "w", "message": "from a worker"}\n'
    )
    relay.feed("2026-12-01 03:26:04,467\tWARNING __init__.py:28 -- Progress bars disabled.\n")  # Ray's format
    relay.feed("Traceback (most recent call last):\n  File x\nKeyError: 'a'\nerror: refused\nrows: 12")
    relay.flush()
    got = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert got == [
        ("WARNING", "[validate local] icg.x: 3 rows dropped"),
        ("ERROR", "[validate local] icg.stages.validate: bad rows"),
        ("DEBUG", "[validate local] w: from a worker"),
        ("WARNING", "[validate local] __init__.py:28: Progress bars disabled."),
        ("ERROR", "[validate local] Traceback (most recent call last):"),
        ("ERROR", "[validate local]   File x"),
        ("ERROR", "[validate local] KeyError: 'a'"),
        ("ERROR", "[validate local] error: refused"),
        ("INFO", "[validate local] rows: 12"),  # the partial last line, flushed
    ]
    assert list(relay.tail)[-2:] == ["error: refused", "rows: 12"]


@pytest.mark.parametrize(
    "address", ["http://ray-head:8265", "https://ray.internal", "http://127.0.0.1:8265/"]
)
def test_dashboard_addresses_are_accepted(address: str) -> None:
    assert check_ray_address(address) == address


@pytest.mark.parametrize(
    "address",
    ["ray://head:10001", "head:6379", "http://head:8265/api/jobs", "http://head:99999", "", "http://"],
)
def test_other_ray_addresses_are_refused_with_what_was_expected(address: str) -> None:
    with pytest.raises(ValueError, match="ray_address"):
        check_ray_address(address)


@pytest.mark.slow
def test_ray_job_runs_the_stage_and_reports_refusals(ray_cluster: RayCluster, tmp_path: Path) -> None:
    root, ds = tiny_world(tmp_path / "world")
    started = time.monotonic()
    run = start_stage("extract", ds=ds, root=root, ray_address=ray_cluster.dashboard_url).wait(300)
    print(f"Ray job round trip (extract): {time.monotonic() - started:.1f}s")
    assert run.where.startswith(f"icg-extract-{ds}-")
    assert ObjectStore(root).has_partition("catalog_items", ds=ds, area="staging/extract")
    assert "staging/extract" in run.output_tail  # the job's own output came back

    # publish refuses (exit 2) a day that was never validated: a refusal, not a crash.
    with pytest.raises(
        StageRefused, match="catalog_items for ds=.* is missing .* run the validate stage first"
    ):
        start_stage("publish", ds=ds, root=root, ray_address=ray_cluster.dashboard_url).wait(300)

    with pytest.raises(StageCrashed, match="exit status 1"):
        start_stage("no_such_stage", ds=ds, root=root, ray_address=ray_cluster.dashboard_url).wait(300)
