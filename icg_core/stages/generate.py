"""Covers at catalog scale: one PNG and one manifest row per (item, segment), resumable, without Ray.

The generate stage (:mod:`pipelines.generate`) runs :class:`CoverWriter` inside Ray actors; a plain
loop (:func:`generate_covers`) runs the same writer in one process. Layout under the root::

    covers/ds=<ds>/segment=<s>/<item_id>-<digest>.png   the cover, named by a digest of its bytes
    covers/ds=<ds>/segment=<s>/<item_id>.json            its sidecar: the manifest row, the cover's
                                                         key and fingerprint

Cover images are immutable: a PNG is never rewritten with other bytes, because its key carries its
content digest. A rerun or a forced regenerate writes new keys and moves only the sidecar, so the
images yesterday's (or this morning's) published manifest points to stay as they were.

A cover is a pure function of its inputs: the item's content hash (title, reference image, encoder
version), the generator version, the segment centroid and the sampling settings; its seed is
``seed_for(item, segment, generator version)``. Their digest is the cover's *fingerprint*. Before
generating, a writer looks for a sidecar with the same fingerprint: today's (a retried batch, a
rerun after a crash: the cover is kept) or the previous day's (a nightly run: the PNG is copied,
not regenerated). The sidecar is written after its PNG, so a sidecar always names a complete cover.

Which pairs are drawn at all is decided first, for the whole day (:mod:`icg_core.serving.refresh`):
new pairs, changed items and out-of-date covers, within the night's budget; every other pair copies
yesterday's cover forward (``made_ds`` keeps the day it was drawn for).

The VLM does not run here: covers read the per-item feature cache (:mod:`icg_core.serving.features`),
so the encoder's cost grows with items, and only diffusion with items x segments.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, astuple, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from icg_core import layout
from icg_core.config import ICGConfig, ModelsConfig, RewardWeights
from icg_core.data.images import read_images
from icg_core.data.schemas import TABLES
from icg_core.models.checkpoint import (
    checkpoint_config,
    checkpoint_exists,
    resolve_version,
)
from icg_core.models.generator import seed_for
from icg_core.rewards.common import model_name
from icg_core.rewards.content import load_content_index
from icg_core.serving.features import load_features
from icg_core.serving.pairs import PairCounts
from icg_core.serving.policy import (
    BASE,
    REFERENCE,
    REWARD_KINDS,
    CoverPolicy,
    CoverRewards,
    Sampling,
    base_seed,
    load_cover_rewards,
)
from icg_core.serving.refresh import GENERATE, REUSE, RefreshPlan, centroid_drift, plan_refresh
from icg_core.storage import ObjectStore, ParquetStream, StorageError

log = logging.getLogger(__name__)

FORMAT = "PNG"
# Columns of a generation request: one row per (item, segment).
REQUEST_COLUMNS = (
    "item_id",
    "title",
    "category",
    "reference_image_uri",
    "content_hash",
    "features_uri",
    "segment_id",
)
# Status of each manifest row: generated now, kept from today's earlier attempt, or copied from a previous day.
GENERATED, KEPT, COPIED = "generated", "kept", "copied"


class GenerateInputError(ValueError):
    """The generate (or features) stage cannot start on these inputs; the message says what to run or fix."""


def cover_fingerprint(
    content_hash: str,
    generator_version: str,
    centroid: np.ndarray,
    sampling: Sampling,
    rewards: Mapping[str, Any] | None = None,
) -> str:
    """Digest of everything a cover depends on; equal fingerprints mean identical covers.

    ``rewards`` (reward versions and R's weights) counts when the sampling uses the rewards.
    """
    centroid_digest = hashlib.sha256(np.asarray(centroid, np.float32).tobytes()).hexdigest()
    parts = [content_hash, generator_version, centroid_digest, list(astuple(sampling))]
    if sampling.uses_rewards:
        parts.append(sorted((rewards or {}).items()))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


# ------------------------------------------------------------------ inputs, checked before any work
@dataclass
class GeneratePlan:
    """What the generate stage will do for ``ds``; built by :func:`plan_generation`.

    Attributes:
        items: one row per item: item_id, title, category, reference_image_uri, content_hash, features_uri.
        centroids: segment id -> centroid ``[D]``.
        generator_version: the resolved generator checkpoint version.
        reward_versions: reward kind -> resolved version.
        previous_ds: the latest earlier day with covers (reuse source), or None.
        sampling: how covers are made (:class:`icg_core.serving.policy.Sampling`).
        reward_weights: the weights of R that candidates are chosen by.
        refresh: the night's :class:`icg_core.serving.refresh.RefreshPlan`.
    """

    ds: str
    items: pa.Table
    centroids: dict[int, np.ndarray]
    generator_version: str
    reward_versions: dict[str, str]
    previous_ds: str | None
    sampling: Sampling
    reward_weights: RewardWeights = field(default_factory=RewardWeights)
    refresh: RefreshPlan | None = None  # which pairs tonight draws (None in a worker: rows carry it)

    @property
    def segment_ids(self) -> list[int]:
        return sorted(self.centroids)

    @property
    def rows(self) -> int:
        return self.items.num_rows * len(self.centroids)

    @property
    def sampling_digest(self) -> str:
        """Digest of the sampling settings: covers drawn with other settings are out of date."""
        return hashlib.sha256(json.dumps(list(astuple(self.sampling))).encode()).hexdigest()[:16]

    @property
    def reward_fingerprint(self) -> dict[str, Any]:
        """What of the rewards a cover depends on when its sampling uses them."""
        return {**self.reward_versions, "weights": self.reward_weights.model_dump()}


def read_catalog_items(store: ObjectStore, ds: str, items_limit: int | None = None) -> pa.Table:
    """The validated catalog of ``ds`` sorted by item_id (first ``items_limit`` items when given).

    Raises:
        GenerateInputError: no validated catalog for ``ds``, or it is empty.
    """
    if not layout.CATALOG.exists(store, ds):
        where = layout.CATALOG.uri(store, ds)
        raise GenerateInputError(
            f"no validated catalog for ds={ds} ({where}); run extract and validate first"
        )
    catalog = layout.CATALOG.read(store, ds)
    catalog = catalog.sort_by("item_id")
    if items_limit is not None:
        catalog = catalog.slice(0, max(items_limit, 0))
    if catalog.num_rows == 0:
        raise GenerateInputError(
            f"the validated catalog of ds={ds} is empty (items_limit={items_limit}): nothing to do"
        )
    return catalog


def read_centroids(store: ObjectStore, ds: str) -> dict[int, np.ndarray]:
    """Segment centroids of ``ds``.

    Raises:
        GenerateInputError: no segment table for ``ds``, or no segments in it.
    """
    if not layout.SEGMENT_CENTROIDS.exists(store, ds):
        where = layout.SEGMENT_CENTROIDS.uri(store, ds)
        raise GenerateInputError(f"no segment table for ds={ds} ({where}); run the users stage first")
    table = layout.SEGMENT_CENTROIDS.read(store, ds)
    centroids = {
        int(s): np.asarray(c, np.float32)
        for s, c in zip(
            table.column("segment_id").to_pylist(), table.column("centroid").to_pylist(), strict=True
        )
    }
    if not centroids:
        raise GenerateInputError(f"the segment table of ds={ds} has no segments")
    return centroids


def resolve_generator(store: ObjectStore, models: ModelsConfig, version: str) -> tuple[str, dict[str, Any]]:
    """(resolved version, saved module config) of the generator, or a clear error if it does not exist."""
    name = models.generator_name
    if not checkpoint_exists(store, name, version):
        known = layout.model_versions_stored(store, name, complete=False)
        raise GenerateInputError(
            f"generator {name!r} version {version!r} does not exist under {store.uri(layout.model_versions(name))}"
            f" (versions found: {known or 'none'}); run bootstrap / finetune, or pick an existing version"
        )
    resolved = resolve_version(store, name, version)
    config = checkpoint_config(store, name, resolved)
    return resolved, config


def plan_generation(
    store: ObjectStore, cfg: ICGConfig, ds: str, *, items_limit: int | None = None, version: str | None = None
) -> GeneratePlan:
    """Check every input of the generate stage and say what it will do; nothing is written but a probe.

    Order: the output root is writable; catalog, segments, generator, reward models and the day's
    item features exist and agree (features computed with the generator's encoder, for every item).

    Raises:
        StorageError: the root cannot be written.
        GenerateInputError: a missing or inconsistent input, named with what to run.
    """
    store.check_writable()
    catalog = read_catalog_items(store, ds, items_limit)
    centroids = read_centroids(store, ds)
    generator_version, generator_config = resolve_generator(
        store, cfg.models, version or cfg.generate.generator_version
    )
    reward_versions = {}
    for kind in REWARD_KINDS:
        if not checkpoint_exists(store, model_name(kind), cfg.generate.reward_version):
            raise GenerateInputError(
                f"reward model {model_name(kind)!r} version {cfg.generate.reward_version!r} does not exist; run the rewards stage first"
            )
        reward_versions[kind] = resolve_version(store, model_name(kind), cfg.generate.reward_version)
    if not layout.ITEM_FEATURES.exists(store, ds):
        raise GenerateInputError(f"no item features for ds={ds}; run the features stage first")
    features = layout.ITEM_FEATURES.read(store, ds)
    encoder_version = generator_config["encoder_version"]
    features = features.filter(pc.equal(features.column("encoder_version"), encoder_version))
    items = (
        catalog.select(["item_id", "title", "category", "reference_image_uri"])
        .join(features.select(["item_id", "content_hash", "features_uri"]), "item_id", join_type="left outer")
        .sort_by("item_id")
    )
    missing = items.filter(pc.is_null(items.column("features_uri"))).column("item_id").to_pylist()
    if missing:
        raise GenerateInputError(
            f"{len(missing)} items of ds={ds} have no features from encoder {encoder_version} "
            f"(e.g. {missing[:3]}); run the features stage with generator {generator_version}"
        )
    previous = [d for d in _cover_days(store) if d < ds] if cfg.generate.reuse_previous_days else []
    plan = GeneratePlan(
        ds=ds,
        items=items,
        centroids=centroids,
        generator_version=generator_version,
        reward_versions=reward_versions,
        previous_ds=previous[-1] if previous else None,
        sampling=Sampling.from_config(cfg),
        reward_weights=cfg.rewards.weights,
    )
    plan.refresh = _refresh(store, cfg, plan)
    log.info(
        "stage=generate ds=%s plan items=%d segments=%d rows=%d generator=%s previous_ds=%s refresh=%s budget=%s",
        ds, items.num_rows, len(centroids), plan.rows, generator_version, plan.previous_ds,
        plan.refresh.counts(), cfg.generate.max_covers_per_night,
    )  # fmt: skip
    return plan


def _refresh(store: ObjectStore, cfg: ICGConfig, plan: GeneratePlan) -> RefreshPlan:
    """Which pairs tonight draws, from yesterday's manifest, segments and sampling (:mod:`icg_core.serving.refresh`)."""
    previous, drift, same_sampling = None, {}, False
    if plan.previous_ds is not None:
        previous = layout.STAGED_COVERS.read_columns(
            store, plan.previous_ds, ["item_id", "segment_id", "content_hash", "generator_version"]
        )
        if layout.SEGMENT_CENTROIDS.exists(store, plan.previous_ds):
            drift = centroid_drift(plan.centroids, read_centroids(store, plan.previous_ds))
        record = layout.cover_plan(plan.previous_ds)
        same_sampling = (
            store.exists(record) and store.get_json(record).get("sampling") == plan.sampling_digest
        )
    traffic: Counter[str] = Counter()  # impressions per item: counted a batch at a time
    if layout.IMPRESSIONS.exists(store, plan.ds):
        for batch in layout.IMPRESSIONS.iter_batches(store, plan.ds, 1 << 16, columns=["item_id"]):
            traffic.update(
                {c["values"]: c["counts"] for c in pc.value_counts(batch.column("item_id")).to_pylist()}
            )
    pairs = expand_segments(plan.items.select(["item_id", "content_hash"]), plan.segment_ids)
    return plan_refresh(
        pairs, previous, generator_version=plan.generator_version, sampling_unchanged=same_sampling,
        drift=drift, tolerance=cfg.generate.segment_tolerance, traffic=traffic, budget=cfg.generate.max_covers_per_night,
    )  # fmt: skip


def writer_fields(plan: GeneratePlan) -> dict[str, Any]:
    """What a :class:`CoverWriter` in another process needs of ``plan``, as small plain values.

    No items (the writer gets its requests in batches) and no centroids (:func:`writer_plan` reads
    them from the store again): a Ray actor is built from a few hundred bytes, and a restarted
    actor from the same ones.
    """
    return {
        "ds": plan.ds,
        "segment_ids": plan.segment_ids,
        "generator_version": plan.generator_version,
        "reward_versions": dict(plan.reward_versions),
        "previous_ds": plan.previous_ds,
        "sampling": asdict(plan.sampling),
        "reward_weights": plan.reward_weights.model_dump(mode="json"),
    }


def writer_plan(store: ObjectStore, fields: Mapping[str, Any]) -> GeneratePlan:
    """The plan of :func:`writer_fields` again, in a worker: no items; the day's centroids read from ``store``.

    Raises:
        GenerateInputError: the day's segments are no longer those the plan was made with.
    """
    centroids = read_centroids(store, fields["ds"])
    if sorted(centroids) != list(fields["segment_ids"]):
        raise GenerateInputError(
            f"the segments of ds={fields['ds']} changed since the plan was made: "
            f"{sorted(centroids)} != {fields['segment_ids']}"
        )
    sampling: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in fields["sampling"].items()
    }
    return GeneratePlan(
        ds=fields["ds"],
        items=pa.table({}),
        centroids=centroids,
        generator_version=fields["generator_version"],
        reward_versions=dict(fields["reward_versions"]),
        previous_ds=fields["previous_ds"],
        sampling=Sampling(**sampling),
        reward_weights=RewardWeights.model_validate(fields["reward_weights"]),
    )


def _cover_days(store: ObjectStore) -> list[str]:
    """Days that have a staged covers manifest (their sidecars are complete)."""
    return layout.STAGED_COVERS.days(store)


def expand_segments(items: pa.Table, segment_ids: list[int]) -> pa.Table:
    """Item rows -> one row per (item, segment), item-major, with ``segment_id`` appended."""
    index = np.repeat(np.arange(items.num_rows), len(segment_ids))
    expanded = items.take(pa.array(index, pa.int64()))
    return expanded.append_column("segment_id", pa.array(segment_ids * items.num_rows, pa.int32()))


def requests(plan: GeneratePlan, start: int = 0, count: int | None = None) -> pa.Table:
    """Request rows (``REQUEST_COLUMNS`` and the night's ``action``) of items ``[start, start + count)`` x segments.

    Item-major, in the plan's item order (all items by default). The refresh decided every pair in
    this same order, so a range's actions are a slice of it: no lookup over the whole day.
    """
    items = plan.items.slice(start, count)
    rows = expand_segments(items, plan.segment_ids).select(list(REQUEST_COLUMNS))
    if plan.refresh is None:  # before the refresh is planned: draw everything
        return rows.append_column("action", pa.array([GENERATE] * rows.num_rows, pa.string()))
    decided = plan.refresh.actions.slice(start * len(plan.segment_ids), rows.num_rows)
    aligned = decided.num_rows == rows.num_rows and all(
        decided.column(key).equals(rows.column(key).cast(decided.column(key).type))
        for key in ("item_id", "segment_id")
    )
    if not aligned:
        raise GenerateInputError(f"the refresh plan of ds={plan.ds} does not match its items; plan again")
    return rows.append_column("action", decided.column("action"))


def request_batches(plan: GeneratePlan, batch_rows: int) -> Iterator[pa.Table]:
    """:func:`requests` about ``batch_rows`` rows at a time (whole items), built as they are needed."""
    per_batch = max(1, batch_rows // max(1, len(plan.segment_ids)))
    for start in range(0, plan.items.num_rows, per_batch):
        yield requests(plan, start, per_batch)


# ------------------------------------------------------------------ rewards and the writer
def load_plan_rewards(store: ObjectStore, plan: GeneratePlan, image_size: int) -> CoverRewards:
    """The reward models the plan's covers are scored (and, with guidance, steered) by, and with the
    item guard, the content index of the day's validated catalog (references read at ``image_size``)."""
    content = None
    if plan.sampling.item_rank > 0:
        content = load_content_index(store, layout.CATALOG.read(store, plan.ds), image_size)
    return load_cover_rewards(
        store,
        plan.reward_versions,
        plan.centroids,
        plan.reward_weights,
        guidance=plan.sampling.reward_steps > 0,
        content=content,
    )


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=FORMAT)
    return buffer.getvalue()


@dataclass
class WriterCounts:
    generated: int = 0
    kept: int = 0
    copied: int = 0
    encoder_calls: int = 0  # meta-token encoder forward passes made while generating (expected 0)
    sample_seconds: float = 0.0


@dataclass
class CoverWriter:
    """Turns request rows into covers + manifest rows, skipping covers whose fingerprint is already written.

    Args:
        store: the object store.
        bundle: the loaded generator (:class:`icg_core.models.bundle.ICGBundle`).
        rewards: the reward fns and content index (:func:`load_plan_rewards`).
        plan: the day's :class:`GeneratePlan` (ds, centroids, versions, previous day, sampling).
        force: regenerate even when a matching cover exists.
        on_written: called with the number of covers this writer generated so far, after each one
            (the fault-injection hook of the stage's tests).
    """

    store: ObjectStore
    bundle: Any
    rewards: CoverRewards
    plan: GeneratePlan
    force: bool = False
    on_written: Callable[[int], None] | None = None
    counts: WriterCounts = field(default_factory=WriterCounts)

    def __post_init__(self) -> None:
        self.bundle.encoder.register_forward_hook(self._count_encoder_call)
        content = self.rewards.content
        self._rewards_fingerprint = self.plan.reward_fingerprint | (
            {} if content is None else {"content_index": content.digest}
        )

    def _count_encoder_call(self, *_: Any) -> None:
        self.counts.encoder_calls += 1

    def write(self, batch: pa.Table) -> pa.Table:
        """Covers for ``batch`` (``REQUEST_COLUMNS``): the manifest rows plus ``status``, in batch order."""
        rows = batch.to_pylist()
        out: list[dict[str, Any] | None] = [None] * len(rows)
        todo = []
        for i, row in enumerate(rows):
            row["fingerprint"] = cover_fingerprint(
                row["content_hash"],
                self.plan.generator_version,
                self.plan.centroids[int(row["segment_id"])],
                self.plan.sampling,
                self._rewards_fingerprint,
            )
            if not self.force:
                out[i] = self._carry(row) if row.get("action") == REUSE else self._reuse(row)
            if out[i] is None:
                todo.append(i)
        if todo:
            for i, manifest_row in zip(todo, self._generate([rows[i] for i in todo]), strict=True):
                out[i] = manifest_row
        return pa.Table.from_pylist(out, schema=MANIFEST_SCHEMA)

    def _reuse(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """Today's cover of the same fingerprint (kept), or yesterday's (copied forward); None: draw it."""
        ds, segment, item = self.plan.ds, int(row["segment_id"]), row["item_id"]
        today = self._sidecar(ds, segment, item)
        if today is not None and today["fingerprint"] == row["fingerprint"]:
            self.counts.kept += 1
            return self._manifest_row(today, KEPT)
        return self._carry(row, fingerprint=row["fingerprint"])

    def _carry(self, row: dict[str, Any], fingerprint: str | None = None) -> dict[str, Any] | None:
        """Yesterday's cover of the pair, copied forward as it is (only one of ``fingerprint`` when given).

        None: there is none to copy, so the caller draws it.
        """
        ds, segment, item, previous = (
            self.plan.ds,
            int(row["segment_id"]),
            row["item_id"],
            self.plan.previous_ds,
        )
        saved = None if previous is None else self._sidecar(previous, segment, item)
        if saved is None or (fingerprint is not None and saved["fingerprint"] != fingerprint):
            return None
        data = self.store.get_bytes(saved["cover_key"])
        saved = {**saved, "made_ds": _made_ds(saved), "cover_key": self._put_cover(ds, segment, item, data)}
        self.store.put_json(layout.cover_sidecar(ds, segment, item), saved)
        self.counts.copied += 1
        return self._manifest_row(saved, COPIED)

    def _sidecar(self, day: str, segment: int, item: str) -> dict[str, Any] | None:
        """The sidecar of a complete cover of ``day``, with its ``cover_key``; None when there is none."""
        key = layout.cover_sidecar(day, segment, item)
        if not self.store.exists(key):
            return None
        try:
            saved = dict(self.store.get_json(key))
        except (StorageError, ValueError, TypeError):
            return None  # a sidecar that cannot be read is regenerated, not trusted
        saved.setdefault("cover_key", layout.legacy_cover(day, segment, item))
        return saved if self.store.exists(saved["cover_key"]) else None

    def _put_cover(self, ds: str, segment: int, item: str, png: bytes) -> str:
        """Store a cover under its content-addressed key (never overwriting other bytes); returns the key."""
        key = layout.cover(ds, segment, item, hashlib.sha256(png).hexdigest()[:16])
        if not self.store.exists(key):
            self.store.put_bytes(key, png)
        return key

    def _generate(self, rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        started = time.perf_counter()
        plan = self.plan
        import torch

        features = load_features(self.store, [r["features_uri"] for r in rows])
        segments = [int(r["segment_id"]) for r in rows]
        users = torch.from_numpy(np.stack([plan.centroids[s] for s in segments]))
        seeds = [
            seed_for(r["item_id"], s, plan.generator_version) for r, s in zip(rows, segments, strict=True)
        ]
        references = None
        if plan.sampling.uses_references:
            uris = [r["reference_image_uri"] for r in rows]
            references = read_images(self.store, uris, self.bundle.covers.image_size)
        covers = CoverPolicy(self.bundle, plan.sampling, self.rewards)(
            features,
            users,
            seeds,
            titles=[r["title"] for r in rows],
            segment_ids=segments,
            categories=[r["category"] for r in rows],
            base_seeds=[base_seed(r["item_id"], plan.generator_version) for r in rows],
            item_ids=[r["item_id"] for r in rows],
            references=references,
        )
        images, rewards = covers.images, covers.rewards
        self.counts.sample_seconds += time.perf_counter() - started
        created_at = dt.datetime.now(dt.UTC).isoformat()
        for i, row in enumerate(rows):
            saved = {
                "item_id": row["item_id"],
                "segment_id": segments[i],
                "width": int(images.shape[2]),
                "height": int(images.shape[1]),
                "format": FORMAT,
                "reward_aesthetic": float(rewards["aesthetic"][i]),
                "reward_relevance": float(rewards["relevance"][i]),
                "reward_preference": float(rewards["preference"][i]),
                "generator_version": plan.generator_version,
                "base_model": self.bundle.covers.base_model,
                "source": covers.source[i],
                "seed": seeds[i],
                "content_hash": row["content_hash"],
                "created_at": created_at,
                "made_ds": plan.ds,
                "fingerprint": row["fingerprint"],
            }
            # PNG first, sidecar second: a sidecar always names a complete cover.
            saved["cover_key"] = self._put_cover(plan.ds, segments[i], row["item_id"], encode_png(images[i]))
            self.store.put_json(layout.cover_sidecar(plan.ds, segments[i], row["item_id"]), saved)
            self.counts.generated += 1
            if self.on_written is not None:
                self.on_written(self.counts.generated)
            yield self._manifest_row(saved, GENERATED)

    def _manifest_row(self, saved: Mapping[str, Any], status: str) -> dict[str, Any]:
        row = {name: saved[name] for name in MANIFEST_SCHEMA.names if name in saved}
        row["cover_uri"] = saved["cover_key"]  # relative to the root (icg_core.storage)
        row["made_ds"] = _made_ds(saved)
        row["created_at"] = dt.datetime.fromisoformat(saved["created_at"])
        row["status"] = status
        return row


def _made_ds(saved: Mapping[str, Any]) -> str:
    """The day a cover was drawn for (sidecars from before ``made_ds`` say it in their key)."""
    return str(saved.get("made_ds") or layout.partition_day(saved["cover_key"]))


# The covers contract plus the row's status and source (dropped by the contract when the manifest is written).
MANIFEST_SCHEMA = pa.schema(
    [
        *[pa.field(f.name, f.type) for f in TABLES[layout.STAGED_COVERS.name]],
        pa.field("made_ds", pa.string()),  # the day the cover was drawn for (earlier when copied forward)
        pa.field("status", pa.string()),
        pa.field(
            "source", pa.string()
        ),  # "personalized", "base" (the fallback won) or "reference" (item lost)
    ]
)


# ------------------------------------------------------------------ the day's manifest
@dataclass
class GenerateSummary:
    """What a generate run did (the stage prints it)."""

    ds: str
    generator_version: str
    items: int
    segments: int
    rows: int
    generated: int
    kept: int
    copied: int
    encoder_calls: int
    fallbacks: int  # covers where the base cover beat every personalized candidate (icg_core.serving.policy)
    reference_covers: int  # pairs whose candidates all lost the item: its reference cover is published
    manifest_uri: str
    previous_ds: str | None
    seconds: float
    refresh: dict[str, Any] = field(default_factory=dict)  # pairs per reason, drawn and carried; the budget
    extra: dict[str, Any] = field(default_factory=dict)


class ManifestTally:
    """What a streamed manifest holds, checked batch by batch against the plan without keeping its rows.

    The plan's (item, segment) pairs counted (:class:`icg_core.serving.pairs.PairCounts`), and the
    rows per status and source: enough to refuse a manifest with lost or repeated work.
    """

    def __init__(self, plan: GeneratePlan) -> None:
        self.pairs = PairCounts(plan.items.column("item_id").to_pylist(), plan.segment_ids)
        self.statuses: dict[str, int] = {}
        self.fallbacks = 0  # covers where the base cover won (source "base")
        self.reference_covers = 0  # pairs published with the item's reference (source "reference")

    @property
    def rows(self) -> int:
        return self.pairs.rows

    def add(self, batch: pa.Table) -> None:
        self.pairs.add(batch.column("item_id"), batch.column("segment_id"))
        for value in pc.value_counts(batch.column("status")).to_pylist():
            self.statuses[value["values"]] = self.statuses.get(value["values"], 0) + value["counts"]
        self.fallbacks += int(pc.sum(pc.equal(batch.column("source"), BASE)).as_py() or 0)
        self.reference_covers += int(pc.sum(pc.equal(batch.column("source"), REFERENCE)).as_py() or 0)

    def problem(self) -> str | None:
        """Why the manifest cannot be committed (rows missing, repeated or outside the plan), or None."""
        pairs = self.pairs
        if pairs.complete:
            return None
        return (
            f"{pairs.rows} rows for {pairs.counts.size} expected: {len(pairs.missing())} (item, segment) "
            f"missing, {len(pairs.repeated())} repeated, {pairs.outside} outside the plan"
        )


def stage_manifest(store: ObjectStore, plan: GeneratePlan, batches: Iterable[pa.Table]) -> ManifestTally:
    """Stream manifest rows to ``staging/covers`` for publish, committing only if they cover items x segments once each.

    The rows go to a local Parquet file as they arrive (:class:`icg_core.storage.ParquetStream`): no
    process holds the day's manifest.

    Raises:
        StorageError: rows missing or duplicated (a worker lost or repeated work); nothing committed.
    """
    tally = ManifestTally(plan)
    with ParquetStream(layout.STAGED_COVERS.name) as stream:
        for batch in batches:
            tally.add(batch)
            stream.write(batch)
        problem = tally.problem()
        if problem is not None:
            raise StorageError(f"generate ds={plan.ds}: {problem}; manifest not committed")
        layout.STAGED_COVERS.write(store, stream, plan.ds)
    # What tomorrow's refresh compares against (the sampling these covers were drawn with).
    store.put_json(
        layout.cover_plan(plan.ds),
        {"generator_version": plan.generator_version, "sampling": plan.sampling_digest},
    )
    return tally


def summarize(
    store: ObjectStore,
    plan: GeneratePlan,
    tally: ManifestTally,
    *,
    seconds: float,
    encoder_calls: int,
    extra: dict[str, Any] | None = None,
) -> GenerateSummary:
    """The :class:`GenerateSummary` of a staged day (logged)."""
    summary = GenerateSummary(
        ds=plan.ds,
        generator_version=plan.generator_version,
        items=plan.items.num_rows,
        segments=len(plan.centroids),
        rows=tally.rows,
        generated=tally.statuses.get(GENERATED, 0),
        kept=tally.statuses.get(KEPT, 0),
        copied=tally.statuses.get(COPIED, 0),
        encoder_calls=encoder_calls,
        fallbacks=tally.fallbacks,
        reference_covers=tally.reference_covers,
        manifest_uri=layout.STAGED_COVERS.uri(store, plan.ds),
        previous_ds=plan.previous_ds,
        seconds=round(seconds, 3),
        refresh={} if plan.refresh is None else {**plan.refresh.counts(), "budget": plan.refresh.budget},
        extra=dict(extra or {}),
    )
    log.info(
        "stage=generate ds=%s committed %s",
        plan.ds,
        {k: v for k, v in summary.__dict__.items() if k != "extra"},
    )
    return summary


def generate_covers(
    store: ObjectStore,
    cfg: ICGConfig,
    ds: str,
    *,
    items_limit: int | None = None,
    force: bool = False,
    plan: GeneratePlan | None = None,
) -> GenerateSummary:
    """The generate stage in this process (no Ray): same writer, same batches, same manifest.

    Args:
        store: the object store.
        cfg: configuration (``models`` for sampling, ``generate`` for versions and batch size).
        ds: the day.
        items_limit: only the first N items (by item_id).
        force: regenerate covers even when a matching one exists.
        plan: a plan already made by :func:`plan_generation` (else made here).
    """
    from icg_core.models.bundle import load_bundle
    from icg_core.runtime import torch_threads

    started = time.perf_counter()
    plan = plan or plan_generation(store, cfg, ds, items_limit=items_limit)
    with torch_threads(cfg.models.cpu_threads):
        bundle = load_bundle(store, cfg.models, plan.generator_version)
        rewards = load_plan_rewards(store, plan, bundle.covers.image_size)
        writer = CoverWriter(store, bundle, rewards, plan, force)
        batches = (writer.write(batch) for batch in request_batches(plan, cfg.generate.batch_size))
        tally = stage_manifest(store, plan, batches)
    return summarize(
        store, plan, tally, seconds=time.perf_counter() - started, encoder_calls=writer.counts.encoder_calls
    )
