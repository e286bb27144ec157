"""Image batches, standardization statistics and versioned reward checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from icg_core.data.images import as_image_batch, read_images
from icg_core.models.checkpoint import CheckpointError
from icg_core.rewards.common import RewardStats, finish, load_reward_model, save_reward_model
from icg_core.storage import ObjectStore
from tests.icg_core.rewards.synthetic import pattern_image, png


def test_as_image_batch_accepts_the_usual_layouts():
    rng = np.random.default_rng(0)
    uint8 = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    as_float = uint8.astype(np.float32) / 255.0
    channels_first = torch.from_numpy(as_float).permute(0, 3, 1, 2)
    pil = [Image.fromarray(image) for image in uint8]
    for images in (uint8, as_float, channels_first, pil, list(uint8)):
        out = as_image_batch(images)
        assert out.dtype == np.uint8 and out.shape == (2, 8, 8, 3)
        assert np.abs(out.astype(int) - uint8).max() <= 1
    assert as_image_batch(uint8[0]).shape == (1, 8, 8, 3)
    assert as_image_batch(uint8, size=16).shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="different sizes"):
        as_image_batch([uint8[0], np.zeros((4, 4, 3), np.uint8)])


def test_read_images_in_order_with_duplicates(tmp_path):
    store = ObjectStore(str(tmp_path))
    a = store.put_bytes("a.png", png(pattern_image("rings", np.array([200, 30, 30]), 1.0)))
    b = store.put_bytes("b.png", png(pattern_image("dots", np.array([30, 30, 200]), 1.0)))
    images = read_images(store, [b, a, b], size=16)
    assert images.shape == (3, 16, 16, 3)
    assert np.array_equal(images[0], images[2]) and not np.array_equal(images[0], images[1])


def test_stats_standardize_and_round_trip():
    stats = RewardStats.from_values(np.array([1.0, 2.0, 3.0, 4.0]), "test")
    z = stats.standardize(np.array([1.0, 2.0, 3.0, 4.0]))
    assert (
        z.dtype == np.float32
        and z.mean() == pytest.approx(0, abs=1e-6)
        and z.std() == pytest.approx(1, abs=1e-5)
    )
    assert RewardStats.from_dict(stats.to_dict()) == stats
    constant = RewardStats.from_values(np.ones(5), "flat")
    assert np.all(np.isfinite(constant.standardize(np.ones(3))))
    with pytest.raises(ValueError):
        RewardStats.from_values(np.array([np.nan]), "bad")
    rewards, info = finish(np.array([2.5]), stats, {"extra": 1})
    assert rewards.shape == (1,) and info["raw"][0] == 2.5 and info["standardized"] and info["extra"] == 1
    raw, info = finish(np.array([2.5]), None, {})
    assert raw[0] == 2.5 and not info["standardized"]


def test_reward_checkpoint_round_trip_by_version(tmp_path):
    store = ObjectStore(str(tmp_path))
    head = torch.nn.Linear(3, 1)
    stats_v1 = RewardStats(0.5, 2.0, 10, "ref v1")
    save_reward_model(
        store,
        "relevance",
        "2026-11-14",
        modules={"head": head},
        config={"a": 1},
        stats=stats_v1,
        metrics={"auc": 0.7},
    )
    save_reward_model(
        store, "relevance", "2026-11-15", modules={}, config={"a": 2}, stats=RewardStats(0, 1, 3, "v2")
    )
    latest = load_reward_model(store, "relevance")
    assert latest.version == "2026-11-15" and latest.settings == {"a": 2} and latest.states == {}
    old = load_reward_model(store, "relevance", "2026-11-14")
    assert old.stats == stats_v1 and old.metrics == {"auc": 0.7}
    assert torch.equal(old.states["head"]["weight"], head.weight.detach())
    assert store.exists("models/reward_relevance/2026-11-14/head.safetensors")
    with pytest.raises(CheckpointError):
        load_reward_model(store, "aesthetic")
