"""Does a cover still show its item? Item retrieval against the catalog's reference covers.

Personalization may change how an item is presented, never what it is (docs/architecture.md,
"Content kept"). That is measured against the item's **own reference cover**, not against another
generator: a cover keeps its item when, among the references of a gallery of catalog items, the
nearest one to the cover is its own item's (retrieval rank 1; recall@k over many covers).

Covers and references are compared in a frozen, parameter-free encoder's space, the same on every
catalog: :func:`structure_descriptor`, a histogram of oriented gradients (HOG, Dalal and Triggs
2005) over a grid of cells. Per pixel the gradient of the colour channel with the largest one is
taken, as HOG does on colour images, so the descriptor follows shapes and edges, where they sit and
which way they run, and ignores what a personalized look changes: hue, brightness, saturation,
global contrast. It reads no learned model, so it cannot be fooled by the covers the learned
rewards were optimized for.

The cover policy (:mod:`icg_core.serving.policy`) uses it as a guard (a cover that loses its item
is never kept; the item's reference stands in), and evaluation as a measure and a gate
(:mod:`icg_core.evaluation.gates`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch.nn import functional as F

from icg_core.data.images import as_image_batch, read_images
from icg_core.storage import ObjectStore

DESCRIPTOR_SIZE = 32  # covers are resized to this square side first (coarse: tolerant of a soft sample)
CELLS = 8  # cells per side of the grid (4 x 4 px cells)
ORIENTATIONS = 9  # unsigned orientation bins over 180 degrees
GALLERY_LIMIT = 4096  # catalog references an index holds at most (a stable sample beyond that)
_BATCH = 256  # images described at once (bounds memory)


def structure_descriptor(images: object) -> np.ndarray:
    """Unit-norm HOG descriptors of covers: ``float32 [B, CELLS * CELLS * ORIENTATIONS]``.

    Args:
        images: ``uint8 [B, H, W, 3]`` (or anything :func:`icg_core.data.images.as_image_batch` takes).
    """
    batch = as_image_batch(images, DESCRIPTOR_SIZE)
    out = np.zeros((len(batch), CELLS * CELLS * ORIENTATIONS), np.float32)
    for start in range(0, len(batch), _BATCH):
        x = torch.from_numpy(np.ascontiguousarray(batch[start : start + _BATCH])).permute(0, 3, 1, 2)
        out[start : start + _BATCH] = _hog(x.float() / 255.0).numpy()
    return out


def _hog(images: torch.Tensor) -> torch.Tensor:
    """HOG of ``float [B, 3, S, S]`` images: per-cell magnitude-weighted orientation histograms,
    square-rooted (Hellinger) and L2-normalized over the image."""
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    gx = (padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]) / 2
    gy = (padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]) / 2
    magnitude = torch.hypot(gx, gy)
    strongest = magnitude.argmax(dim=1, keepdim=True)  # per pixel, the channel with the largest gradient
    magnitude = magnitude.gather(1, strongest)[:, 0]
    angle = torch.atan2(gy.gather(1, strongest)[:, 0], gx.gather(1, strongest)[:, 0]) % np.pi
    # Linear vote between the two nearest orientation bins.
    position = angle / (np.pi / ORIENTATIONS) - 0.5
    low = torch.floor(position)
    upper_share = position - low
    bins = torch.zeros(len(images), ORIENTATIONS, *magnitude.shape[1:])
    for offset, share in ((0, 1 - upper_share), (1, upper_share)):
        index = ((low + offset) % ORIENTATIONS).long()
        bins.scatter_add_(1, index[:, None], (magnitude * share)[:, None])
    cells = F.avg_pool2d(bins, DESCRIPTOR_SIZE // CELLS)  # [B, O, CELLS, CELLS]
    flat = cells.permute(0, 2, 3, 1).reshape(len(images), -1).sqrt()
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-8)


@dataclass(frozen=True)
class ContentIndex:
    """Reference covers of a gallery of catalog items, as descriptors, to retrieve covers' items from.

    Attributes:
        item_ids: ``[G]`` the gallery's items.
        descriptors: ``float32 [G, F]`` :func:`structure_descriptor` of their reference covers.
    """

    item_ids: tuple[str, ...]
    descriptors: np.ndarray

    @classmethod
    def from_references(cls, item_ids: Sequence[str], references: np.ndarray) -> ContentIndex:
        """The index of ``item_ids`` with reference covers ``uint8 [G, H, W, 3]``."""
        return cls(tuple(str(i) for i in item_ids), structure_descriptor(references))

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def digest(self) -> str:
        """What the index holds, for the fingerprint of covers guarded by it."""
        return hashlib.sha256(self.descriptors.round(4).tobytes()).hexdigest()[:16]

    def ranks(self, covers: np.ndarray, item_ids: Sequence[str], references: np.ndarray) -> np.ndarray:
        """Retrieval rank ``int [B]`` of each cover's own item: 1 + the gallery items (other than its own)
        whose reference is at least as close to the cover as its own reference.

        Args:
            covers: ``uint8 [B, H, W, 3]``.
            item_ids: ``B`` items the covers are of.
            references: ``uint8 [B, H, W, 3]`` each cover's own reference (its item need not be in the gallery).
        """
        described = structure_descriptor(covers)
        own = (described * structure_descriptor(references)).sum(axis=1)
        similarity = described @ self.descriptors.T  # [B, G]
        gallery = np.asarray(self.item_ids, dtype=object)
        is_own = gallery[None, :] == np.asarray(list(item_ids), dtype=object)[:, None]
        closer = (similarity >= own[:, None] - 1e-6) & ~is_own
        return 1 + closer.sum(axis=1)


def gallery_items(item_ids: Sequence[str], limit: int = GALLERY_LIMIT) -> list[str]:
    """The catalog items an index holds: all of them up to ``limit``, else a stable sample (by a hash of the id)."""
    ordered = sorted(str(i) for i in item_ids)
    if len(ordered) <= limit:
        return ordered
    return sorted(ordered, key=lambda i: hashlib.sha256(i.encode()).digest())[:limit]


def recall_at(ranks: np.ndarray, k: int) -> np.ndarray:
    """``float [B]``: 1 where the own item is among the ``k`` nearest, else 0."""
    return (np.asarray(ranks) <= k).astype(np.float64)


def load_content_index(store: ObjectStore, catalog: pa.Table, size: int) -> ContentIndex:
    """The index of a catalog's gallery (:func:`gallery_items`): its reference covers read at ``size``.

    Args:
        store: where the reference images are.
        catalog: rows with ``item_id`` and ``reference_image_uri``.
        size: the side the references are read at (the generator's cover size).
    """
    uri_of = dict(
        zip(
            catalog.column("item_id").to_pylist(),
            catalog.column("reference_image_uri").to_pylist(),
            strict=True,
        )
    )
    items = gallery_items(list(uri_of))
    return ContentIndex.from_references(items, read_images(store, [uri_of[i] for i in items], size))
