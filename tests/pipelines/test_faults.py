"""Faults against the stages as Airflow runs them (subprocesses, exit codes), on real S3 and real disks.

Every case checks three things (README, "Bad input and faults"): the exit code (1 = unavailable or
crashed, Airflow retries; 2 = refused, it does not), a one-line message without a traceback, and what a
reader sees afterwards: yesterday's complete day or today's complete day, never a mix.

The validated day of the fixture exists in two versions: *old* (items i1..i3, validated before the
fault) and *new* (the raw data gained item i4 in the catalog and in the impressions). A reader that
sees i4 in one table but not the other saw a half-promoted day.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from icg_core import layout
from icg_core.stages.extract import extract_day
from icg_core.stages.publish import read_published
from icg_core.stages.validate import validate_day
from icg_core.storage import ObjectStore
from tests.conftest import SeaweedFS, remount_read_only, s3_store_for
from tests.icg_core.conftest import RUN_DS, RawDay, png_bytes, utc

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
OLD = ({"i1", "i2", "i3"}, {"i1", "i2", "i3"})
NEW = ({"i1", "i2", "i3", "i4"}, {"i1", "i2", "i3", "i4"})


# ----------------------------------------------------------------------------- fixtures
def prepare(store: ObjectStore) -> RawDay:
    """Validated *old* day in ``store``; the raw data then grows to what will validate as *new*."""
    raw = RawDay(store)
    raw.populate()
    extract_day(store, RUN_DS, raw.cfg.extract)
    assert validate_day(store, RUN_DS, raw.cfg).success
    raw.write_raw("catalog_items", [raw.item("i4", updated_at=utc("2026-11-12", 8))], ds="2026-11-12")
    late = [raw.impression(u, "i4", utc("2026-11-13", 18, m)) for m, u in enumerate(("u1", "u2", "u3"))]
    rows = store.read_table("impressions", ds="2026-11-13", area="raw").to_pylist() + late
    raw.write_raw("impressions", rows, ds="2026-11-13")
    assert view(store) == OLD
    return raw


def view(store: ObjectStore) -> tuple[set[str], set[str]]:
    """The validated day as a reader sees it: (catalog items, items shown in impressions)."""
    catalog = layout.CATALOG.read(store, RUN_DS).column("item_id").to_pylist()
    shown = layout.IMPRESSIONS.read(store, RUN_DS).column("item_id").to_pylist()
    return set(catalog), set(shown)


def stage(
    module: str,
    store: ObjectStore,
    *,
    ds: str = RUN_DS,
    env: dict[str, str] | None = None,
    kill: tuple[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``python -m pipelines.<module> --root <store> --ds <ds>`` (under tests.kill_at when ``kill``)."""
    command = [f"pipelines.{module}", "--root", store.root, "--ds", ds]
    prefix = ["-m", "tests.kill_at", *kill] if kill else ["-m"]
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AWS_ENDPOINT_URL_S3": store.s3_endpoint_url or "",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, *prefix, *command], cwd=REPO, env=environment, capture_output=True, text=True, timeout=300
    )  # fmt: skip


def assert_one_line_error(done: subprocess.CompletedProcess, code: int, *mentions: str) -> str:
    assert done.returncode == code, f"exit {done.returncode}, expected {code}:\n{done.stderr[-3000:]}"
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    for mention in mentions:
        assert mention in errors[0], errors[0]
    return errors[0]


def s3_root(server: SeaweedFS) -> ObjectStore:
    from tests.conftest import S3Server

    return s3_store_for(S3Server(server.endpoint_url, "icg-test", server.process))  # type: ignore[arg-type]


def run_while(server: SeaweedFS, module: str, store: ObjectStore, action, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    """Run a stage and call ``action(server)`` once it logged that it started working."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "AWS_ENDPOINT_URL_S3": server.endpoint_url, **(env or {})}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", f"pipelines.{module}", "--root", store.root, "--ds", RUN_DS],
        cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    for line in process.stderr:  # type: ignore[union-attr]
        lines.append(line)
        if f"stage={module}" in line and "root=" in line:
            break
    action(server)
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, "".join(lines) + err)


# ----------------------------------------------------------------------------- S3 faults
def test_s3_stopped_before_validate_is_a_retryable_crash(own_s3_server: SeaweedFS) -> None:
    store = s3_root(own_s3_server)
    prepare(store)
    extract_day(store, RUN_DS, RawDay(store).cfg.extract)
    own_s3_server.stop()
    done = stage("validate", store, env={"ICG__STORAGE__S3_MAX_ATTEMPTS": "2"})
    assert_one_line_error(done, 1, "storage unavailable", store.root)
    own_s3_server.start()
    assert view(store) == OLD


def test_s3_stopped_during_validate_leaves_yesterday_or_today(own_s3_server: SeaweedFS) -> None:
    store = s3_root(own_s3_server)
    prepare(store)
    extract_day(store, RUN_DS, RawDay(store).cfg.extract)
    done = run_while(
        own_s3_server, "validate", store, SeaweedFS.stop, env={"ICG__STORAGE__S3_MAX_ATTEMPTS": "2"}
    )
    assert_one_line_error(done, 1, "storage unavailable")
    own_s3_server.start()
    assert view(store) in (OLD, NEW)


def test_s3_restarted_mid_validate_is_ridden_out_by_client_retries(own_s3_server: SeaweedFS) -> None:
    store = s3_root(own_s3_server)
    prepare(store)
    extract_day(store, RUN_DS, RawDay(store).cfg.extract)

    def restart(server: SeaweedFS) -> None:
        server.stop()
        server.start()

    done = run_while(own_s3_server, "validate", store, restart, env={"ICG__STORAGE__S3_MAX_ATTEMPTS": "10"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert view(store) == NEW


def test_wrong_credentials_are_one_clear_line(own_s3_server: SeaweedFS) -> None:
    store = s3_root(own_s3_server)
    prepare(store)
    done = stage("extract", store, env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert_one_line_error(done, 1, "refused the credentials", "AWS_ACCESS_KEY_ID")
    assert view(store) == OLD


def test_a_missing_bucket_is_named(own_s3_server: SeaweedFS) -> None:
    store = ObjectStore("s3://no-such-bucket-icg/root", s3_endpoint_url=own_s3_server.endpoint_url)
    done = stage("extract", store)
    assert_one_line_error(done, 1, "bucket 'no-such-bucket-icg' does not exist")


def test_a_hung_s3_server_times_out_instead_of_hanging() -> None:
    """A server that accepts connections and never answers: bounded by the read timeout x attempts."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])  # held open, never answered
            except (TimeoutError, OSError):  # OSError: the listener was closed at the end
                continue

    threading.Thread(target=accept, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        store = ObjectStore("s3://icg-test/hung", s3_endpoint_url=endpoint)
        env = {"ICG__STORAGE__S3_READ_TIMEOUT_S": "2", "ICG__STORAGE__S3_MAX_ATTEMPTS": "2"}
        started = time.monotonic()
        done = stage("validate", store, env={**env, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
        seconds = time.monotonic() - started
    finally:
        stop.set()
        listener.close()
        for connection in accepted:
            connection.close()
    assert_one_line_error(done, 1, "storage unavailable", "timeout")
    assert seconds < 60, f"a hung server held the stage for {seconds:.0f} s"


# ----------------------------------------------------------------------------- local disks
def test_a_full_disk_stops_extract_without_a_promotable_day(tiny_disk: Path) -> None:
    store = ObjectStore(str(tiny_disk / "root"))
    prepare(store)
    shutil.rmtree(tiny_disk / "root" / "staging")  # only raw/ and validated/ (old) remain
    free = shutil.disk_usage(tiny_disk).free
    (tiny_disk / "filler").write_bytes(b"\0" * max(0, free - 4096))  # the disk is now (almost) full
    done = stage("extract", store)
    assert_one_line_error(done, 1, "storage unavailable", "No space left")
    assert layout.STAGED_DAY.meta(store, RUN_DS) is None
    assert not [p for p in (tiny_disk / "root").rglob("*") if ".tmp-" in p.name]
    assert view(store) == OLD


def test_a_read_only_root_is_a_crash_not_bad_data(read_only_disk: Path) -> None:
    store = ObjectStore(str(read_only_disk / "root"))
    prepare(store)
    extract_day(store, RUN_DS, RawDay(store).cfg.extract)
    remount_read_only(read_only_disk)
    done = stage("validate", store)
    assert_one_line_error(done, 1, "storage unavailable", "Read-only file system")
    assert view(store) == OLD


# ----------------------------------------------------------------------------- SIGKILL at commit points
def test_extract_killed_between_its_tables_leaves_nothing_to_promote(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "root"))
    prepare(store)
    done = stage("extract", store, kill=(r"staging/extract/impressions/.*\.parquet$", "before"))
    assert done.returncode == -9
    refused = stage("validate", store)
    assert_one_line_error(refused, 2, "no complete extraction", "run `icg extract` first")
    assert view(store) == OLD


@pytest.mark.parametrize(
    ("point", "when", "expected"),
    [
        (r"validated/impressions/.*\.parquet$", "before", OLD),  # one table written, no marker
        (r"validated/_days/.*/_SUCCESS$", "before", OLD),  # both tables written, no marker
        (r"validated/_days/.*/_SUCCESS$", "after", NEW),  # the marker written, old files not yet removed
    ],
    ids=["after-first-table", "before-day-marker", "after-day-marker"],
)
def test_validate_killed_at_each_commit_point(tmp_path: Path, point: str, when: str, expected) -> None:
    store = ObjectStore(str(tmp_path / "root"))
    prepare(store)
    extract_day(store, RUN_DS, RawDay(store).cfg.extract)
    done = stage("validate", store, kill=(point, when))
    assert done.returncode == -9
    assert view(store) == expected
    assert stage("validate", store).returncode == 0  # the rerun promotes the day and cleans up
    assert view(store) == NEW
    committed = {
        k for t in ("catalog_items", "impressions") for k in layout.validated_table(t).files(store, RUN_DS)
    }
    on_disk = {k for k in store.list("validated") if k.endswith(".parquet")}
    assert on_disk == committed  # no orphan from the killed run


def test_publish_killed_between_manifest_and_latest(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path / "root"))
    yesterday = "2026-11-14"
    for ds in (yesterday, RUN_DS):
        _publishable_day(store, ds)
    assert stage("publish", store, ds=yesterday).returncode == 0
    pngs = {k: store.get_bytes(k) for k in store.list("covers")}
    done = stage("publish", store, kill=(r"manifests/covers/_latest$", "before"))
    assert done.returncode == -9
    assert layout.PUBLISHED_COVERS.latest(store) == yesterday  # readers of latest: yesterday, complete
    assert read_published(store).num_rows == 4
    assert read_published(store, RUN_DS).num_rows == 4  # today's day is complete for explicit readers
    assert stage("publish", store).returncode == 0
    assert layout.PUBLISHED_COVERS.latest(store) == RUN_DS
    assert {k: store.get_bytes(k) for k in pngs} == pngs  # no published image was rewritten


def test_s3_stopped_before_publish_keeps_yesterdays_covers(own_s3_server: SeaweedFS) -> None:
    store = s3_root(own_s3_server)
    yesterday = "2026-11-14"
    for ds in (yesterday, RUN_DS):
        _publishable_day(store, ds)
    assert stage("publish", store, ds=yesterday).returncode == 0
    own_s3_server.stop()
    done = stage("publish", store, env={"ICG__STORAGE__S3_MAX_ATTEMPTS": "2"})
    assert_one_line_error(done, 1, "storage unavailable")
    own_s3_server.start()
    assert layout.PUBLISHED_COVERS.latest(store) == yesterday
    assert read_published(store).num_rows == 4


def _publishable_day(store: ObjectStore, ds: str) -> None:
    """A validated catalog of 2 items, 2 segments of 1 user each and a staged manifest of their 4 covers."""
    import datetime as dt

    from icg_core.data.schemas import TABLES

    raw = RawDay(store)
    catalog = [raw.item("i1"), raw.item("i2")]
    impressions = [raw.impression("u1", "i1", utc("2026-11-13", 12))]
    from tests.icg_core.conftest import table_of

    layout.VALIDATED_DAY.write(
        store, {"catalog_items": table_of("catalog_items", catalog), "impressions": table_of("impressions", impressions)}, ds, {}
    )  # fmt: skip
    centroids = pa.table({"segment_id": pa.array([0, 1], pa.int32()), "centroid": [[0.0, 1.0], [1.0, 0.0]]})
    layout.SEGMENT_CENTROIDS.write(store, centroids, ds)
    users = pa.table({"user_id": ["u1", "u2"], "segment_id": pa.array([0, 1], pa.int32())})
    layout.USER_SEGMENTS.write(store, users, ds)
    rows = []
    for item in ("i1", "i2"):
        for segment in (0, 1):
            png = png_bytes((32, 32), (10 * segment, 80, len(ds) + int(ds[-1])))
            key = store.put_bytes(layout.cover(ds, segment, item, f"{segment}{item}{ds[-2:]}"), png)
            rows.append({
                "item_id": item, "segment_id": segment, "cover_uri": key, "width": 32, "height": 32, "format": "PNG",
                "reward_aesthetic": 0.5, "reward_relevance": 0.5, "reward_preference": 0.5, "generator_version": "g1",
                "base_model": "tiny", "seed": segment, "content_hash": f"h-{item}",
                "created_at": dt.datetime(2026, 11, 14, tzinfo=dt.UTC),
            })  # fmt: skip
    layout.STAGED_COVERS.write(store, pa.Table.from_pylist(rows, schema=TABLES["covers"]), ds)
