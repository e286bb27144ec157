"""Which covers a night draws again: the incremental policy behind a nightly that costs what changed.

docs/architecture.md, "Generation". Every (item, segment) of the day needs a cover in the published
manifest. Yesterday's cover of the pair is kept (copied forward, never redrawn) unless one of these
made it out of date, named in this order of priority:

1. ``new``: the pair had no cover yesterday (a new item, or a new segment);
2. ``changed``: the item's content changed (title, reference image or encoder: its content hash);
3. ``stale``: the generator was promoted, the sampling settings changed, or the pair's segment
   moved: the cosine distance between its centroid yesterday and today exceeds ``tolerance``.
   Segment ids are matched from night to night by the users stage, so a segment that barely moved
   keeps its covers.

A night draws at most ``budget`` covers (``generate.max_covers_per_night``). New pairs are always
drawn, even past the budget, since the manifest must be complete. Then changed items, then stale
covers, each by the item's traffic (impressions in the day's window, most first). Whatever is out of
date but over the budget is *carried over*: yesterday's cover stays in the manifest, and its row
still says the day (``made_ds``) and the generator it was made with. A promotion under a 25% budget
therefore reaches every pair in four nights, the busiest items first.

Reward-model versions are not a reason to redraw: rewards are retrained every night, and a cover
steered by yesterday's reward models is not out of date.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

GENERATE, REUSE = "generate", "reuse"  # what the writer does with a row
NEW, CHANGED, STALE, FRESH = "new", "changed", "stale", "fresh"  # why (FRESH: nothing changed)


@dataclass(frozen=True)
class RefreshPlan:
    """The night's decision for every (item, segment).

    Attributes:
        actions: item_id, segment_id, ``action`` (generate / reuse) and ``reason`` (new / changed /
            stale / fresh) per pair.
        budget: the covers-per-night budget it was made under (None: no budget).
    """

    actions: pa.Table
    budget: int | None

    def counts(self) -> dict[str, int]:
        """Pairs per reason, drawn (``generate``) and carried over (out of date but kept: ``carried``)."""
        reasons = _tally(self.actions.column("reason"))
        out = {reason: reasons.get(reason, 0) for reason in (NEW, CHANGED, STALE, FRESH)}
        out[GENERATE] = _tally(self.actions.column("action")).get(GENERATE, 0)
        out["carried"] = sum(out[r] for r in (NEW, CHANGED, STALE)) - out[GENERATE]
        return out


def _tally(column: pa.ChunkedArray) -> dict[str, int]:
    return {c["values"]: c["counts"] for c in pc.value_counts(column).to_pylist()}


def centroid_drift(today: Mapping[int, np.ndarray], yesterday: Mapping[int, np.ndarray]) -> dict[int, float]:
    """Cosine distance of each segment's centroid from yesterday's (2.0, the maximum, for a new segment)."""
    drift = {}
    for segment, centroid in today.items():
        before = yesterday.get(segment)
        if before is None or before.shape != centroid.shape:
            drift[segment] = 2.0
            continue
        norms = float(np.linalg.norm(centroid) * np.linalg.norm(before))
        drift[segment] = 1.0 - float(np.dot(centroid, before)) / norms if norms > 0 else 2.0
    return drift


def plan_refresh(
    requests: pa.Table,
    previous: pa.Table | None,
    *,
    generator_version: str,
    sampling_unchanged: bool,
    drift: Mapping[int, float],
    tolerance: float,
    traffic: Mapping[str, int],
    budget: int | None,
) -> RefreshPlan:
    """Decide, for every requested (item, segment), whether tonight draws its cover (module docstring).

    Args:
        requests: item_id, segment_id, content_hash: every pair of the day.
        previous: yesterday's manifest (item_id, segment_id, content_hash, generator_version), or None
            (no earlier day: everything is new).
        generator_version: tonight's (the champion's) version.
        sampling_unchanged: the sampling settings equal those yesterday's covers were drawn with.
        drift: segment id -> :func:`centroid_drift`.
        tolerance: the largest drift that keeps a segment's covers.
        traffic: item id -> impressions in the day's window (the priority among out-of-date covers).
        budget: covers to draw at most (new pairs are drawn regardless); None: no budget.
    """
    pairs = requests.select(["item_id", "segment_id", "content_hash"]).cast(
        pa.schema([("item_id", pa.string()), ("segment_id", pa.int32()), ("content_hash", pa.string())])
    )
    n = pairs.num_rows
    pairs = pairs.append_column("_row", pa.array(np.arange(n), pa.int64()))
    if previous is not None and previous.num_rows:
        before = pa.table(
            {
                "item_id": previous.column("item_id").cast(pa.string()),
                "segment_id": previous.column("segment_id").cast(pa.int32()),
                "_content": previous.column("content_hash").cast(pa.string()),
                "_generator": previous.column("generator_version").cast(pa.string()),
            }
        )
        pairs = pairs.join(before, ["item_id", "segment_id"], join_type="left outer").sort_by("_row")
        old_content = pairs.column("_content")
        is_new = pc.is_null(old_content).to_numpy(zero_copy_only=False)
        changed = pc.fill_null(pc.not_equal(old_content, pairs.column("content_hash")), False)
        other_generator = pc.fill_null(pc.not_equal(pairs.column("_generator"), generator_version), False)
        is_changed = changed.to_numpy(zero_copy_only=False)
        moved = _segment_values(pairs.column("segment_id"), drift, default=2.0) > tolerance
        is_stale = other_generator.to_numpy(zero_copy_only=False) | moved | (not sampling_unchanged)
    else:
        is_new, is_changed, is_stale = np.ones(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    # Reason codes in priority order: 0 new, 1 changed, 2 stale, 3 fresh.
    codes = np.where(is_new, 0, np.where(is_changed, 1, np.where(is_stale, 2, 3))).astype(np.int8)
    impressions = _item_values(pairs.column("item_id"), traffic)
    drawn = _within_budget(codes, impressions, pairs.column("item_id"), budget)
    reasons = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array([NEW, CHANGED, STALE, FRESH]))
    actions = pa.DictionaryArray.from_arrays(pa.array(np.where(drawn, 0, 1).astype(np.int8)),
                                             pa.array([GENERATE, REUSE]))  # fmt: skip
    table = pa.table(
        {
            "item_id": pairs.column("item_id"),
            "segment_id": pairs.column("segment_id"),
            "action": actions.cast(pa.string()),
            "reason": reasons.cast(pa.string()),
        }
    )
    return RefreshPlan(table, budget)


def _segment_values(segments: pa.ChunkedArray, values: Mapping[int, float], default: float) -> np.ndarray:
    """``values[segment]`` per row (``default`` for a segment without one)."""
    ids = segments.to_numpy()
    unique, inverse = np.unique(ids, return_inverse=True)
    return np.array([values.get(int(s), default) for s in unique], np.float64)[inverse]


def _item_values(items: pa.ChunkedArray, values: Mapping[str, int]) -> np.ndarray:
    """``values[item]`` per row, 0 for an item without one."""
    if not values:
        return np.zeros(len(items), np.int64)
    keys = pa.array(list(values), pa.string())
    index = pc.index_in(items, value_set=keys).to_numpy(zero_copy_only=False)
    counts = np.append(np.asarray(list(values.values()), np.int64), 0)
    return counts[np.where(np.isnan(index.astype(float)), len(keys), index).astype(np.int64)]


def _within_budget(
    codes: np.ndarray, impressions: np.ndarray, items: pa.ChunkedArray, budget: int | None
) -> np.ndarray:
    """Rows to draw: every new pair, then changed, then stale ones by traffic, up to ``budget``."""
    drawn = codes == 0
    out_of_date = np.flatnonzero((codes == 1) | (codes == 2))
    room = len(out_of_date) if budget is None else max(budget - int(drawn.sum()), 0)
    if room and len(out_of_date):
        order = pa.table(
            {
                "rank": codes[out_of_date],
                "impressions": impressions[out_of_date],
                "item_id": items.take(pa.array(out_of_date)),
                "row": out_of_date,
            }
        ).sort_by([("rank", "ascending"), ("impressions", "descending"), ("item_id", "ascending")])
        drawn[order.column("row").to_numpy()[:room]] = True
    return drawn
