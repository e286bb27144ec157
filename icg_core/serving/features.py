"""Per-item feature cache: the VLM runs once per item per encoder version, never per user or segment.

An item's meta-token features depend on its title, its reference image and the encoder (backbone,
prompt, meta-token weights) only, so they are keyed by
``content_hash(title, image_bytes, encoder_version)`` and stored as one safetensors object each::

    features/<encoder_version>/<content_hash>.safetensors   tensor "features" [N, d_mllm] float32

A run lists the version's objects once, encodes only the items whose key is missing (a new item,
a changed title or image, or a new encoder version) and returns the ``item_features`` rows
(item_id, content_hash, encoder_version, features_uri) for every item, optionally committed as the
``features/item_features/ds=<ds>/`` partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from icg_core import layout
from icg_core.data.images import decode_image
from icg_core.models.encoder import MetaTokenEncoder, content_hash
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)

_READ_THREADS = 8


@dataclass
class ItemFeatures:
    """Result of :func:`compute_item_features`.

    Attributes:
        table: ``item_features`` rows, one per input item, in input order.
        encoder_version: the encoder's version (part of every key).
        computed: items the VLM encoded in this call.
        reused: items found in the cache.
        forward_calls: encoder forward passes made (batches).
        seconds: wall time.
    """

    table: pa.Table
    encoder_version: str
    computed: int
    reused: int
    forward_calls: int
    seconds: float

    def summary(self) -> dict[str, object]:
        return {
            "encoder_version": self.encoder_version,
            "items": self.table.num_rows,
            "computed": self.computed,
            "reused": self.reused,
            "forward_calls": self.forward_calls,
            "seconds": round(self.seconds, 2),
        }


def compute_item_features(
    encoder: MetaTokenEncoder,
    items: pa.Table,
    store: ObjectStore,
    *,
    batch_size: int = 32,
    ds: str | None = None,
    image_bytes: Sequence[bytes] | None = None,
) -> ItemFeatures:
    """Features of every item, from the cache where present, else from one encoder pass per batch.

    Args:
        encoder: the (frozen, trained) meta-token encoder; its ``encoder_version`` keys the cache.
        items: a table with ``item_id``, ``title`` and ``reference_image_uri`` (the catalog snapshot).
        store: the object store holding reference images and the cache.
        batch_size: items per encoder forward pass.
        ds: when given, commit the rows as the ``item_features`` partition of ``ds`` (area ``features``).
        image_bytes: the encoded reference images, in row order, if the caller already read them.

    Returns:
        The rows and counts (see :class:`ItemFeatures`).
    """
    started = time.perf_counter()
    item_ids = items.column("item_id").to_pylist()
    titles = items.column("title").to_pylist()
    if image_bytes is None:
        image_bytes = _read_references(store, items)
    version = encoder.encoder_version
    hashes = [content_hash(t, b, version) for t, b in zip(titles, image_bytes, strict=True)]
    cached = set(store.list(layout.feature_cache(version)))
    # Each distinct missing key is encoded once (two items with identical content share one entry).
    first_missing: dict[str, int] = {}
    for row, item_hash in enumerate(hashes):
        if layout.feature(version, item_hash) not in cached:
            first_missing.setdefault(item_hash, row)
    missing = list(first_missing.values())
    forward_calls = 0
    with torch.no_grad():
        for start in range(0, len(missing), batch_size):
            rows = missing[start : start + batch_size]
            images = [decode_image(image_bytes[i]) for i in rows]
            features = encoder([titles[i] for i in rows], images).float().cpu()
            forward_calls += 1
            for row, value in zip(rows, features, strict=True):
                payload = save_safetensors(
                    {"features": value.contiguous()},
                    metadata={
                        "item_id": item_ids[row],
                        "content_hash": hashes[row],
                        "encoder_version": version,
                    },
                )
                store.put_bytes(layout.feature(version, hashes[row]), payload)
    table = _feature_rows(item_ids, hashes, version)
    if ds is not None:
        layout.ITEM_FEATURES.write(store, table, ds)
    result = ItemFeatures(
        table=table,
        encoder_version=version,
        computed=len(missing),
        reused=len(item_ids) - len(missing),
        forward_calls=forward_calls,
        seconds=time.perf_counter() - started,
    )
    log.info("stage=features ds=%s %s", ds, result.summary())
    return result


def cached_item_features(store: ObjectStore, items: pa.Table, encoder_version: str) -> pa.Table | None:
    """The ``item_features`` rows of ``items`` if every item is already in the cache, else None.

    Reads the reference images (to hash them) but loads no model: a day whose items are all cached
    needs no encoder, no workers and no Ray.
    """
    titles = items.column("title").to_pylist()
    hashes = [
        content_hash(t, b, encoder_version)
        for t, b in zip(titles, _read_references(store, items), strict=True)
    ]
    cached = set(store.list(layout.feature_cache(encoder_version)))
    if any(layout.feature(encoder_version, h) not in cached for h in hashes):
        return None
    return _feature_rows(items.column("item_id").to_pylist(), hashes, encoder_version)


def _read_references(store: ObjectStore, items: pa.Table) -> list[bytes]:
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        return list(pool.map(store.read_object, items.column("reference_image_uri").to_pylist()))


def _feature_rows(item_ids: list[str], hashes: list[str], version: str) -> pa.Table:
    """``item_features`` rows: each item's content hash and cache key under ``version``."""
    return pa.table(
        {
            "item_id": pa.array(item_ids, pa.string()),
            "content_hash": pa.array(hashes, pa.string()),
            "encoder_version": pa.array([version] * len(item_ids), pa.string()),
            "features_uri": pa.array([layout.feature(version, h) for h in hashes], pa.string()),
        }
    )


def load_features(store: ObjectStore, features_uris: Sequence[str]) -> torch.Tensor:
    """Stack cached features: float32 ``[B, N, d_mllm]`` in the order of ``features_uris``."""
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        payloads = list(pool.map(store.read_object, features_uris))
    return torch.stack([load_safetensors(payload)["features"] for payload in payloads])


def read_item_features(store: ObjectStore, ds: str) -> pa.Table:
    """The committed ``item_features`` partition of ``ds``."""
    return layout.ITEM_FEATURES.read(store, ds)
