"""``oracle_best``: the evaluation-only ceiling, the best cover the embedded world itself can draw.

For each (item, segment): the item's reference cover redrawn in ``renders`` looks (the world's own
attribute jitter, ``scale`` times the range of the logged variants, plus the reference itself), and
the look whose oracle CTR for the segment's users is highest. It reads the oracle, so it exists only
here (the oracle rule: docs/architecture.md, "The embedded world and its oracle"); it tells how much
headroom generation has above selection, not what a deployable system can reach.
"""

from __future__ import annotations

import time

import numpy as np

from icg_core.evaluation.measures import segment_ctr_matrix
from icg_core.evaluation.variants import EvalItems, EvalSegments, VariantCovers
from icg_core.world import drawing
from icg_core.world.oracle import Oracle


def oracle_best_covers(
    items: EvalItems,
    segments: EvalSegments,
    oracle: Oracle,
    *,
    renders: int = 64,
    scale: float = 2.0,
    seed: int = 0,
) -> VariantCovers:
    """The ceiling variant's covers, item-major ``[I * S, H, W, 3]``.

    Args:
        items, segments: the evaluated items (their reference covers are redrawn) and segments.
        oracle: the world's oracle (judge and segment users).
        renders: looks drawn per item.
        scale: width of the looks' jitter, in multiples of the logged variants' range.
        seed: seeds the looks.
    """
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    rows = {int(s): oracle.user_index(segments.user_ids[int(s)]) for s in segments.segment_ids}
    chosen = []
    for reference in items.references:
        looks = drawing.apply_jitter(
            np.repeat(reference[None], renders, axis=0), drawing.sample_jitter(rng, renders, scale=scale)
        )
        looks = np.concatenate([reference[None], looks])
        attributes, scores = oracle.standardized_attributes(looks), oracle.category_scores(looks)
        for segment in segments.segment_ids.tolist():
            chosen.append(looks[segment_ctr_matrix(oracle, rows[segment], attributes, scores).argmax()])
    images = np.stack(chosen)
    return VariantCovers(images, time.perf_counter() - started, len(images), len(images), None, "oracle")
