"""The report stage: ``reports/ds=<ds>/index.html`` from the day's metrics, fine-tuning log and covers.

The page itself is :func:`icg_core.report.page.render_report`; this module finds its inputs in the
store, embeds the sampled covers as thumbnails and writes the page next to the metrics.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from icg_core import layout
from icg_core.data.images import ImageRejected, decode_image
from icg_core.report.page import data_uri, render_failure_page, render_report
from icg_core.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

THUMB_SIDE = 192  # px, longest side of an embedded cover: sharp at the 128 CSS px it is shown at
THUMB_QUALITY = 85


class MetricsMissing(FileNotFoundError):
    """The evaluate stage's metrics of ``ds`` are not in the store: there is nothing to report."""


def build_report(store: ObjectStore, ds: str, failures: Sequence[str] = ()) -> str:
    """Render the report of ``ds`` from its metrics and write it next to them.

    Args:
        failures: ``"stage: reason"`` of each stage that failed in this run; the page opens with
            them, and without metrics (the run failed before evaluate) the page is just them.

    Returns:
        The key of ``reports/ds=<ds>/index.html``.

    Raises:
        MetricsMissing: ``reports/ds=<ds>/metrics.json`` does not exist and no failure explains why.
    """
    key = layout.metrics(ds)
    if not store.exists(key):
        if not failures:
            raise MetricsMissing(
                f"no metrics for ds={ds}: {store.uri(key)} is missing (run `icg evaluate` first)"
            )
        out = layout.report_page(ds)
        store.put_bytes(out, render_failure_page(ds, failures).encode("utf-8"))
        log.info("stage=report ds=%s failures=%d (no metrics: failure page only)", ds, len(failures))
        return out
    metrics = store.get_json(key)
    generator = str(((metrics.get("run") or {}).get("model_versions") or {}).get("generator") or "")
    finetune = find_finetune_log(store, ds, generator)
    samples = metrics.get("samples") or []
    images = load_thumbnails(store, [s.get("image_key") for s in samples])
    page = render_report(metrics, finetune, images, failures)
    out = layout.report_page(ds)
    store.put_bytes(out, page.encode("utf-8"))
    missing = sum(1 for s in samples if images.get(s.get("image_key") or "") is None)
    log.info(
        "stage=report ds=%s variants=%d samples=%d missing_images=%d finetune=%s bytes=%d",
        ds, len(metrics.get("variants") or {}), len(samples), missing,
        (finetune or {}).get("generator_version", "none"), len(page),
    )  # fmt: skip
    return out


def find_finetune_log(store: ObjectStore, ds: str, generator_version: str) -> dict[str, Any] | None:
    """The fine-tuning log (``FinetuneSummary`` as JSON) whose curves the report shows.

    In order: ``finetune-<generator_version>.json`` of ``ds``; the same file of another day (a
    run that skipped training reuses an older generator); else the newest day's log, preferring the
    one that moved ``_latest``. None when no fine-tuning log exists.
    """
    if generator_version:
        own = layout.finetune_log(ds, generator_version)
        if store.exists(own):
            return store.get_json(own)
    logs = layout.finetune_logs(store)
    if generator_version:
        for _, version, key in reversed(logs):
            if version == generator_version:
                return store.get_json(key)
    if not logs:
        return None
    newest_day = logs[-1][0]
    candidates = [store.get_json(key) for day, _, key in logs if day == newest_day]
    moved = [
        c for c in candidates if c.get("challenger") or c.get("latest_moved")
    ]  # latest_moved: older logs
    return (moved or candidates)[-1]


def load_thumbnails(store: ObjectStore, keys: Iterable[str | None]) -> dict[str, str | None]:
    """Each distinct image key (or URI under the store) as a JPEG data URI, None when unreadable."""
    out: dict[str, str | None] = {}
    for key in keys:
        if not key or key in out:
            continue
        try:
            data = store.read_object(key)
            image = decode_image(data)
        except (StorageError, OSError, ImageRejected, ValueError) as exc:
            log.warning("stage=report image=%s unreadable: %s", key, exc)
            out[key] = None
            continue
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=THUMB_QUALITY)
        out[key] = data_uri(buf.getvalue(), "image/jpeg")
    return out
