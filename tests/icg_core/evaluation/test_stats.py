"""Bootstrap intervals over items."""

from __future__ import annotations

import numpy as np
import pytest

from icg_core.evaluation.stats import mean_ci, per_item_means, relative_change_ci, resample_indices, rounded


def test_interval_contains_the_mean_and_narrows_with_less_noise() -> None:
    rng = np.random.default_rng(0)
    indices = resample_indices(40, 500, seed=1)
    noisy, quiet = rng.normal(1.0, 1.0, 40), rng.normal(1.0, 0.1, 40)
    mean, (low, high) = mean_ci(noisy, indices)
    assert low < mean < high and mean == pytest.approx(noisy.mean())
    _, (q_low, q_high) = mean_ci(quiet, indices)
    assert q_high - q_low < (high - low) / 3


def test_resamples_are_seeded_and_shaped() -> None:
    a, b = resample_indices(7, 20, seed=3), resample_indices(7, 20, seed=3)
    assert a.shape == (20, 7) and (a == b).all() and a.min() >= 0 and a.max() < 7
    with pytest.raises(ValueError):
        resample_indices(0, 5, seed=0)


def test_paired_relative_change_is_tight_when_the_change_is_consistent() -> None:
    rng = np.random.default_rng(0)
    old = rng.uniform(0.2, 0.8, 50)  # items differ a lot ...
    new = old * 1.1  # ... but every item gains exactly 10%
    change, (low, high) = relative_change_ci(new, old, resample_indices(50, 300, seed=0))
    assert change == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)
    assert relative_change_ci(new, np.zeros(50), resample_indices(50, 10, seed=0)) == (None, None)


def test_per_item_means_weight_segments() -> None:
    values = np.array([1.0, 3.0, 2.0, 2.0])  # item-major: item 0 -> (1, 3), item 1 -> (2, 2)
    assert per_item_means(values, 2).tolist() == [2.0, 2.0]
    assert per_item_means(values, 2, weights=[3, 1]).tolist() == [1.5, 2.0]


def test_rounded_turns_nan_into_null() -> None:
    assert rounded(float("nan")) is None and rounded(None) is None and rounded(0.123456789) == 0.12346
