"""Publishing a day's covers: validate the staged manifest, then make it visible to readers at once.

The ``covers`` manifest is the downstream contract (docs/architecture.md, "Data contracts and object layout"): one row per (item,
segment, ds) pointing at a PNG under ``covers/``. The generate stage commits its rows to
``staging/covers/covers/ds=<ds>/``; :func:`publish_day` checks them and only then commits them to
``manifests/covers/ds=<ds>/`` (one atomic ``_SUCCESS`` commit) and moves ``manifests/covers/_latest``.
A day that fails any check is not published, and readers keep seeing the previous day.

:func:`read_published` is the reader's side: the manifest of ``_latest`` (or of a given day).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from icg_core import layout
from icg_core.config import ICGConfig, ValidationConfig
from icg_core.data.images import check_image_uris
from icg_core.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

SAMPLE_ROWS = 5  # offending rows named per problem
_LIMITS = ValidationConfig()
# Columns readers rely on: none may be null.
_REQUIRED = ("item_id", "segment_id", "cover_uri", "width", "height", "format")


class PublishError(ValueError):
    """The staged manifest of a day cannot be published; ``problems`` says which rows and why."""

    def __init__(self, ds: str, problems: Sequence[ManifestProblem], context: str = "") -> None:
        self.ds = ds
        self.problems = list(problems)
        lines = [f"covers for ds={ds} not published ({len(self.problems)} problems){context}:"]
        lines += [f"  - {problem.describe()}" for problem in self.problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ManifestProblem:
    """One reason the manifest is refused, with how many rows it affects and a few of them."""

    kind: str  # e.g. "duplicate", "missing_row", "image_corrupt", "size_mismatch"
    detail: str
    count: int
    rows: tuple[str, ...] = ()  # "item=<id> segment=<id>" (plus the URI when it matters)

    def describe(self) -> str:
        sample = "; ".join(self.rows[:SAMPLE_ROWS])
        more = f" (+{self.count - SAMPLE_ROWS} more)" if self.count > SAMPLE_ROWS else ""
        return f"{self.kind} ({self.count}): {self.detail}" + (f" [{sample}{more}]" if sample else "")


@dataclass
class PublishSummary:
    """What :func:`publish_day` published."""

    ds: str
    rows: int
    items: int
    segments: int
    images_checked: int
    manifest_uri: str  # the committed partition
    files: list[str]
    latest: str  # the ds readers see after this publish
    latest_moved: bool  # False for a backfill of a day older than the current latest
    previous_latest: str | None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _row(item: object, segment: object, uri: object | None = None) -> str:
    return f"item={item} segment={segment}" + (f" uri={uri}" if uri is not None else "")


def _add(problems: list[ManifestProblem], kind: str, detail: str, rows: Sequence[str]) -> None:
    if rows:
        problems.append(ManifestProblem(kind, detail, len(rows), tuple(rows)))


def manifest_problems(
    store: ObjectStore,
    ds: str,
    manifest: pa.Table,
    *,
    expected_item_ids: Iterable[str],
    expected_segment_ids: Iterable[int],
    max_image_bytes: int = _LIMITS.max_image_bytes,
    max_image_pixels: int = _LIMITS.max_image_pixels,
    min_image_side: int = 1,
) -> tuple[list[ManifestProblem], int]:
    """Every reason ``manifest`` cannot be published as the covers of ``ds``.

    Checks: no nulls in the columns readers rely on; exactly one row per expected (item, segment),
    no duplicates, no rows for unknown items or segments, no cover shared by two rows; every
    ``cover_uri`` names an object under ``covers/`` of this store that decodes as an image within
    the limits, of the declared ``width`` x ``height`` and ``format``.

    Args:
        store: the store the manifest and its images live in.
        ds: the day, for messages.
        manifest: rows of the ``covers`` contract.
        expected_item_ids: the day's validated catalog items.
        expected_segment_ids: the day's user segments.
        max_image_bytes, max_image_pixels, min_image_side: image limits (see :mod:`icg_core.data.images`).

    Returns:
        (problems, number of distinct images checked). No problems means publishable.
    """
    items = set(expected_item_ids)
    segments = {int(s) for s in expected_segment_ids}
    rows = manifest.select(list(_REQUIRED)).to_pylist()
    keyed = [r for r in rows if r["item_id"] is not None and r["segment_id"] is not None]
    problems = _row_problems(ds, rows, keyed, items, segments)
    with_uri = [r for r in keyed if r["cover_uri"] is not None]
    image_problems, checked = _image_problems(
        store, with_uri, max_bytes=max_image_bytes, max_pixels=max_image_pixels, min_side=min_image_side
    )
    return problems + image_problems, checked


def _row_problems(
    ds: str, rows: list[dict[str, Any]], keyed: list[dict[str, Any]], items: set[str], segments: set[int]
) -> list[ManifestProblem]:
    """Nulls, duplicates, unknown or missing (item, segment) rows."""
    problems: list[ManifestProblem] = []
    if not items:
        problems.append(ManifestProblem("empty_catalog", f"the validated catalog of {ds} has no items", 0))
    if not segments:
        problems.append(ManifestProblem("no_segments", f"the segment table of {ds} has no segments", 0))
    nulls = [r for r in rows if any(r[c] is None for c in _REQUIRED)]
    _add(problems, "null_value", f"{', '.join(_REQUIRED)} must be set",
         [_row(r["item_id"], r["segment_id"], r["cover_uri"]) for r in nulls])  # fmt: skip
    counts = Counter((r["item_id"], int(r["segment_id"])) for r in keyed)
    duplicates = sorted(key for key, n in counts.items() if n > 1)
    _add(problems, "duplicate", "more than one row for the same (item, segment)",
         [f"{_row(*key)} x{counts[key]}" for key in duplicates])  # fmt: skip
    if items and segments:
        unknown_items = sorted(key for key in counts if key[0] not in items)
        _add(problems, "unexpected_item", f"item not in the validated catalog of {ds}",
             [_row(*key) for key in unknown_items])  # fmt: skip
        unknown_segments = sorted(key for key in counts if key[0] in items and key[1] not in segments)
        _add(problems, "unexpected_segment", f"segment not in the segment table of {ds}",
             [_row(*key) for key in unknown_segments])  # fmt: skip
        missing = sorted((i, s) for i in items for s in segments if (i, s) not in counts)
        _add(
            problems,
            "missing_row",
            "expected (item, segment) without a cover",
            [_row(*key) for key in missing],
        )
    return problems


def _image_problems(
    store: ObjectStore, with_uri: list[dict[str, Any]], *, max_bytes: int, max_pixels: int, min_side: int
) -> tuple[list[ManifestProblem], int]:
    """Shared or misplaced covers, and images that fail to decode or differ from what the row declares."""
    problems: list[ManifestProblem] = []
    owners: dict[str, set[tuple[str, int]]] = {}
    for r in with_uri:
        owners.setdefault(r["cover_uri"], set()).add((r["item_id"], int(r["segment_id"])))
    shared = sorted(uri for uri, keys in owners.items() if len(keys) > 1)
    _add(problems, "shared_cover", "one cover_uri for several (item, segment)",
         [f"{uri}: {' and '.join(_row(*k) for k in sorted(owners[uri]))}" for uri in shared])  # fmt: skip
    under = [_under_covers(store, r["cover_uri"]) for r in with_uri]
    placed = [r for r, ok in zip(with_uri, under, strict=True) if ok]
    misplaced = [
        _row(r["item_id"], r["segment_id"], r["cover_uri"])
        for r, ok in zip(with_uri, under, strict=True)
        if not ok
    ]
    _add(problems, "bad_uri", f"cover_uri must be under {store.uri(layout.covers_root())}", misplaced)

    checks = check_image_uris(
        store, (r["cover_uri"] for r in placed), max_bytes=max_bytes, max_pixels=max_pixels, min_side=min_side
    )
    failed: dict[str, list[str]] = {}
    size_mismatch, format_mismatch = [], []
    for r in placed:
        check = checks[r["cover_uri"]]
        where = _row(r["item_id"], r["segment_id"], r["cover_uri"])
        if not check.ok:
            failed.setdefault(check.status, []).append(f"{where}: {check.detail}")
        elif (check.width, check.height) != (r["width"], r["height"]):
            size_mismatch.append(
                f"{where}: declared {r['width']}x{r['height']}, image is {check.width}x{check.height}"
            )
        elif r["format"] is not None and (check.format or "").upper() != r["format"].upper():
            format_mismatch.append(f"{where}: declared {r['format']}, image is {check.format}")
    for status, found in sorted(failed.items()):
        _add(problems, f"image_{status}", "cover image failed its check", found)
    _add(problems, "size_mismatch", "declared width/height differ from the image", size_mismatch)
    _add(problems, "format_mismatch", "declared format differs from the image", format_mismatch)
    return problems, len(checks)


def _under_covers(store: ObjectStore, uri: str) -> bool:
    try:
        return layout.is_cover(store.key(uri))
    except StorageError:
        return False


def publish_day(
    store: ObjectStore,
    ds: str,
    *,
    expected_item_ids: Iterable[str],
    expected_segment_ids: Iterable[int],
    max_image_bytes: int = _LIMITS.max_image_bytes,
    max_image_pixels: int = _LIMITS.max_image_pixels,
    min_image_side: int = 1,
) -> PublishSummary:
    """Validate the staged covers manifest of ``ds`` and publish it atomically.

    The manifest is committed to ``manifests/covers/ds=<ds>/`` only if :func:`manifest_problems`
    finds nothing; then ``_latest`` moves to ``ds`` unless a later day is already published (a
    backfill republishes its own day without turning readers back in time). A rerun replaces the
    day's manifest, never duplicates it.

    Args:
        store: the object store.
        ds: the day, YYYY-MM-DD.
        expected_item_ids: item ids of the day's validated catalog.
        expected_segment_ids: segment ids of the day's segment table.
        max_image_bytes, max_image_pixels, min_image_side: image limits.

    Returns:
        The :class:`PublishSummary`.

    Raises:
        PublishError: no staged manifest, or problems found (each named with its rows); nothing
            is published and ``_latest`` stays where it was.
    """
    started = time.perf_counter()
    items = list(dict.fromkeys(expected_item_ids))
    segments = sorted({int(s) for s in expected_segment_ids})
    previous = layout.PUBLISHED_COVERS.latest(store)
    if not layout.STAGED_COVERS.exists(store, ds):
        staged_uri = layout.STAGED_COVERS.uri(store, ds)
        problem = ManifestProblem(
            "no_staged_manifest", f"no committed manifest at {staged_uri} (run generate first)", 0
        )
        raise PublishError(ds, [problem], _readers_keep(previous))
    manifest = layout.STAGED_COVERS.read(store, ds)
    log.info("stage=publish ds=%s staged rows=%d expected items=%d segments=%d",
             ds, manifest.num_rows, len(items), len(segments))  # fmt: skip
    problems, images_checked = manifest_problems(
        store, ds, manifest, expected_item_ids=items, expected_segment_ids=segments,
        max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels, min_image_side=min_image_side,
    )  # fmt: skip
    if problems:
        expected = len(items) * len(segments)
        context = f"; staged rows={manifest.num_rows}, expected {len(items)} items x {len(segments)} segments = {expected}{_readers_keep(previous)}"
        log.warning("stage=publish ds=%s refused: %d problems", ds, len(problems))
        raise PublishError(ds, problems, context)

    commit = layout.PUBLISHED_COVERS.write(store, manifest, ds)
    latest_moved = previous is None or ds >= previous
    notes = []
    if latest_moved:
        layout.PUBLISHED_COVERS.set_latest(store, ds)
    else:
        notes.append(f"backfill: ds={ds} is older than the published latest ds={previous}, which stays")
    summary = PublishSummary(
        ds=ds,
        rows=commit.rows,
        items=len(items),
        segments=len(segments),
        images_checked=images_checked,
        manifest_uri=layout.PUBLISHED_COVERS.uri(store, ds),
        files=[store.uri(key) for key in commit.files],
        latest=ds if latest_moved else str(previous),
        latest_moved=latest_moved,
        previous_latest=previous,
        seconds=round(time.perf_counter() - started, 3),
        notes=notes,
    )
    log.info(
        "stage=publish ds=%s published rows=%d latest=%s (was %s)", ds, summary.rows, summary.latest, previous
    )
    return summary


def run_publish(store: ObjectStore, cfg: ICGConfig, ds: str) -> PublishSummary:
    """The publish stage: the staged manifest of ``ds`` against the day's catalog x segments.

    Raises:
        PublishError: the catalog or segment table of ``ds`` is missing (the stage to run is
            named), or :func:`publish_day` refused the manifest; nothing is published.
    """
    for table, producer in ((layout.CATALOG, "validate"), (layout.SEGMENT_CENTROIDS, "users")):
        if not table.exists(store, ds):
            detail = f"{table.name} for ds={ds} is missing ({table.uri(store, ds)}); run the {producer} stage first"
            previous = layout.PUBLISHED_COVERS.latest(store)
            raise PublishError(ds, [ManifestProblem("missing_input", detail, 0)], _readers_keep(previous))
    return publish_day(
        store,
        ds,
        expected_item_ids=layout.CATALOG.read(store, ds).column("item_id").to_pylist(),
        expected_segment_ids=layout.SEGMENT_CENTROIDS.read(store, ds).column("segment_id").to_pylist(),
        max_image_bytes=cfg.validation.max_image_bytes,
        max_image_pixels=cfg.validation.max_image_pixels,
    )


def _readers_keep(previous: str | None) -> str:
    return f"; readers keep ds={previous}" if previous else "; nothing was published before"


def read_published(store: ObjectStore, ds: str | None = None) -> pa.Table:
    """The published covers manifest of ``ds``, or of the ``_latest`` day by default.

    Returns:
        The ``covers`` rows with a ``ds`` column (one row per item x segment).

    Raises:
        StorageError: nothing published yet, or ``ds`` was never published.
    """
    if ds is None:
        ds = layout.PUBLISHED_COVERS.latest(store)
        if ds is None:
            raise StorageError(
                f"no covers published yet under {layout.PUBLISHED_COVERS.root_uri(store)} (no latest pointer)"
            )
    return layout.PUBLISHED_COVERS.read_days(store, [ds])
