"""Counting a day's (item, segment) pairs in rows that arrive batch by batch, without keeping the rows.

Generate (before it commits the staged manifest) and publish (before it makes a day visible) both
ask the same question of a manifest too large to hold: does every expected pair appear exactly once,
and does any row name a pair outside the day? :class:`PairCounts` answers it with one counter per
expected pair (two bytes each), so memory follows the grid of items x segments, not the rows.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class PairCounts:
    """How often each expected (item, segment) appeared so far.

    Args:
        item_ids: the day's items.
        segment_ids: the day's segments.
    """

    def __init__(self, item_ids: Iterable[str], segment_ids: Iterable[int]) -> None:
        self.items = pa.array(list(dict.fromkeys(item_ids)), pa.string())
        self.segments = np.array(sorted({int(s) for s in segment_ids}), np.int64)
        self.counts = np.zeros((len(self.items), len(self.segments)), np.uint16)
        self.rows = 0
        self.outside = 0  # rows whose item or segment is not expected

    def add(
        self, item_ids: pa.ChunkedArray | pa.Array, segment_ids: pa.ChunkedArray | pa.Array
    ) -> tuple[np.ndarray, np.ndarray]:
        """Count one batch of non-null keys; returns (item expected, pair expected) per row."""
        item = pc.index_in(item_ids, value_set=self.items).to_numpy(zero_copy_only=False)
        segment_id = np.asarray(segment_ids.to_numpy(zero_copy_only=False), np.int64)
        segment = np.searchsorted(self.segments, segment_id).clip(0, max(len(self.segments) - 1, 0))
        known_item = ~np.isnan(item.astype(np.float64))
        known = (
            known_item & (self.segments[segment] == segment_id) if len(self.segments) else known_item & False
        )
        np.add.at(self.counts, (item[known].astype(np.int64), segment[known]), 1)
        self.rows += len(segment_id)
        self.outside += int((~known).sum())
        return known_item, known

    @property
    def complete(self) -> bool:
        """Every expected pair exactly once, and nothing else."""
        return self.outside == 0 and bool((self.counts == 1).all())

    def missing(self) -> list[tuple[str, int]]:
        """Expected pairs not seen, sorted."""
        return sorted(self._pair(i, s) for i, s in np.argwhere(self.counts == 0))

    def repeated(self) -> list[tuple[str, int, int]]:
        """(item, segment, times) of pairs seen more than once, sorted."""
        return sorted((*self._pair(i, s), int(self.counts[i, s])) for i, s in np.argwhere(self.counts > 1))

    def _pair(self, item: int, segment: int) -> tuple[str, int]:
        return self.items[int(item)].as_py(), int(self.segments[int(segment)])
