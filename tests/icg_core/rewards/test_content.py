"""The content encoder: a cover keeps its item when its own reference is the nearest of the gallery's."""

from __future__ import annotations

import numpy as np
import pytest

from icg_core.rewards.content import (
    GALLERY_LIMIT,
    ContentIndex,
    gallery_items,
    recall_at,
    structure_descriptor,
)


def _references(count: int, size: int = 64) -> np.ndarray:
    """Two-colour shapes that differ in what they show and where: stripes, rings, blocks of a random period."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    images = np.zeros((count, size, size, 3), np.uint8)
    for i in range(count):
        period, angle, cx, cy = (
            rng.uniform(0.15, 0.5),
            rng.uniform(0, np.pi),
            rng.uniform(0.2, 0.8),
            rng.uniform(0.2, 0.8),
        )
        if i % 3 == 0:
            field = (x * np.cos(angle) + y * np.sin(angle)) / period
        elif i % 3 == 1:
            field = np.hypot(x - cx, y - cy) / period
        else:
            field = np.floor((x + cx) / period) + np.floor((y + cy) / period)
        mask = (np.floor(field) % 2 == 0)[..., None]
        fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        images[i] = np.where(mask, fg, bg)
    return images


def _recolour(images: np.ndarray, gain: float, shift: float, swap: bool) -> np.ndarray:
    """What a personalized look does: new hues, brightness and contrast, the same shapes in the same places."""
    out = images.astype(np.float32) * gain + shift
    if swap:
        out = out[..., ::-1]
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def gallery() -> tuple[list[str], np.ndarray, ContentIndex]:
    references = _references(40)
    items = [f"item_{i:03d}" for i in range(40)]
    return items, references, ContentIndex.from_references(items, references)


def test_descriptors_are_unit_vectors_and_ignore_the_look(gallery) -> None:
    _, references, _ = gallery
    described = structure_descriptor(references)
    assert described.shape == (40, 8 * 8 * 9) and np.allclose(
        np.linalg.norm(described, axis=1), 1.0, atol=1e-5
    )
    recoloured = structure_descriptor(_recolour(references, 0.6, 60.0, swap=True))
    assert (described * recoloured).sum(axis=1).min() > 0.9


def test_recoloured_covers_keep_their_item_and_other_items_covers_do_not(gallery) -> None:
    items, references, index = gallery
    for gain, shift, swap in ((1.0, 0.0, False), (0.5, 80.0, True), (1.4, -40.0, True)):
        ranks = index.ranks(_recolour(references, gain, shift, swap), items, references)
        assert recall_at(ranks, 1).mean() == 1.0
    wrong = np.roll(references, 1, axis=0)  # every cover shows another item
    assert recall_at(index.ranks(wrong, items, references), 1).mean() == 0.0


def test_covers_that_show_nothing_lose_their_item(gallery) -> None:
    items, references, index = gallery
    rng = np.random.default_rng(1)
    flat = np.full_like(references, 128) + rng.integers(0, 3, references.shape).astype(np.uint8)
    blobs = np.repeat(np.repeat(references[:, ::32, ::32], 32, axis=1), 32, axis=2)  # 2 x 2 colour blocks
    for lost in (flat, blobs):
        assert recall_at(index.ranks(lost, items, references), 1).mean() < 0.1
    # recall@10 is looser than recall@1, never stricter
    ranks = index.ranks(blobs, items, references)
    assert (recall_at(ranks, 10) >= recall_at(ranks, 1)).all()


def test_an_item_outside_the_gallery_is_ranked_against_it(gallery) -> None:
    items, references, index = gallery
    small = ContentIndex.from_references(items[1:], references[1:])
    assert small.ranks(references[:1], items[:1], references[:1]).tolist() == [1]
    assert small.ranks(references[1:2], items[:1], references[:1]).tolist() != [1]


def test_the_gallery_is_the_catalog_or_a_stable_sample_of_it() -> None:
    assert gallery_items(["b", "a"]) == ["a", "b"]
    many = [f"i{n}" for n in range(GALLERY_LIMIT + 10)]
    sample = gallery_items(many)
    assert len(sample) == GALLERY_LIMIT and sample == gallery_items(list(reversed(many)))
