"""The fine-tuning curve: the learned reward next to the oracle across a generator's stage-2 snapshots.

Stage 2 keeps the refiner and adapter at every checkpoint step (``<generator>-stage2-snapshots``).
Evaluated after the fact on the first held-out items, each snapshot's covers (plain sampling: what
fine-tuning alone made) get the preference model's score for their segment and, in the embedded
world, the oracle CTR of the segment's users. The preference score rising while the oracle CTR
stalls or falls is over-optimization of the learned reward; step 0 is the base generator.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

import numpy as np

from icg_core import layout
from icg_core.evaluation.measures import Judges, measure_covers, per_item_measures
from icg_core.evaluation.stats import rounded
from icg_core.evaluation.variants import EvalItems, EvalSegments, generate_covers
from icg_core.models.bundle import ICGBundle
from icg_core.models.checkpoint import load_module_checkpoint
from icg_core.serving.policy import Sampling
from icg_core.storage import ObjectStore
from icg_core.training.stage2 import SNAPSHOT_SUFFIX

log = logging.getLogger(__name__)


def snapshot_steps(store: ObjectStore, generator_name: str, version: str) -> list[tuple[int, str]]:
    """(step, snapshot version) of every complete snapshot of generator ``version``, by step."""
    name = generator_name + SNAPSHOT_SUFFIX
    pattern = re.compile(rf"{re.escape(version)}-step(\d+)")
    found = (pattern.fullmatch(v) for v in layout.model_versions_stored(store, name))
    return sorted((int(m.group(1)), m.group(0)) for m in found if m)


def _point(
    step: int, covers: np.ndarray, items: EvalItems, segments: EvalSegments, judges: Judges
) -> dict[str, Any]:
    per_item = per_item_measures(
        measure_covers(covers, items, segments, judges), covers, len(items), segments.sizes
    )
    mean = {k: None if v is None else rounded(float(np.mean(v))) for k, v in per_item.items()}
    return {"step": step, "preference": mean["preference"], "oracle_ctr": mean["oracle_ctr"]}


def finetune_curve(
    store: ObjectStore,
    generator_name: str,
    bundle: ICGBundle,
    items: EvalItems,
    segments: EvalSegments,
    judges: Judges,
    seeds: list[int],
    sampling: Sampling,
    base: np.ndarray,
    *,
    batch_size: int,
) -> list[dict[str, Any]]:
    """``[{step, preference, oracle_ctr}]`` for step 0 (``base`` covers) and every snapshot of ``bundle``.

    Args:
        store: the object store with the snapshots.
        generator_name: the generator's checkpoint name.
        bundle: the evaluated generator (its refiner and adapter are restored afterwards).
        items, segments, judges: what is covered and who scores it (the first items of the evaluation).
        seeds: item-major seeds of ``items`` x ``segments``.
        sampling: plain sampling settings (no guidance).
        base: the base generator's covers of the same pairs, item-major.
        batch_size: covers sampled at once.
    """
    steps = snapshot_steps(store, generator_name, bundle.version)
    if not steps:
        return []
    saved = copy.deepcopy(bundle.refiner.state_dict()), copy.deepcopy(bundle.adapter.state_dict())
    points = [_point(0, base, items, segments, judges)]
    try:
        for step, version in steps:
            states, _ = load_module_checkpoint(store, generator_name + SNAPSHOT_SUFFIX, version)
            bundle.refiner.load_state_dict(states["refiner"])
            bundle.adapter.load_state_dict(states["adapter"])
            covers = generate_covers(
                bundle, items, segments, seeds, sampling, personalized=True, batch_size=batch_size
            )
            points.append(_point(step, covers.images, items, segments, judges))
    finally:
        bundle.refiner.load_state_dict(saved[0])
        bundle.adapter.load_state_dict(saved[1])
    log.info("stage=evaluate fine-tuning curve of %s: %s", bundle.version, points)
    return points
