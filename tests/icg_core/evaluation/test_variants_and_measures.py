"""Best-variant selection, per-cover measures and variant metrics on tiny synthetic covers."""

from __future__ import annotations

import numpy as np
import torch

from icg_core.evaluation.measures import (
    Judges,
    diversity,
    measure_covers,
    per_item_measures,
    uplift,
    variant_metrics,
)
from icg_core.evaluation.stats import resample_indices
from icg_core.evaluation.variants import (
    EvalItems,
    EvalSegments,
    VariantCovers,
    reference_covers,
    select_covers,
)


def flat(value: int, size: int = 8) -> np.ndarray:
    return np.full((size, size, 3), value, np.uint8)


def brightness_preference(images, prompts, metadata):
    """Segment 0 clicks bright covers, segment 1 dark ones (a planted preference)."""
    level = np.asarray(images, np.float64).mean(axis=(1, 2, 3)) / 255.0
    sign = np.array([1.0 if m["segment_id"] == 0 else -1.0 for m in metadata])
    probability = 0.5 + 0.4 * sign * (level - 0.5)
    return probability, {"click_probability": probability, "raw": probability}


def mean_level(images, prompts, metadata):
    raw = np.asarray(images, np.float64).mean(axis=(1, 2, 3)) / 255.0
    return raw, {"raw": raw}


def tiny_items() -> EvalItems:
    logged = [np.stack([flat(40), flat(200), flat(120)]), np.stack([flat(90)])]
    return EvalItems(
        item_ids=["a", "b"], titles=["title a", "title b"], categories=["x", "y"],
        references=np.stack([flat(100), flat(90)]), logged=logged, features=torch.zeros(2, 1, 1),
    )  # fmt: skip


def tiny_segments() -> EvalSegments:
    return EvalSegments(
        np.array([0, 1]), np.zeros((2, 3), np.float32), np.array([3, 1]), {0: ["u1"], 1: ["u2"]}
    )


def test_selection_picks_the_argmax_of_the_preference_model_per_segment() -> None:
    items, segments = tiny_items(), tiny_segments()
    chosen = select_covers(items, segments, brightness_preference)
    levels = chosen.images.reshape(4, -1)[:, 0].tolist()
    # item a: bright (200) for segment 0, dark (40) for segment 1; item b has a single logged cover.
    assert levels == [200, 40, 90, 90]
    assert chosen.n_covers == 3 and chosen.source == "logged"


def test_measures_without_an_oracle_are_null_and_metrics_carry_intervals() -> None:
    items, segments = tiny_items(), tiny_segments()
    judges = Judges(aesthetic=mean_level, relevance=mean_level, preference=brightness_preference, oracle=None)
    covers = select_covers(items, segments, brightness_preference)
    measures = measure_covers(covers.images, items, segments, judges)
    assert measures["oracle_ctr"] is None and measures["category_top1"] is None
    assert measures["preference"].shape == (4,)
    per_item = per_item_measures(measures, covers.images, len(items), segments.sizes)
    metrics = variant_metrics(per_item, covers, resample_indices(2, 50, seed=0))
    assert metrics["oracle_ctr"] is None and metrics["oracle_ctr_ci"] is None
    assert metrics["category_top1"] is None and metrics["oracle_ctr_by_segment"] is None
    low, high = metrics["preference_ci"]
    assert low <= metrics["preference"] <= high
    assert metrics["n_covers"] == 3


def test_reference_has_no_diversity_and_uplift_is_relative_to_the_baseline() -> None:
    items, segments = tiny_items(), tiny_segments()
    reference = reference_covers(items, len(segments))
    assert reference.images.shape == (4, 8, 8, 3) and reference.n_covers == 2
    assert diversity(reference.images, 2).tolist() == [0.0, 0.0]
    two_tone = VariantCovers(np.stack([flat(0), flat(255), flat(10), flat(10)]), 1.0, 4, 4, "v", "generated")
    assert diversity(two_tone.images, 2).tolist() == [1.0, 0.0]
    assert two_tone.seconds_per_cover == 0.25
    change = uplift(
        {"preference": np.array([0.6, 0.6])}, {"preference": np.array([0.5, 0.5])}, resample_indices(2, 20, 0)
    )
    assert abs(change["preference"] - 0.2) < 1e-9 and change["oracle_ctr"] is None
