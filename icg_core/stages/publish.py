"""Publishing a day's covers: validate the staged manifest, then make it visible to readers at once.

The published manifests are the downstream contract (docs/consumers.md): ``covers``, one row per
(item, segment) pointing at a PNG under ``covers/``, and ``user_segments``, each user's segment that
day. The generate stage commits its rows to ``staging/covers/covers/ds=<ds>/``; :func:`publish_day`
checks them and only then writes both tables to ``manifests/<table>/ds=<ds>/<table>.parquet`` (one
file each, replaced atomically, so even readers that only glob never see a doubled day) and moves
each table's ``_latest``. A day that fails any check is not published, and readers keep the previous day.

:func:`read_published` and :func:`cover_for` are the reader's side.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from icg_core import layout
from icg_core.config import ICGConfig, ValidationConfig
from icg_core.data.images import check_image_uris
from icg_core.data.schemas import MANIFEST_SCHEMA_VERSION
from icg_core.serving.pairs import PairCounts
from icg_core.storage import ObjectStore, ParquetStream, PartitionCommit, StorageError

log = logging.getLogger(__name__)

SAMPLE_ROWS = 5  # offending rows named per problem in the message
MAX_NAMED = 100  # offending rows kept per problem (all are counted)
BATCH_ROWS = 8192  # staged manifest rows read, checked and published at a time
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
    users: int  # rows of the published user_segments
    images_checked: int
    publish_id: str  # shared by both tables' rows of this publish
    manifest_uri: str  # the committed covers partition
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
        problems.append(ManifestProblem(kind, detail, len(rows), tuple(rows[:MAX_NAMED])))


class _Found:
    """Offending rows per kind of problem: every one counted, the first ``MAX_NAMED`` kept to name them."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.named: dict[str, list[str]] = {}

    def add(self, kind: str, row: str) -> None:
        self.counts[kind] += 1
        named = self.named.setdefault(kind, [])
        if len(named) < MAX_NAMED:
            named.append(row)

    def problem(self, kind: str, detail: str) -> list[ManifestProblem]:
        count = self.counts.get(kind, 0)
        return [ManifestProblem(kind, detail, count, tuple(self.named[kind]))] if count else []


Batches = Callable[[], Iterable[pa.Table]]  # a fresh pass over a manifest, batch by batch


def manifest_problems(
    store: ObjectStore,
    ds: str,
    manifest: pa.Table | Batches,
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

    The manifest is read batch by batch and no row is kept: one counter per expected (item, segment)
    and an 8-byte digest per ``cover_uri``, so memory stays flat as the catalog grows.

    Args:
        store: the store the manifest and its images live in.
        ds: the day, for messages.
        manifest: rows of the ``covers`` contract, or a function that starts a pass over them in batches
            (called a second time only to name the rows of a shared cover).
        expected_item_ids: the day's validated catalog items.
        expected_segment_ids: the day's user segments.
        max_image_bytes, max_image_pixels, min_image_side: image limits (see :mod:`icg_core.data.images`).

    Returns:
        (problems, number of distinct images checked). No problems means publishable.
    """
    passes: Batches = (lambda: [manifest]) if isinstance(manifest, pa.Table) else manifest
    check = _ManifestCheck(store, ds, list(dict.fromkeys(expected_item_ids)), expected_segment_ids,
                           max_bytes=max_image_bytes, max_pixels=max_image_pixels, min_side=min_image_side)  # fmt: skip
    for batch in passes():
        check.add(batch)
    return check.problems(passes), check.images_checked


class _ManifestCheck:
    """The checks of :func:`manifest_problems`, fed one batch at a time."""

    def __init__(
        self, store: ObjectStore, ds: str, items: list[str], segments: Iterable[int], *,
        max_bytes: int, max_pixels: int, min_side: int,
    ) -> None:  # fmt: skip
        self.store, self.ds = store, ds
        self.limits = {"max_bytes": max_bytes, "max_pixels": max_pixels, "min_side": min_side}
        self.pairs = PairCounts(items, segments)
        self.unexpected: dict[tuple[str, int], str] = {}  # (item, segment) outside the grid -> kind
        self.uri_digests: list[np.ndarray] = []
        self.found = _Found()
        self.images_checked = 0

    def add(self, batch: pa.Table) -> None:
        batch = batch.select(list(_REQUIRED))
        nulls = pc.is_null(batch.column(_REQUIRED[0]))
        for name in _REQUIRED[1:]:
            nulls = pc.or_(nulls, pc.is_null(batch.column(name)))
        for r in batch.filter(nulls).to_pylist():
            self.found.add("null_value", _row(r["item_id"], r["segment_id"], r["cover_uri"]))
        keyed = batch.filter(
            pc.and_(pc.is_valid(batch.column("item_id")), pc.is_valid(batch.column("segment_id")))
        )
        self._count_keys(keyed)
        with_uri = keyed.filter(pc.is_valid(keyed.column("cover_uri")))
        self.uri_digests.append(_digests(with_uri.column("cover_uri").to_pylist()))
        self._check_images(with_uri.to_pylist())

    def _count_keys(self, keyed: pa.Table) -> None:
        known_item, known = self.pairs.add(keyed.column("item_id"), keyed.column("segment_id"))
        if not known.all():
            ids, segments = keyed.column("item_id").to_pylist(), keyed.column("segment_id").to_pylist()
            for i in np.flatnonzero(~known):
                kind = "unexpected_item" if not known_item[i] else "unexpected_segment"
                self.unexpected.setdefault((ids[i], int(segments[i])), kind)

    def _check_images(self, rows: list[dict[str, Any]]) -> None:
        placed = []
        for r in rows:
            if _under_covers(self.store, r["cover_uri"]):
                placed.append(r)
            else:
                self.found.add("bad_uri", _row(r["item_id"], r["segment_id"], r["cover_uri"]))
        checks = check_image_uris(self.store, (r["cover_uri"] for r in placed), **self.limits)
        self.images_checked += len(checks)
        for r in placed:
            check = checks[r["cover_uri"]]
            where = _row(r["item_id"], r["segment_id"], r["cover_uri"])
            if not check.ok:
                self.found.add(f"image_{check.status}", f"{where}: {check.detail}")
            elif (check.width, check.height) != (r["width"], r["height"]):
                declared = f"declared {r['width']}x{r['height']}, image is {check.width}x{check.height}"
                self.found.add("size_mismatch", f"{where}: {declared}")
            elif r["format"] is not None and (check.format or "").upper() != r["format"].upper():
                self.found.add("format_mismatch", f"{where}: declared {r['format']}, image is {check.format}")

    def problems(self, passes: Batches) -> list[ManifestProblem]:
        problems: list[ManifestProblem] = []
        pairs = self.pairs
        if not len(pairs.items):
            problems.append(
                ManifestProblem("empty_catalog", f"the validated catalog of {self.ds} has no items", 0)
            )
        if not len(pairs.segments):
            problems.append(
                ManifestProblem("no_segments", f"the segment table of {self.ds} has no segments", 0)
            )
        problems += self.found.problem("null_value", f"{', '.join(_REQUIRED)} must be set")
        _add(problems, "duplicate", "more than one row for the same (item, segment)",
             [f"{_row(item, segment)} x{times}" for item, segment, times in pairs.repeated()])  # fmt: skip
        if len(pairs.items) and len(pairs.segments):
            for kind, detail in (
                ("unexpected_item", f"item not in the validated catalog of {self.ds}"),
                ("unexpected_segment", f"segment not in the segment table of {self.ds}"),
            ):
                keys = sorted(key for key, found in self.unexpected.items() if found == kind)
                _add(problems, kind, detail, [_row(*key) for key in keys])
            _add(problems, "missing_row", "expected (item, segment) without a cover",
                 [_row(*pair) for pair in pairs.missing()])  # fmt: skip
        problems += self._shared(passes)
        problems += self.found.problem(
            "bad_uri", f"cover_uri must be under {self.store.uri(layout.covers_root())}"
        )
        for kind in sorted(k for k in self.found.counts if k.startswith("image_")):
            problems += self.found.problem(kind, "cover image failed its check")
        problems += self.found.problem("size_mismatch", "declared width/height differ from the image")
        problems += self.found.problem("format_mismatch", "declared format differs from the image")
        return problems

    def _shared(self, passes: Batches) -> list[ManifestProblem]:
        """Covers named by several (item, segment): found by digest, named in a second pass (only then)."""
        digests = np.concatenate(self.uri_digests) if self.uri_digests else np.zeros(0, np.uint64)
        values, counts = np.unique(digests, return_counts=True)
        suspects = set(values[counts > 1].tolist())
        if not suspects:
            return []
        owners: dict[str, set[tuple[str, int]]] = {}
        for batch in passes():
            rows = batch.select(["item_id", "segment_id", "cover_uri"]).to_pylist()
            rows = [r for r in rows if None not in r.values()]
            for r, digest in zip(rows, _digests([r["cover_uri"] for r in rows]).tolist(), strict=True):
                if digest in suspects:
                    owners.setdefault(r["cover_uri"], set()).add((r["item_id"], int(r["segment_id"])))
        shared = sorted(uri for uri, keys in owners.items() if len(keys) > 1)
        problems: list[ManifestProblem] = []
        _add(problems, "shared_cover", "one cover_uri for several (item, segment)",
             [f"{uri}: {' and '.join(_row(*k) for k in sorted(owners[uri]))}" for uri in shared])  # fmt: skip
        return problems


def _digests(uris: Sequence[str]) -> np.ndarray:
    """An 8-byte digest per URI (equal URIs, equal digests), to find repeats without keeping the URIs."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "little") for u in uris],
        np.uint64,
    )


def _under_covers(store: ObjectStore, uri: str) -> bool:
    try:
        return layout.is_cover(store.key(uri))
    except StorageError:
        return False


def user_segment_problems(user_segments: pa.Table, segments: set[int]) -> list[ManifestProblem]:
    """Every reason the day's user -> segment table cannot be published beside the covers."""
    problems: list[ManifestProblem] = []
    rows = user_segments.select(["user_id", "segment_id"]).to_pylist()
    nulls = [f"user={r['user_id']} segment={r['segment_id']}" for r in rows if None in r.values()]
    _add(problems, "user_segment_null", "user_id and segment_id must be set", nulls)
    counts = Counter(r["user_id"] for r in rows if r["user_id"] is not None)
    _add(problems, "user_segment_duplicate", "more than one segment for a user",
         [f"user={u} x{n}" for u, n in sorted(counts.items()) if n > 1])  # fmt: skip
    unknown = sorted({int(r["segment_id"]) for r in rows if r["segment_id"] is not None} - segments)
    _add(problems, "user_segment_unknown", "segment without covers (not in the segment table)",
         [f"segment={s}" for s in unknown])  # fmt: skip
    return problems


def cover_url(store: ObjectStore, cover_ref: str, public_base_url: str | None) -> str:
    """Where a service fetches a cover: ``<public_base_url>/<key>``, or the store URI without a base URL."""
    key = store.key(cover_ref)
    return f"{public_base_url}/{quote(key, safe='/=')}" if public_base_url else store.uri(key)


def _stamped(table: pa.Table, publish_id: str) -> pa.Table:
    """``table`` with the published-contract columns every row carries."""
    n = table.num_rows
    table = table.append_column("schema_version", pa.array([MANIFEST_SCHEMA_VERSION] * n, pa.int32()))
    return table.append_column("publish_id", pa.array([publish_id] * n, pa.string()))


def _day_of(store: ObjectStore, cover_ref: str, default: str) -> str:
    try:
        return layout.partition_day(store.key(cover_ref))
    except StorageError:
        return default


def _staged_manifest(store: ObjectStore, ds: str, previous: str | None) -> Batches:
    """A pass over the staged manifest of ``ds``, batch by batch (refused when generate staged none)."""
    if not layout.STAGED_COVERS.exists(store, ds):
        where = layout.STAGED_COVERS.uri(store, ds)
        problem = ManifestProblem(
            "no_staged_manifest", f"no committed manifest at {where} (run generate first)", 0
        )
        raise PublishError(ds, [problem], _readers_keep(previous))
    return lambda: layout.STAGED_COVERS.iter_batches(store, ds, BATCH_ROWS)


def _published_covers(
    store: ObjectStore, ds: str, batch: pa.Table, publish_id: str, public_base_url: str | None
) -> pa.Table:
    """Staged manifest rows as published rows: ``cover_url``, ``made_ds``, the schema version and publish id."""
    refs = batch.column("cover_uri").to_pylist()
    urls = [cover_url(store, ref, public_base_url) for ref in refs]
    if "made_ds" not in batch.column_names:  # staged before covers said the day they were drawn for
        batch = batch.append_column(
            "made_ds", pa.array([_day_of(store, ref, ds) for ref in refs], pa.string())
        )
    return _stamped(batch.append_column("cover_url", pa.array(urls, pa.string())), publish_id)


def _commit(
    store: ObjectStore, ds: str, manifest: Batches, user_segments: pa.Table, public_base_url: str | None
) -> tuple[str, dict[str, PartitionCommit]]:
    """Write the day's two published tables (user_segments first, then covers); returns (publish id, commits).

    The covers are streamed from the staged manifest to one local Parquet file and uploaded whole:
    one atomic object, and no more than a batch of rows in memory.
    """
    publish_id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    meta = {"publish_id": publish_id, "schema_version": MANIFEST_SCHEMA_VERSION}
    with ParquetStream(layout.PUBLISHED_COVERS.name) as covers:
        for batch in manifest():
            covers.write(_published_covers(store, ds, batch, publish_id, public_base_url))
        tables = {
            "user_segments": _stamped(user_segments.select(["user_id", "segment_id"]), publish_id),
            "covers": covers,
        }
        return publish_id, layout.PUBLISHED_DAY.write(store, tables, ds, meta=meta)


def publish_day(
    store: ObjectStore,
    ds: str,
    *,
    user_segments: pa.Table,
    expected_item_ids: Iterable[str],
    expected_segment_ids: Iterable[int],
    public_base_url: str | None = None,
    max_image_bytes: int = _LIMITS.max_image_bytes,
    max_image_pixels: int = _LIMITS.max_image_pixels,
    min_image_side: int = 1,
) -> PublishSummary:
    """Validate the staged covers manifest of ``ds`` and publish it, with the day's user segments, atomically.

    Both tables are written to ``manifests/`` only if :func:`manifest_problems` and
    :func:`user_segment_problems` find nothing; then each table's ``_latest`` moves to ``ds`` unless a
    later day is already published (a backfill republishes its own day without turning readers back
    in time). A rerun replaces the day, never duplicates it, even for readers that only glob.

    Args:
        store: the object store.
        ds: the day, YYYY-MM-DD.
        user_segments: the day's ``user_segments`` rows (user_id, segment_id).
        expected_item_ids: item ids of the day's validated catalog.
        expected_segment_ids: segment ids of the day's segment table.
        public_base_url: base of ``cover_url`` (see :func:`cover_url`).
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
    manifest = _staged_manifest(store, ds, previous)
    log.info("stage=publish ds=%s checking the staged manifest: expected items=%d segments=%d users=%d",
             ds, len(items), len(segments), user_segments.num_rows)  # fmt: skip
    problems, images_checked = manifest_problems(
        store, ds, manifest, expected_item_ids=items, expected_segment_ids=segments,
        max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels, min_image_side=min_image_side,
    )  # fmt: skip
    problems += user_segment_problems(user_segments, set(segments))
    if problems:
        staged = sum(batch.num_rows for batch in manifest())
        log.warning("stage=publish ds=%s refused: %d problems", ds, len(problems))
        raise PublishError(ds, problems, _refusal_context(staged, len(items), len(segments), previous))

    publish_id, commits = _commit(store, ds, manifest, user_segments, public_base_url)
    latest_moved = previous is None or ds >= previous
    notes = []
    if latest_moved:
        layout.PUBLISHED_USER_SEGMENTS.set_latest(store, ds)
        layout.PUBLISHED_COVERS.set_latest(store, ds)  # last: the pointer the documentation names
    else:
        notes.append(f"backfill: ds={ds} is older than the published latest ds={previous}, which stays")
    summary = PublishSummary(
        ds=ds,
        rows=commits["covers"].rows,
        items=len(items),
        segments=len(segments),
        users=commits["user_segments"].rows,
        images_checked=images_checked,
        publish_id=publish_id,
        manifest_uri=layout.PUBLISHED_COVERS.uri(store, ds),
        files=[store.uri(key) for commit in commits.values() for key in commit.files],
        latest=ds if latest_moved else str(previous),
        latest_moved=latest_moved,
        previous_latest=previous,
        seconds=round(time.perf_counter() - started, 3),
        notes=notes,
    )
    log.info("stage=publish ds=%s published rows=%d users=%d publish_id=%s latest=%s (was %s)",
             ds, summary.rows, summary.users, publish_id, summary.latest, previous)  # fmt: skip
    return summary


def run_publish(store: ObjectStore, cfg: ICGConfig, ds: str) -> PublishSummary:
    """The publish stage: the staged manifest of ``ds`` against the day's catalog x segments.

    Raises:
        PublishError: the catalog or a segment table of ``ds`` is missing (the stage to run is
            named), or :func:`publish_day` refused the manifest; nothing is published.
    """
    inputs = (
        (layout.CATALOG, "validate"),
        (layout.SEGMENT_CENTROIDS, "users"),
        (layout.USER_SEGMENTS, "users"),
    )
    for table, producer in inputs:
        if not table.exists(store, ds):
            detail = f"{table.name} for ds={ds} is missing ({table.uri(store, ds)}); run the {producer} stage first"
            previous = layout.PUBLISHED_COVERS.latest(store)
            raise PublishError(ds, [ManifestProblem("missing_input", detail, 0)], _readers_keep(previous))
    return publish_day(
        store,
        ds,
        user_segments=layout.USER_SEGMENTS.read(store, ds),
        expected_item_ids=layout.CATALOG.read(store, ds).column("item_id").to_pylist(),
        expected_segment_ids=layout.SEGMENT_CENTROIDS.read(store, ds).column("segment_id").to_pylist(),
        public_base_url=cfg.publish.public_base_url,
        max_image_bytes=cfg.validation.max_image_bytes,
        max_image_pixels=cfg.validation.max_image_pixels,
    )


def _refusal_context(staged: int, items: int, segments: int, previous: str | None) -> str:
    expected = f"expected {items} items x {segments} segments = {items * segments}"
    return f"; staged rows={staged}, {expected}{_readers_keep(previous)}"


def _readers_keep(previous: str | None) -> str:
    return f"; readers keep ds={previous}" if previous else "; nothing was published before"


def read_published(
    store: ObjectStore, ds: str | None = None, table: layout.Table = layout.PUBLISHED_COVERS
) -> pa.Table:
    """A published manifest (``covers`` by default) of ``ds``, or of its ``_latest`` day.

    Returns:
        The table's rows with a ``ds`` column.

    Raises:
        StorageError: nothing published yet, or ``ds`` was never published.
    """
    if ds is None:
        ds = table.latest(store)
        if ds is None:
            raise StorageError(f"nothing published yet under {table.root_uri(store)} (no latest pointer)")
    return table.read_days(store, [ds])


@dataclass(frozen=True)
class CoverForUser:
    """The answer to "which cover does user U see for item I" on one published day."""

    ds: str
    user_id: str
    item_id: str
    segment_id: int
    cover_uri: str  # the cover's key under the root
    cover_url: str
    generator_version: str
    publish_id: str


def cover_for(store: ObjectStore, user_id: str, item_id: str, ds: str | None = None) -> CoverForUser:
    """The published cover user ``user_id`` sees for ``item_id`` on ``ds`` (``_latest`` by default).

    The reference answer for the queries in docs/consumers.md: the user's row of ``user_segments``
    joined with the item's row of ``covers`` for that segment, both from the same publish.

    Raises:
        StorageError: nothing published for ``ds``; the user has no segment that day (users without
            impressions in the window have none: serve the item's reference image); the item is not
            in that day's catalog; or the day is being republished (the tables' publish ids differ:
            ask again).
    """
    day = ds or layout.PUBLISHED_COVERS.latest(store)
    if day is None:
        raise StorageError(f"nothing published yet under {layout.PUBLISHED_COVERS.root_uri(store)}")
    if not layout.PUBLISHED_USER_SEGMENTS.exists(store, day):
        raise StorageError(f"no user_segments published for ds={day} (published before user segments were)")
    users = layout.PUBLISHED_USER_SEGMENTS.read(store, day)
    users = users.filter(pc.equal(users["user_id"], user_id)).to_pylist()
    if not users:
        raise StorageError(
            f"user {user_id!r} has no segment on ds={day} (no impressions in its window): serve the item's reference image"
        )
    covers = layout.PUBLISHED_COVERS.read(store, day)
    mask = pc.and_(
        pc.equal(covers["item_id"], item_id), pc.equal(covers["segment_id"], users[0]["segment_id"])
    )
    rows = covers.filter(mask).to_pylist()
    if not rows:
        raise StorageError(f"item {item_id!r} has no published cover on ds={day} (not in that day's catalog)")
    row = rows[0]
    if row["publish_id"] != users[0]["publish_id"]:
        raise StorageError(f"ds={day} is being republished (publish ids differ); ask again")
    return CoverForUser(
        ds=day, user_id=user_id, item_id=item_id, segment_id=int(row["segment_id"]),
        cover_uri=row["cover_uri"], cover_url=row["cover_url"],
        generator_version=row["generator_version"], publish_id=row["publish_id"],
    )  # fmt: skip
