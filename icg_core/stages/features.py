"""The features stage: the generator's meta-token encoder over the day's catalog, into the item-feature cache.

Three steps, so that where the work runs (one process, or a Ray actor pool: :mod:`pipelines.features`)
is not this module's business:

1. :func:`plan_features` checks the inputs and picks the catalog rows and the generator version;
2. :class:`FeatureWorker` (one per process or actor) loads the encoder once and turns batches of
   catalog rows into ``item_features`` rows; items whose (content hash, encoder version) is already
   cached are not encoded again (:func:`icg_core.serving.features.compute_item_features`);
3. :func:`commit_features` commits the day's ``item_features`` partition and summarizes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from icg_core import layout
from icg_core.config import ICGConfig, ModelsConfig
from icg_core.stages.generate import read_catalog_items, resolve_generator
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)

# Batch-level counts a worker adds to its rows (on the batch's first row, 0 elsewhere, so sums total them).
COUNT_COLUMNS = ("encoded", "forward_calls")


@dataclass(frozen=True)
class FeaturesPlan:
    ds: str
    catalog: pa.Table  # item_id, title, reference_image_uri; sorted by item_id
    generator_version: str
    encoder_version: str  # the generator's encoder: the feature cache's key


def plan_features(
    store: ObjectStore, cfg: ICGConfig, ds: str, *, items_limit: int | None = None, version: str | None = None
) -> FeaturesPlan:
    """Check the inputs of ``ds`` before any worker starts.

    Raises:
        GenerateInputError / StorageError: no catalog, an unknown generator, an unwritable root.
    """
    store.check_writable()
    catalog = read_catalog_items(store, ds, items_limit).select(["item_id", "title", "reference_image_uri"])
    generator_version, config = resolve_generator(
        store, cfg.models, version or cfg.generate.generator_version
    )
    return FeaturesPlan(ds, catalog, generator_version, config["encoder_version"])


def cached_rows(store: ObjectStore, plan: FeaturesPlan) -> pa.Table | None:
    """What the workers would return for the plan, when every item is cached (else None: start them)."""
    from icg_core.serving.features import cached_item_features

    table = cached_item_features(store, plan.catalog, plan.encoder_version)
    if table is None:
        return None
    zeros = pa.array([0] * table.num_rows, pa.int64())
    return table.append_column("encoded", zeros).append_column("forward_calls", zeros)


class FeatureWorker:
    """Loads the generator's encoder once; turns catalog batches into ``item_features`` rows (plus counts)."""

    def __init__(self, store: ObjectStore, models: ModelsConfig, version: str, batch_size: int) -> None:
        from icg_core.models.bundle import load_bundle

        self.store, self.batch_size = store, batch_size
        self.encoder = load_bundle(store, models, version).encoder

    def __call__(self, batch: pa.Table) -> pa.Table:
        from icg_core.serving.features import compute_item_features

        result = compute_item_features(self.encoder, batch, self.store, batch_size=self.batch_size)
        first = [1] + [0] * (result.table.num_rows - 1)
        return result.table.append_column(
            "encoded", pa.array([result.computed * f for f in first], pa.int64())
        ).append_column("forward_calls", pa.array([result.forward_calls * f for f in first], pa.int64()))


def commit_features(
    store: ObjectStore, plan: FeaturesPlan, rows: pa.Table, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Commit the workers' rows as the ``item_features`` partition of the plan's day.

    Args:
        rows: what the workers returned: ``item_features`` columns plus :data:`COUNT_COLUMNS`; other
            columns (where the work ran) are for ``extra`` and are dropped.
        extra: placement facts for the summary (actors, nodes, Ray start-up).

    Returns:
        The summary: items, encoded (VLM-encoded now), reused (from the cache), forward calls.
    """
    table = rows.sort_by("item_id")
    layout.ITEM_FEATURES.write(store, table, plan.ds)
    encoded = int(pc.sum(table.column("encoded")).as_py() or 0)
    summary = {
        "ds": plan.ds,
        "generator_version": plan.generator_version,
        "encoder_version": table.column("encoder_version")[0].as_py() if table.num_rows else None,
        "items": table.num_rows,
        "encoded": encoded,
        "reused": table.num_rows - encoded,
        "forward_calls": int(pc.sum(table.column("forward_calls")).as_py() or 0),
        **(extra or {}),
        "features_uri": layout.ITEM_FEATURES.uri(store, plan.ds),
    }
    log.info("stage=features ds=%s %s", plan.ds, summary)
    return summary
