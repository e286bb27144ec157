"""The incremental policy: what a night draws, in what order, within its budget; the rest is carried over."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from icg_core.serving.refresh import GENERATE, REUSE, centroid_drift, plan_refresh

ITEMS = [f"i{n}" for n in range(8)]
SEGMENTS = [0, 1]


def pairs(items: list[str] = ITEMS, content: dict[str, str] | None = None) -> pa.Table:
    rows = [(i, s, (content or {}).get(i, f"h-{i}")) for i in items for s in SEGMENTS]
    return pa.table({
        "item_id": [r[0] for r in rows], "segment_id": pa.array([r[1] for r in rows], pa.int32()),
        "content_hash": [r[2] for r in rows],
    })  # fmt: skip


def yesterday(generator: str = "g1", items: list[str] = ITEMS) -> pa.Table:
    return pairs(items).append_column("generator_version", pa.array([generator] * len(items) * len(SEGMENTS)))


def decide(requests: pa.Table, previous: pa.Table | None, **overrides):
    settings = {"generator_version": "g1", "sampling_unchanged": True, "drift": {0: 0.0, 1: 0.0},
                "tolerance": 0.02, "traffic": {}, "budget": None} | overrides  # fmt: skip
    return plan_refresh(requests, previous, **settings)


def drawn(plan) -> set[tuple[str, int]]:
    rows = plan.actions.to_pylist()
    return {(r["item_id"], r["segment_id"]) for r in rows if r["action"] == GENERATE}


def test_a_night_with_nothing_changed_draws_nothing() -> None:
    plan = decide(pairs(), yesterday())
    assert drawn(plan) == set() and plan.counts()["fresh"] == 16
    assert set(plan.actions.column("action").to_pylist()) == {REUSE}


def test_the_first_night_draws_everything_and_new_items_always() -> None:
    assert len(drawn(decide(pairs(), None))) == 16
    plan = decide(pairs(), yesterday(items=ITEMS[:6]), budget=1)  # two new items: drawn past the budget
    assert drawn(plan) == {(i, s) for i in ("i6", "i7") for s in SEGMENTS}
    assert plan.counts()["new"] == 4


def test_only_changed_items_are_drawn() -> None:
    plan = decide(pairs(content={"i3": "another title"}), yesterday())
    assert drawn(plan) == {("i3", 0), ("i3", 1)} and plan.counts()["changed"] == 2


def test_a_segment_that_moved_past_the_tolerance_is_redrawn_and_one_that_barely_moved_is_kept() -> None:
    plan = decide(pairs(), yesterday(), drift={0: 0.01, 1: 0.3})
    assert drawn(plan) == {(i, 1) for i in ITEMS}
    today = {0: np.array([1.0, 0.0]), 1: np.array([0.0, 1.0]), 2: np.array([1.0, 1.0])}
    drift = centroid_drift(today, {0: np.array([2.0, 0.0]), 1: np.array([1.0, 0.0])})
    assert drift[0] == 0.0 and drift[1] == 1.0 and drift[2] == 2.0  # 2 is new: always redrawn


def test_a_promotion_under_a_budget_draws_the_busiest_first_then_carries_the_rest() -> None:
    traffic = {item: 100 - n for n, item in enumerate(ITEMS)}  # i0 busiest
    plan = decide(
        pairs(content={"i7": "changed"}), yesterday(), generator_version="g2", traffic=traffic, budget=5
    )
    # The changed item first (both its segments), then the stale covers of the busiest items.
    assert drawn(plan) == {("i7", 0), ("i7", 1), ("i0", 0), ("i0", 1), ("i1", 0)}
    counts = plan.counts()
    assert (counts["changed"], counts["stale"], counts["generate"], counts["carried"]) == (2, 14, 5, 11)


def test_other_sampling_settings_make_every_cover_stale() -> None:
    assert len(drawn(decide(pairs(), yesterday(), sampling_unchanged=False))) == 16
