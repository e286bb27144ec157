"""Bootstrap intervals over items: every headline number comes with a 95% interval.

Covers are measured per (item, segment); items are the unit of resampling (segments of one item
share its content, so they are not independent draws). A variant's per-item value is the mean over
its segments (weighted by segment size where the metric is about users, e.g. CTR). Comparisons
between variants are *paired*: both variants are evaluated on the same items, and one set of
resampled item indices serves both, so the interval of a difference is not the sum of two widths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95


def resample_indices(n_items: int, samples: int, seed: int) -> np.ndarray:
    """Bootstrap resamples of item rows: int64 ``[samples, n_items]`` (with replacement, seeded)."""
    if n_items <= 0:
        raise ValueError("the bootstrap needs at least one item")
    return np.random.default_rng(seed).integers(0, n_items, size=(samples, n_items))


def _percentiles(values: np.ndarray) -> list[float]:
    tail = (1.0 - CONFIDENCE) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return [float(low), float(high)]


def mean_ci(per_item: np.ndarray, indices: np.ndarray) -> tuple[float, list[float]]:
    """(mean, 95% percentile interval of the mean) of per-item values ``[I]`` over resamples ``[B, I]``."""
    per_item = np.asarray(per_item, np.float64)
    return float(per_item.mean()), _percentiles(per_item[indices].mean(axis=1))


def relative_change_ci(
    new: np.ndarray, old: np.ndarray, indices: np.ndarray
) -> tuple[float, list[float]] | tuple[None, None]:
    """Paired relative change ``mean(new) / mean(old) - 1`` of per-item values ``[I]``, with its interval.

    Returns ``(None, None)`` when ``old``'s mean is zero (no relative change is defined).
    """
    new, old = np.asarray(new, np.float64), np.asarray(old, np.float64)
    if abs(old.mean()) < 1e-12:
        return None, None
    resampled_old = old[indices].mean(axis=1)
    ratio = new[indices].mean(axis=1) / np.where(np.abs(resampled_old) < 1e-12, np.nan, resampled_old)
    ratio = ratio[np.isfinite(ratio)]
    return float(new.mean() / old.mean() - 1.0), _percentiles(ratio - 1.0)


def per_item_means(
    values: np.ndarray, n_items: int, weights: Sequence[float] | np.ndarray | None = None
) -> np.ndarray:
    """Per-item means of item-major (item, segment) values ``[I * S]`` -> ``[I]``.

    Args:
        values: ``[I * S]`` measurements, item-major (all segments of item 0, then item 1, ...).
        n_items: I.
        weights: ``[S]`` segment weights (e.g. users per segment); None = equal.
    """
    grid = np.asarray(values, np.float64).reshape(n_items, -1)
    if weights is None:
        return grid.mean(axis=1)
    w = np.asarray(weights, np.float64)
    return grid @ (w / w.sum())


def rounded(value: float | None, digits: int = 5) -> float | None:
    """A JSON-friendly number (None stays None; NaN becomes None)."""
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), digits)
