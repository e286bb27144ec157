"""The users stage: user embeddings from the validated window, segments, and their tables.

The models are :mod:`icg_core.models.users`; this module reads the day's impressions and the
previous day's segments, and writes ``user_embeddings``, ``user_segments`` and ``segment_centroids``
(area ``users``: derived data, not a validated copy of the input) plus the BPR model card.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from icg_core import layout
from icg_core.config import UsersConfig
from icg_core.models.checkpoint import save_module_checkpoint
from icg_core.models.users import (
    ATTRIBUTE_NAMES,
    MODEL_NAME,
    Alignment,
    Segments,
    UserEmbeddings,
    align_to_previous,
    assign_segments,
    cover_attributes,
    import_user_embeddings,
    keep_segments,
    load_user_embeddings,
    model_version,
    previous_segments,
    resegment_today,
    train_user_embeddings,
)
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class UsersSummary:
    """What :func:`run_users` learned and wrote."""

    ds: str
    model_version: str
    source: str  # "learned" or "imported"
    n_users: int
    embedding_dim: int
    n_impressions: int
    n_segments: int
    segment_sizes: dict[int, int]
    matched_to_ds: str | None  # previous day whose ids were kept
    matched_by: str
    alignment: dict[str, Any]  # the collaborative block's rotation onto the previous day (Alignment)
    bpr_losses: list[float]
    seconds: float


def _vectors(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """Rows of ``[N, D]`` as a fixed-size list<float32> column."""
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel(), pa.float32()), matrix.shape[1])


def run_users(store: ObjectStore, ds: str, cfg: UsersConfig) -> UsersSummary:
    """The users stage for ``ds``: embeddings from the validated window, segments, tables in area ``users``.

    Args:
        store: the object store with ``validated/impressions/ds=<ds>``.
        ds: the run's date.
        cfg: the users config.

    Returns:
        A :class:`UsersSummary`; reruns of the same ds with the same inputs write identical tables.
    """
    started = time.perf_counter()
    version = model_version(ds, cfg)
    impressions = layout.IMPRESSIONS.read(store, ds)
    if cfg.import_uri:
        embeddings = import_user_embeddings(store, cfg.import_uri)
    else:
        attributes = cover_attributes(store, impressions.column("cover_uri").to_pylist())
        embeddings = train_user_embeddings(impressions, attributes, cfg, version)
    prev_ds, previous = previous_segments(store, ds)
    alignment = Alignment(to_ds=None)
    if embeddings.source == "learned" and prev_ds is not None:
        embeddings, alignment = align_to_previous(
            embeddings, load_user_embeddings(store, prev_ds), cfg.collab_dim, prev_ds
        )
    if resegment_today(ds, cfg.resegment_every_days, previous, cfg.n_segments, embeddings.dim):
        segments = assign_segments(embeddings, cfg, previous)
    else:
        assert previous is not None  # resegment_today is True without one
        segments = keep_segments(embeddings, previous)

    _write_tables(store, ds, embeddings, segments)
    if embeddings.source == "learned":
        _save_model_card(store, ds, cfg, version, embeddings)
    sizes = {
        int(s): int(n) for s, n in zip(*np.unique(segments.segment_ids, return_counts=True), strict=True)
    }
    summary = UsersSummary(
        ds=ds,
        model_version=embeddings.model_version,
        source=embeddings.source,
        n_users=len(embeddings.user_ids),
        embedding_dim=embeddings.dim,
        n_impressions=impressions.num_rows,
        n_segments=len(segments.centroids),
        segment_sizes=sizes,
        matched_to_ds=prev_ds if segments.matched_by != "none" else None,
        matched_by=segments.matched_by,
        alignment=asdict(alignment),
        bpr_losses=embeddings.bpr_losses,
        seconds=time.perf_counter() - started,
    )
    log.info(
        "stage=users ds=%s done %s",
        ds,
        json.dumps({k: v for k, v in summary.__dict__.items() if k != "bpr_losses"}),
    )
    return summary


def _write_tables(store: ObjectStore, ds: str, embeddings: UserEmbeddings, segments: Segments) -> None:
    """``user_embeddings``, ``user_segments`` and ``segment_centroids`` of ``ds``."""
    user_column = pa.array(embeddings.user_ids.tolist(), pa.string())
    version_column = pa.array([embeddings.model_version] * len(embeddings.user_ids), pa.string())
    ids, centroids = segments.centroid_matrix()
    tables = {
        layout.USER_EMBEDDINGS: {
            "user_id": user_column,
            "embedding": _vectors(embeddings.embeddings),
            "model_version": version_column,
        },
        layout.USER_SEGMENTS: {
            "user_id": user_column,
            "segment_id": pa.array(segments.segment_ids, pa.int32()),
        },
        layout.SEGMENT_CENTROIDS: {"segment_id": pa.array(ids, pa.int32()), "centroid": _vectors(centroids)},
    }
    for table, columns in tables.items():
        table.write(store, pa.table(columns), ds)


def _save_model_card(
    store: ObjectStore, ds: str, cfg: UsersConfig, version: str, embeddings: UserEmbeddings
) -> None:
    """The learned BPR item factors and the card that says how the embeddings were made."""
    assert embeddings.attribute_mean is not None and embeddings.attribute_std is not None
    assert embeddings.item_ids is not None and embeddings.item_factors is not None  # learned embeddings
    card = cfg.model_dump() | {
        "ds": ds,
        "attribute_names": list(ATTRIBUTE_NAMES),
        "attribute_mean": embeddings.attribute_mean.tolist(),
        "attribute_std": embeddings.attribute_std.tolist(),
        "item_ids": embeddings.item_ids.tolist(),
        "bpr_losses": embeddings.bpr_losses,
    }
    factors = {"bpr": {"item_factors": torch.from_numpy(embeddings.item_factors)}}
    save_module_checkpoint(store, MODEL_NAME, version, factors, card)
