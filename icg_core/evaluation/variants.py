"""The covers each evaluated variant shows, for the same held-out items, segments and seeds.

Every variant is a uint8 array ``[I * S, H, W, 3]`` in item-major (item, segment) order: row
``i * S + s`` is the cover item ``i`` shows to segment ``s``.

- ``reference``: the item's reference cover, the same for every segment;
- ``selection``: the non-generative baseline platforms use today: among the item's existing cover
  variants (those its validated impressions showed), the one the preference model scores highest
  for the segment centroid;
- generated variants (``base``: the stage-1 generator with the null user; ``icg`` and its
  ablations: a stage-2 generator with the segment centroid, made by the same
  :class:`icg_core.serving.policy.CoverPolicy` as the published covers; ``icg_unguided``: the same
  generator sampled plainly, no reward guidance and no fallback). They share seeds: row (i, s) uses
  ``seed_for(item_i, segment_s, <the production generator version>)``, the seed the generate stage
  used for the day's covers, so the stage's staged covers can be read instead of sampled again, and
  the base generator's covers differ from one segment to the next by seed only -- the fair
  baseline for between-segment diversity.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from icg_core import layout
from icg_core.data.images import read_images
from icg_core.models.bundle import ICGBundle
from icg_core.models.generator import seed_for
from icg_core.progress import Progress
from icg_core.rewards.common import RewardFn
from icg_core.serving.features import compute_item_features, load_features
from icg_core.serving.policy import CoverPolicy, CoverRewards, Sampling, base_seed
from icg_core.storage import ObjectStore
from icg_core.training.data import load_catalog_covers, read_catalog, split_items

log = logging.getLogger(__name__)


@dataclass
class EvalItems:
    """The held-out items evaluated, in item_id order.

    Attributes:
        item_ids, titles, categories: per item, length I.
        references: uint8 ``[I, H, W, 3]`` reference covers at the generator's resolution.
        logged: per item, uint8 ``[K_i, H, W, 3]`` covers its impressions showed (else its reference).
        features: ``[I, N, d]`` meta-token features (the feature cache of the generator's encoder).
    """

    item_ids: list[str]
    titles: list[str]
    categories: list[str]
    references: np.ndarray
    logged: list[np.ndarray]
    features: torch.Tensor

    def __len__(self) -> int:
        return len(self.item_ids)

    def head(self, n: int) -> EvalItems:
        """The first ``n`` items."""
        return EvalItems(self.item_ids[:n], self.titles[:n], self.categories[:n], self.references[:n],
                         self.logged[:n], self.features[:n])  # fmt: skip


@dataclass
class EvalSegments:
    """The day's segments: ids ``[S]`` (sorted), centroids ``[S, D]``, users per segment ``[S]``."""

    segment_ids: np.ndarray
    centroids: np.ndarray
    sizes: np.ndarray
    user_ids: dict[int, list[str]]

    def __len__(self) -> int:
        return len(self.segment_ids)


@dataclass
class VariantCovers:
    """One variant's covers, item-major ``[I * S, H, W, 3]``, and what producing them cost.

    Attributes:
        images: the covers.
        seconds: wall time to produce ``timed_covers`` of them (sampling, or scoring for selection).
        timed_covers: covers that ``seconds`` paid for.
        n_covers: distinct covers the variant shows (I for the reference, I * S for generators).
        version: the generator version (None for non-generative variants).
        source: "catalog", "logged", "generated", "staged" (read from the generate stage) or "oracle".
        fallbacks: covers where the policy kept the base cover (None: no policy made them).
        references: covers where no candidate kept the item and the policy kept its reference.
    """

    images: np.ndarray
    seconds: float
    timed_covers: int
    n_covers: int
    version: str | None
    source: str
    fallbacks: int | None = None
    references: int | None = None

    @property
    def seconds_per_cover(self) -> float:
        return self.seconds / self.timed_covers if self.timed_covers else 0.0


def held_out_item_ids(store: ObjectStore, ds: str, holdout_fraction: float, limit: int | None) -> list[str]:
    """The stage-1 held-out items of ``ds`` in item_id order, the first ``limit`` of them (None = all)."""
    catalog = read_catalog(store, ds)
    _, held = split_items(catalog.column("item_id").to_pylist(), holdout_fraction)
    if not held:
        raise ValueError(f"ds={ds}: holdout_fraction={holdout_fraction} leaves no held-out item to evaluate")
    return held if limit is None else held[:limit]


def load_eval_items(store: ObjectStore, ds: str, item_ids: Sequence[str], bundle: ICGBundle) -> EvalItems:
    """Titles, reference and logged covers, and cached features of ``item_ids`` (features via ``bundle``'s encoder)."""
    size = bundle.covers.image_size
    covers = load_catalog_covers(store, ds, size, item_ids=item_ids, with_variants=True)
    logged = []
    for i in range(len(covers)):
        own = covers.covers[covers.cover_item == i]
        logged.append(own[1:] if len(own) > 1 else own)  # row 0 is the reference
    catalog = read_catalog(store, ds)
    rows = catalog.filter(pc.is_in(catalog.column("item_id"), pa.array(covers.item_ids, pa.string())))
    features = compute_item_features(bundle.encoder, rows, store).table
    uri_of = dict(
        zip(features.column("item_id").to_pylist(), features.column("features_uri").to_pylist(), strict=True)
    )
    return EvalItems(
        item_ids=covers.item_ids,
        titles=covers.titles,
        categories=covers.categories,
        references=covers.references,
        logged=logged,
        features=load_features(store, [uri_of[i] for i in covers.item_ids]),
    )


def pair_seeds(item_ids: Sequence[str], segment_ids: Sequence[int], generator_version: str) -> list[int]:
    """Item-major seeds of every (item, segment) pair: the generate stage's ``seed_for``."""
    return [seed_for(item, int(s), generator_version) for item in item_ids for s in segment_ids]


def reference_covers(items: EvalItems, n_segments: int) -> VariantCovers:
    """Each item's reference cover, repeated for every segment."""
    return VariantCovers(np.repeat(items.references, n_segments, axis=0), 0.0, 0, len(items), None, "catalog")


def select_covers(items: EvalItems, segments: EvalSegments, preference: RewardFn) -> VariantCovers:
    """Best-variant selection: per item and segment, the logged cover with the highest click probability.

    Args:
        items: the evaluated items (their ``logged`` covers are the candidates).
        segments: the segments (``preference`` scores by ``segment_id``).
        preference: the preference reward fn, built with the segment centroids.
    """
    started = time.perf_counter()
    chosen, distinct = [], 0
    for i, candidates in enumerate(items.logged):
        k = len(candidates)
        stacked = np.tile(candidates, (len(segments), 1, 1, 1))  # segment-major [S * K]
        metadata = [
            {"segment_id": int(s), "category": items.categories[i]}
            for s in segments.segment_ids
            for _ in range(k)
        ]
        _, info = preference(stacked, [items.titles[i]] * len(stacked), metadata)
        picks = np.asarray(info["click_probability"]).reshape(len(segments), k).argmax(axis=1)
        chosen.append(candidates[picks])
        distinct += len(set(picks.tolist()))
    seconds = time.perf_counter() - started
    images = np.concatenate(chosen)
    return VariantCovers(images, seconds, len(images), distinct, None, "logged")


def generate_covers(
    bundle: ICGBundle,
    items: EvalItems,
    segments: EvalSegments,
    seeds: Sequence[int],
    sampling: Sampling,
    *,
    personalized: bool,
    batch_size: int,
    rewards: CoverRewards | None = None,
) -> VariantCovers:
    """Every (item, segment) cover: by the cover policy with the segment centroid, or the null user plainly.

    Args:
        bundle: the generator.
        items, segments: what to cover.
        seeds: item-major seeds ``[I * S]`` (:func:`pair_seeds`).
        sampling: how covers are made (those of the day's covers; plain sampling for the base).
        personalized: condition on the segment centroid through the policy (False: the null user, the base).
        batch_size: covers made at once.
        rewards: the reward models the policy scores and steers with (needed when ``sampling`` uses them).
    """
    n_segments = len(segments)
    rows = torch.arange(len(items)).repeat_interleave(n_segments)
    started = time.perf_counter()
    fallbacks: int | None = None
    references: int | None = None
    progress = Progress(
        f"stage=evaluate {'icg' if personalized else 'base'} {bundle.version}", len(rows), "covers"
    )
    if personalized:
        images, fallbacks, references = _policy_covers(
            CoverPolicy(bundle, sampling, rewards), items, segments, seeds, rows, batch_size, progress
        )
    else:
        chunks = []
        for start in range(0, len(rows), batch_size):  # the batches generate() makes, one at a time
            part = slice(start, start + batch_size)
            chunks.append(
                bundle.generate(
                    items.features[rows[part]],
                    list(seeds[part]),
                    steps=sampling.steps,
                    guidance_scale=sampling.guidance_scale,
                    scheduler=sampling.scheduler,
                    batch_size=batch_size,
                )
            )
            progress.add(len(chunks[-1]))
        images = np.concatenate(chunks)
    progress.finish()
    seconds = time.perf_counter() - started
    log.info(
        "stage=evaluate generated %d covers with %s in %.1fs (fallbacks=%s, references=%s)",
        len(images),
        bundle.version,
        seconds,
        fallbacks,
        references,
    )
    return VariantCovers(
        images, seconds, len(images), len(images), bundle.version, "generated", fallbacks, references
    )


def _policy_covers(
    policy: CoverPolicy,
    items: EvalItems,
    segments: EvalSegments,
    seeds: Sequence[int],
    rows: torch.Tensor,
    batch_size: int,
    progress: Progress,
) -> tuple[np.ndarray, int, int]:
    """(covers, base fallbacks, reference stand-ins) of the item-major ``rows`` through the cover policy."""
    users = torch.from_numpy(np.tile(segments.centroids, (len(items), 1))).float()
    segment_ids = np.tile(segments.segment_ids, len(items)).tolist()
    chunks, fallbacks, references = [], 0, 0
    version = policy.bundle.version
    for start in range(0, len(rows), batch_size):
        part = slice(start, start + batch_size)
        item_rows = rows[part].tolist()
        made = policy(
            items.features[rows[part]],
            users[part],
            list(seeds[part]),
            titles=[items.titles[i] for i in item_rows],
            segment_ids=segment_ids[part],
            categories=[items.categories[i] for i in item_rows],
            base_seeds=[base_seed(items.item_ids[i], version) for i in item_rows],
            item_ids=[items.item_ids[i] for i in item_rows],
            references=items.references[item_rows],
        )
        chunks.append(made.images)
        fallbacks += made.fallbacks
        references += made.references
        progress.add(len(item_rows))
    return np.concatenate(chunks), fallbacks, references


def staged_covers(
    store: ObjectStore,
    ds: str,
    generator_version: str,
    item_ids: Sequence[str],
    segment_ids: Sequence[int],
    size: int,
) -> np.ndarray | None:
    """The generate stage's covers of ``ds`` for these pairs, item-major, if it staged all of them.

    Returns None unless the staged manifest holds every (item, segment) pair from ``generator_version``.
    """
    uri_of = staged_segment_covers(store, ds, generator_version)
    wanted = [(item, int(s)) for item in item_ids for s in segment_ids]
    if any(pair not in uri_of for pair in wanted):
        return None
    return read_images(store, [uri_of[pair] for pair in wanted], size)


def staged_segment_covers(store: ObjectStore, ds: str, generator_version: str) -> dict[tuple[str, int], str]:
    """Every staged (item, segment) -> cover URI of ``ds`` from ``generator_version`` (empty if none)."""
    if not layout.STAGED_COVERS.exists(store, ds):
        return {}
    manifest = layout.STAGED_COVERS.read(store, ds)
    manifest = manifest.filter(pc.equal(manifest.column("generator_version"), generator_version))
    return {
        (item, int(segment)): uri
        for item, segment, uri in zip(
            manifest.column("item_id").to_pylist(),
            manifest.column("segment_id").to_pylist(),
            manifest.column("cover_uri").to_pylist(),
            strict=True,
        )
    }
