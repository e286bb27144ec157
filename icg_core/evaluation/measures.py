"""Measuring a variant's covers: rewards, the held-out aesthetic, the oracle, diversity; metrics with intervals.

Per (item, segment) cover (item-major rows, see :mod:`icg_core.evaluation.variants`):

- ``aesthetic``: the aesthetic reward, raw (embedded: the pixel proxy in [0, 1]);
- ``aesthetic_heldout``: :func:`icg_core.rewards.aesthetic.composition_score`, never a training reward;
- ``relevance``: the relevance reward, raw (title-image cosine);
- ``preference``: the preference model's click probability for the segment centroid;
- ``item_recall_1``, ``item_recall_10``: whether the item's own reference is the nearest (among the
  10 nearest) of the catalog gallery's references to the cover, in the frozen content encoder's space
  (:mod:`icg_core.rewards.content`): content measured against the item, on any catalog;
- ``category_top1`` (oracle): whether the oracle's pixel classifier names the item's category;
- ``oracle_ctr`` (oracle): mean click probability of the segment's users on the cover.

Per item: ``diversity``, the mean absolute pixel difference (in [0, 1]) between the covers its
segments get, averaged over segment pairs. Per-item values average the item's segments with equal
weight, except ``oracle_ctr``, weighted by segment size: it is the CTR of the whole user base when
each user sees their segment's cover. Oracle measures are None where the root has no oracle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from icg_core.evaluation.stats import mean_ci, per_item_means, relative_change_ci, rounded
from icg_core.evaluation.variants import EvalItems, EvalSegments, VariantCovers
from icg_core.rewards.aesthetic import composition_score
from icg_core.rewards.common import RewardFn
from icg_core.rewards.content import ContentIndex, recall_at
from icg_core.world.oracle import Oracle

HEADLINE = (
    "aesthetic",
    "aesthetic_heldout",
    "relevance",
    "item_recall_1",
    "item_recall_10",
    "category_top1",
    "preference",
    "oracle_ctr",
    "diversity",
)
ORACLE_METRICS = ("category_top1", "oracle_ctr")
# What an evaluation on real data (a root without the embedded world's oracle) cannot measure, and why.
NOT_MEASURED_WITHOUT_ORACLE = {
    "oracle_ctr": "needs each user's true click probability on a cover never shown; known only to the "
    "embedded world's oracle (on real data: an online A/B test)",
    "category_top1": "needs the oracle's pixel classifier of categories",
    "oracle_best": "the ceiling variant is drawn from the users' hidden tastes",
    "preference_model.oracle_auc": "the ceiling AUC of the true click model on the held-out clicks",
    "segments.ari_vs_taste_groups": "needs the users' hidden taste groups",
    "finetune_curve.oracle_ctr": "as oracle_ctr, for the generator's fine-tuning snapshots",
}
UPLIFT_METRICS = ("oracle_ctr", "preference", "relevance", "item_recall_1", "aesthetic", "aesthetic_heldout")


@dataclass
class Judges:
    """What scores covers: the saved reward fns (segment centroids given to preference), the content
    index items are retrieved from, and the oracle."""

    aesthetic: RewardFn
    relevance: RewardFn
    preference: RewardFn
    content: ContentIndex | None = None
    oracle: Oracle | None = None


def oracle_users(oracle: Oracle, segments: EvalSegments) -> dict[int, np.ndarray]:
    """Oracle user rows of each segment's users."""
    return {int(s): oracle.user_index(segments.user_ids[int(s)]) for s in segments.segment_ids}


def segment_ctr(oracle: Oracle, images: np.ndarray, user_rows: np.ndarray) -> np.ndarray:
    """Mean oracle click probability of the users ``user_rows`` on each image ``[B]`` -> ``[B]``."""
    return segment_ctr_matrix(
        oracle, user_rows, oracle.standardized_attributes(images), oracle.category_scores(images)
    )


def segment_ctr_matrix(
    oracle: Oracle, user_rows: np.ndarray, attributes: np.ndarray, scores: np.ndarray
) -> np.ndarray:
    """Mean click probability of users ``user_rows`` on each of R images, from their oracle features.

    Args:
        oracle: the world's oracle.
        user_rows: ``[U]`` oracle rows of the segment's users.
        attributes: ``[R, A]`` standardized attributes of the images.
        scores: ``[R, C]`` category scores of the images.

    Returns:
        ``[R]``.
    """
    logit = (
        oracle.base_click_logit
        + oracle.affinity[user_rows] @ scores.T
        + oracle.taste_strength * oracle.taste[user_rows] @ attributes.T
    )
    noise = oracle.click_noise
    floor = 1.0 / (1.0 + np.exp(-oracle.base_click_logit))
    return ((1.0 - noise) / (1.0 + np.exp(-logit)) + noise * floor).mean(axis=0)


def measure_covers(
    covers: np.ndarray, items: EvalItems, segments: EvalSegments, judges: Judges
) -> dict[str, np.ndarray | None]:
    """Per-cover measurements (module docstring) of item-major covers ``[I * S, H, W, 3]`` -> ``[I * S]`` each."""
    n_segments = len(segments)
    item_of = np.repeat(np.arange(len(items)), n_segments)
    segment_of = np.tile(segments.segment_ids, len(items))
    titles = [items.titles[i] for i in item_of]
    metadata = [
        {"segment_id": int(s), "category": items.categories[i]}
        for i, s in zip(item_of, segment_of, strict=True)
    ]
    out: dict[str, np.ndarray | None] = {
        "aesthetic": np.asarray(judges.aesthetic(covers, titles, metadata)[1]["raw"], np.float64),
        "aesthetic_heldout": composition_score(covers).astype(np.float64),
        "relevance": np.asarray(judges.relevance(covers, titles, metadata)[1]["raw"], np.float64),
        "preference": np.asarray(
            judges.preference(covers, titles, metadata)[1]["click_probability"], np.float64
        ),
        "item_recall_1": None,
        "item_recall_10": None,
        "category_top1": None,
        "oracle_ctr": None,
    }
    if judges.content is not None:
        ranks = judges.content.ranks(covers, [items.item_ids[i] for i in item_of], items.references[item_of])
        out["item_recall_1"], out["item_recall_10"] = recall_at(ranks, 1), recall_at(ranks, 10)
    oracle = judges.oracle
    if oracle is not None:
        labels = np.array([oracle.categories.index(items.categories[i]) for i in item_of])
        out["category_top1"] = (oracle.category_scores(covers).argmax(axis=1) == labels).astype(np.float64)
        ctr = np.zeros(len(covers))
        for segment, rows in oracle_users(oracle, segments).items():
            mask = segment_of == segment
            ctr[mask] = segment_ctr(oracle, covers[mask], rows)
        out["oracle_ctr"] = ctr
    return out


def diversity(covers: np.ndarray, n_items: int) -> np.ndarray:
    """Per item, mean absolute pixel difference in [0, 1] between its segments' covers: ``[I]``."""
    grid = covers.reshape(n_items, -1, *covers.shape[1:]).astype(np.float32) / 255.0
    n_segments = grid.shape[1]
    pairs = [(a, b) for a in range(n_segments) for b in range(a + 1, n_segments)]
    if not pairs:
        return np.zeros(n_items)
    return np.mean([np.abs(grid[:, a] - grid[:, b]).mean(axis=(1, 2, 3)) for a, b in pairs], axis=0)


def per_item_measures(
    measures: Mapping[str, np.ndarray | None],
    covers: np.ndarray,
    n_items: int,
    segment_sizes: Sequence[float] | np.ndarray,
) -> dict[str, np.ndarray | None]:
    """Per-item values ``[I]`` of every headline metric (None where the measure is None)."""
    out: dict[str, np.ndarray | None] = {}
    for name in HEADLINE:
        if name == "diversity":
            out[name] = diversity(covers, n_items)
            continue
        values = measures[name]
        weights = segment_sizes if name == "oracle_ctr" else None
        out[name] = None if values is None else per_item_means(values, n_items, weights)
    return out


def variant_metrics(
    per_item: Mapping[str, np.ndarray | None],
    covers: VariantCovers,
    indices: np.ndarray,
    per_segment: Mapping[str, Mapping[int, float] | None] | None = None,
) -> dict[str, Any]:
    """The metrics.json entry ``M`` of one variant: each headline metric, its ``<metric>_ci``, cost, counts.

    Args:
        per_item: :func:`per_item_measures`.
        covers: the variant's covers (cost and counts).
        indices: bootstrap resamples ``[B, I]`` shared by every variant (paired intervals).
        per_segment: :func:`by_segment` (oracle CTR of each segment's users, preference), for the report.
    """
    out: dict[str, Any] = {}
    for name in HEADLINE:
        values = per_item[name]
        if values is None:
            out[name], out[f"{name}_ci"] = None, None
            continue
        mean, interval = mean_ci(values, indices)
        out[name], out[f"{name}_ci"] = rounded(mean), [rounded(v) for v in interval]
    for name in ("oracle_ctr", "preference"):
        by_segment = (per_segment or {}).get(name)
        out[f"{name}_by_segment"] = (
            {str(s): rounded(v) for s, v in by_segment.items()} if by_segment else None
        )
    out["seconds_per_cover"] = rounded(covers.seconds_per_cover, 6)
    out["n_covers"] = int(covers.n_covers)
    out["generator_version"] = covers.version
    out["source"] = covers.source
    out["fallback_rate"] = (
        None if covers.fallbacks is None else rounded(covers.fallbacks / max(len(covers.images), 1))
    )
    out["reference_rate"] = (
        None if covers.references is None else rounded(covers.references / max(len(covers.images), 1))
    )
    return out


def by_segment(
    measures: Mapping[str, np.ndarray | None], segments: EvalSegments, n_items: int
) -> dict[str, dict[int, float] | None]:
    """Mean oracle CTR and preference of each segment's covers: ``{metric: {segment: value}}`` (None without the measure)."""
    out: dict[str, dict[int, float] | None] = {}
    for name in ("oracle_ctr", "preference"):
        values = measures[name]
        if values is None:
            out[name] = None
            continue
        grid = np.asarray(values).reshape(n_items, len(segments))
        out[name] = {int(s): float(grid[:, j].mean()) for j, s in enumerate(segments.segment_ids)}
    return out


def uplift(
    per_item: Mapping[str, np.ndarray | None], baseline: Mapping[str, np.ndarray | None], indices: np.ndarray
) -> dict[str, Any]:
    """Paired relative change of each :data:`UPLIFT_METRICS` over a baseline variant, with ``<metric>_ci``."""
    out: dict[str, Any] = {}
    for name in UPLIFT_METRICS:
        new, old = per_item.get(name), baseline.get(name)
        if new is None or old is None:
            out[name], out[f"{name}_ci"] = None, None
            continue
        change, interval = relative_change_ci(new, old, indices)
        out[name] = rounded(change)
        out[f"{name}_ci"] = None if interval is None else [rounded(v) for v in interval]
    return out
