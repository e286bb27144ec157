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
        reasons = self.actions.column("reason").to_pylist()
        actions = self.actions.column("action").to_pylist()
        out = {reason: reasons.count(reason) for reason in (NEW, CHANGED, STALE, FRESH)}
        out[GENERATE] = actions.count(GENERATE)
        out["carried"] = sum(a == REUSE and r != FRESH for a, r in zip(actions, reasons, strict=True))
        return out


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
    before: dict[tuple[str, int], tuple[str, str]] = {}
    if previous is not None:
        for item, segment, content, generator in zip(
            *(
                previous.column(c).to_pylist()
                for c in ("item_id", "segment_id", "content_hash", "generator_version")
            ),
            strict=True,
        ):
            before[(item, int(segment))] = (content, generator)
    items = requests.column("item_id").to_pylist()
    segments = [int(s) for s in requests.column("segment_id").to_pylist()]
    contents = requests.column("content_hash").to_pylist()
    reasons = []
    for item, segment, content in zip(items, segments, contents, strict=True):
        old = before.get((item, segment))
        if old is None:
            reasons.append(NEW)
        elif old[0] != content:
            reasons.append(CHANGED)
        elif old[1] != generator_version or not sampling_unchanged or drift.get(segment, 2.0) > tolerance:
            reasons.append(STALE)
        else:
            reasons.append(FRESH)
    drawn = _within_budget(items, reasons, traffic, budget)
    actions = [GENERATE if i in drawn else REUSE for i in range(len(items))]
    table = pa.table(
        {
            "item_id": pa.array(items, pa.string()),
            "segment_id": pa.array(segments, pa.int32()),
            "action": pa.array(actions, pa.string()),
            "reason": pa.array(reasons, pa.string()),
        }
    )
    return RefreshPlan(table, budget)


def _within_budget(
    items: list[str], reasons: list[str], traffic: Mapping[str, int], budget: int | None
) -> set[int]:
    """Row indices to draw: every new pair, then changed, then stale ones by traffic, up to ``budget``."""
    drawn = {i for i, reason in enumerate(reasons) if reason == NEW}
    rank = {CHANGED: 0, STALE: 1}
    out_of_date = sorted(
        (i for i, reason in enumerate(reasons) if reason in rank),
        key=lambda i: (rank[reasons[i]], -traffic.get(items[i], 0), items[i]),
    )
    room = len(out_of_date) if budget is None else max(budget - len(drawn), 0)
    return drawn | set(out_of_date[:room])
