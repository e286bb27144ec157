"""What stage 1 learns from: each catalog item's covers, and the items it must never see.

An item's covers are its reference image plus every cover variant the impression logs show for it
(distinct ``cover_uri`` per item in the validated impressions). Everything is read from the
validated area of one ``ds``, so training sees exactly the data that passed validation.

Held-out items are chosen by a salted hash of ``item_id`` alone: the split is the same on every
machine and every day, an item never moves between sides when the catalog grows, and evaluation
can recompute it without reading any training state.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from icg_core import layout
from icg_core.data.images import decode_image
from icg_core.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

HOLDOUT_SALT = "icg-holdout-v1"
_READ_THREADS = 8


def is_held_out(item_id: str, fraction: float) -> bool:
    """Whether ``item_id`` belongs to the held-out share ``fraction`` (deterministic, salted sha256)."""
    digest = hashlib.sha256(f"{HOLDOUT_SALT}\x1f{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_items(item_ids: Iterable[str], fraction: float) -> tuple[list[str], list[str]]:
    """(training item ids, held-out item ids), each in the given order."""
    train: list[str] = []
    held_out: list[str] = []
    for item_id in item_ids:
        (held_out if is_held_out(item_id, fraction) else train).append(item_id)
    return train, held_out


def latest_validated_ds(store: ObjectStore) -> str:
    """The newest ds with a validated catalog (what bootstrap trains on by default)."""
    partitions = layout.CATALOG.days(store)
    if not partitions:
        raise StorageError(
            f"no validated catalog under {layout.CATALOG.root_uri(store)}: run extract and validate first"
        )
    return max(partitions)


def read_catalog(store: ObjectStore, ds: str) -> pa.Table:
    """The validated catalog snapshot of ``ds`` (one row per item), sorted by item_id."""
    table = layout.CATALOG.read(store, ds)
    return table.sort_by("item_id")


def logged_cover_uris(store: ObjectStore, ds: str) -> dict[str, list[str]]:
    """item_id -> the distinct cover URIs its validated impressions of ``ds`` show (sorted)."""
    if not layout.IMPRESSIONS.exists(store, ds):
        log.warning("stage=stage1 ds=%s no validated impressions: training on reference covers only", ds)
        return {}
    impressions = layout.IMPRESSIONS.read(store, ds).select(["item_id", "cover_uri"])
    pairs = impressions.group_by(["item_id", "cover_uri"]).aggregate([])
    pairs = pairs.filter(pc.invert(pc.is_null(pairs.column("cover_uri"))))
    covers: dict[str, list[str]] = {}
    for item_id, uri in zip(
        pairs.column("item_id").to_pylist(), pairs.column("cover_uri").to_pylist(), strict=True
    ):
        covers.setdefault(item_id, []).append(uri)
    return {item_id: sorted(uris) for item_id, uris in covers.items()}


def to_square(image: Image.Image, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to ``size``: uint8 ``[size, size, 3]``."""
    width, height = image.size
    if width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


@dataclass
class CatalogCovers:
    """Items and their covers, decoded at the training resolution.

    Attributes:
        item_ids, titles, categories, reference_uris: per item, length I.
        reference_bytes: the encoded reference images (what the feature cache hashes), length I.
        references: uint8 ``[I, S, S, 3]``.
        covers: uint8 ``[C, S, S, 3]``: every item's reference followed by its logged variants.
        cover_item: int64 ``[C]``, the item index of each cover.
    """

    item_ids: list[str]
    titles: list[str]
    categories: list[str]
    reference_uris: list[str]
    reference_bytes: list[bytes]
    references: np.ndarray
    covers: np.ndarray
    cover_item: np.ndarray

    def __len__(self) -> int:
        return len(self.item_ids)

    def subset(self, item_ids: Sequence[str]) -> CatalogCovers:
        """The given items (in that order) and only their covers."""
        index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        rows = np.array([index[item_id] for item_id in item_ids], dtype=np.int64)
        remap = np.full(len(self.item_ids), -1, dtype=np.int64)
        remap[rows] = np.arange(len(rows))
        keep = np.isin(self.cover_item, rows)
        return CatalogCovers(
            item_ids=[self.item_ids[i] for i in rows],
            titles=[self.titles[i] for i in rows],
            categories=[self.categories[i] for i in rows],
            reference_uris=[self.reference_uris[i] for i in rows],
            reference_bytes=[self.reference_bytes[i] for i in rows],
            references=self.references[rows],
            covers=self.covers[keep],
            cover_item=remap[self.cover_item[keep]],
        )


def load_catalog_covers(
    store: ObjectStore,
    ds: str,
    image_size: int,
    *,
    item_ids: Sequence[str] | None = None,
    with_variants: bool = True,
) -> CatalogCovers:
    """Read and decode the validated catalog of ``ds`` and its covers.

    Args:
        store: the object store.
        ds: the validated partition to read.
        image_size: side the covers are resized to (the generator's resolution).
        item_ids: restrict to these items (default: the whole catalog).
        with_variants: also read the logged cover variants (else references only).

    Returns:
        The items, sorted by item_id, with their covers.
    """
    catalog = read_catalog(store, ds)
    if item_ids is not None:
        catalog = catalog.filter(pc.is_in(catalog.column("item_id"), pa.array(list(item_ids), pa.string())))
    ids = catalog.column("item_id").to_pylist()
    reference_uris = catalog.column("reference_image_uri").to_pylist()
    variants = logged_cover_uris(store, ds) if with_variants else {}
    cover_uris, cover_item = [], []
    for i, (item_id, reference) in enumerate(zip(ids, reference_uris, strict=True)):
        for uri in [reference] + [u for u in variants.get(item_id, []) if u != reference]:
            cover_uris.append(uri)
            cover_item.append(i)
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        encoded = list(pool.map(store.read_object, cover_uris))
    covers = np.stack([to_square(decode_image(data), image_size) for data in encoded])
    cover_item_array = np.asarray(cover_item, dtype=np.int64)
    first = np.searchsorted(cover_item_array, np.arange(len(ids)))  # each item's reference comes first
    log.info("stage=stage1 ds=%s items=%d covers=%d size=%d", ds, len(ids), len(covers), image_size)
    return CatalogCovers(
        item_ids=ids,
        titles=catalog.column("title").to_pylist(),
        categories=catalog.column("category").to_pylist(),
        reference_uris=reference_uris,
        reference_bytes=[encoded[j] for j in first],
        references=covers[first],
        covers=covers,
        cover_item=cover_item_array,
    )


def data_fingerprint(covers: CatalogCovers) -> str:
    """sha256 over what training reads: item ids, titles, and every cover's pixels, in order."""
    digest = hashlib.sha256()
    for item_id, title in zip(covers.item_ids, covers.titles, strict=True):
        digest.update(f"{item_id}\x1f{title}\x1e".encode())
    digest.update(np.ascontiguousarray(covers.cover_item).tobytes())
    digest.update(np.ascontiguousarray(covers.covers).tobytes())
    return digest.hexdigest()
