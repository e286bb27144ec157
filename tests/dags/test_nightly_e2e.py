"""`airflow dags test` end to end on a tiny embedded world: bootstrap, nightly, backfill, a failed gate.

One bootstrapped world serves the module; the tests run in order on it, as an operator would:
bootstrap, the first nightly, then the root is copied with ``cp -r`` and the original deleted, and on
the copy the next day, a rerun of the first day (a backfill), then a day whose gate fails. Each ``dags test`` runs every stage as its own ``python -m pipelines.<stage>`` process.
"""

from __future__ import annotations

import datetime as dt
import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from icg_core import layout
from icg_core.config import load_config
from icg_core.stages.publish import read_published
from icg_core.storage import ObjectStore
from icg_core.world.simulator import generate_world
from tests.conftest import AlertWebhook
from tests.dags.conftest import dags_test
from tests.tiny import write_tiny_config

pytestmark = pytest.mark.slow


def _day(ds: str, days: int) -> str:
    return (dt.date.fromisoformat(ds) + dt.timedelta(days=days)).isoformat()


class World:
    """The module's tiny world: its store, config file, first nightly day and Airflow environment."""

    def __init__(self, root: Path, config: Path, airflow_home: Path) -> None:
        self.store = ObjectStore(str(root))
        self.config = config
        self.airflow_home = airflow_home
        self.ds = generate_world(
            self.store, load_config(config, root=str(root), environ={}).world
        ).first_nightly_ds

    def run(self, dag_id: str, ds: str, conf: dict | None = None, **env: str) -> str:
        """``airflow dags test DAG DS`` against this world; returns the whole log."""
        result = dags_test(
            self.airflow_home, dag_id, ds, conf=conf, ICG__STORAGE__ROOT=self.store.root, ICG_CONFIG=str(self.config),
            **env,
        )  # fmt: skip
        return result.stdout + result.stderr

    def move(self, root: Path) -> None:
        """``cp -r`` the root elsewhere, delete the original, and go on with the copy (a restored backup)."""
        old = Path(self.store.arrow_path(""))
        shutil.copytree(old, root, symlinks=True)
        shutil.rmtree(old)
        self.store = ObjectStore(str(root))

    def latest(self) -> str | None:
        return layout.PUBLISHED_COVERS.latest(self.store)

    def success_marker(self, ds: str) -> bytes:
        return self.store.get_bytes(ObjectStore.day_marker(layout.PUBLISHED_DAY.area, ds))


@pytest.fixture(scope="module")
def world(airflow_home: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("nightly")
    config = write_tiny_config(base / "tiny.yaml", world={"n_items": 12, "n_users": 30, "days": 3})
    world = World(base / "root", config, airflow_home)
    log = world.run("icg_bootstrap", world.ds)
    assert "state=success" in log, log[-6000:]
    return world


def test_nightly_publishes_one_cover_per_item_and_segment(world: World) -> None:
    log = world.run("icg_nightly", world.ds)
    assert "state=success" in log, log[-6000:]
    store, ds = world.store, world.ds

    manifest = read_published(store)
    items = store.read_table("catalog_items", ds=ds, area="validated").column("item_id").to_pylist()
    segments = store.read_table("segment_centroids", ds=ds, area="users").column("segment_id").to_pylist()
    assert world.latest() == ds and world.success_marker(ds)
    assert manifest.num_rows == len(items) * len(segments)
    pairs = set(zip(manifest["item_id"].to_pylist(), manifest["segment_id"].to_pylist(), strict=True))
    assert pairs == {(i, s) for i in items for s in segments}
    for uri in manifest["cover_uri"].to_pylist():
        image = Image.open(io.BytesIO(store.read_object(uri)))
        image.load()
        assert image.size == (32, 32)

    metrics = store.get_json(f"reports/ds={ds}/metrics.json")
    assert {"reference", "selection", "base", "icg"} <= set(metrics["variants"])
    assert store.exists(f"reports/ds={ds}/index.html")


def test_backfill_two_dates_then_rerun_the_first(world: World, tmp_path: Path) -> None:
    first, second = world.ds, _day(world.ds, 1)
    # From here on the world lives in a copy of its root (the original is gone): nothing may point back.
    world.move(tmp_path / "copied-root")
    # The second day reuses the reward models and generator (the trigger form's skip_training).
    log = world.run("icg_nightly", second, conf={"skip_training": True})
    assert "state=success" in log, log[-6000:]
    assert "skip_training: stage finetune skipped" in log
    assert world.latest() == second
    second_marker = world.success_marker(second)
    first_rows = read_published(world.store, first).num_rows

    log = world.run("icg_nightly", first, conf={"skip_training": True})  # a backfill of the older day
    assert "state=success" in log, log[-6000:]
    assert world.latest() == second  # never moves backwards
    assert read_published(world.store, first).num_rows == first_rows  # replaced, not appended
    assert world.success_marker(second) == second_marker  # the other day is untouched
    assert layout.PUBLISHED_COVERS.days(world.store) == [first, second]


def test_a_failed_gate_stops_before_publish_and_keeps_latest(
    world: World, alert_webhook: AlertWebhook
) -> None:
    day = _day(world.ds, 2)
    before = world.latest()
    # The relevance guard of stage 2 cannot pass with a negative allowed drop.
    log = world.run(
        "icg_nightly",
        day,
        ICG__FINETUNE__MAX_RELEVANCE_DROP="-10",
        ICG__OPERATIONS__NOTIFY_WEBHOOK_URL=alert_webhook.url,
    )
    assert "state=failed" in log
    assert "relevance" in log
    assert world.latest() == before
    assert day not in layout.PUBLISHED_COVERS.days(world.store)
    # on-call hears of it once, and the night still has a report that opens with why
    [alert] = alert_webhook.received
    assert (
        alert["text"].startswith(f"ICG icg_nightly ds={day}: task finetune failed")
        and "relevance" in alert["text"]
    )
    page = world.store.get_bytes(layout.report_page(day)).decode()
    assert "This run FAILED" in page and "<b>finetune</b>" in page and "relevance" in page


def test_bad_input_stops_the_run_with_the_reason(airflow_home: Path, tmp_path: Path) -> None:
    """Also: the report task still runs (trigger rule all_done) and says which stage failed and why."""
    config = write_tiny_config(tmp_path / "tiny.yaml", world={"n_items": 12, "days": 2})
    store = ObjectStore(str(tmp_path / "root"))
    ds = generate_world(store, load_config(config, root=store.root, environ={}).world).first_nightly_ds
    store.put_bytes(store.list("raw/images/reference")[0], b"this is not a png")
    result = dags_test(airflow_home, "icg_nightly", ds, ICG__STORAGE__ROOT=store.root, ICG_CONFIG=str(config))
    log = result.stdout + result.stderr
    assert "state=failed" in log
    assert "not_an_image" in log or "not an image" in log
    assert not store.has_partition("catalog_items", ds=ds, area="validated")
    assert layout.PUBLISHED_COVERS.latest(store) is None
    page = store.get_bytes(layout.report_page(ds)).decode()
    assert "This run FAILED" in page and "<b>validate</b>" in page and "not_an_image" in page
    assert page.index("<b>validate</b>") < page.index("<b>users</b>")  # what never ran is listed after it
    assert "did not run (an earlier stage failed)" in page
