"""Relevance: the contrastive dual encoder (embedded) and the CLIP score (production, tiny CLIP)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icg_core.rewards.relevance import (
    ClipScorer,
    RelevanceConfig,
    build_relevance_model,
    build_relevance_reward,
    load_relevance_reward_fn,
    relevance_reward_fn,
    sentence_title_encoder,
    soft_targets,
    split_items,
)
from icg_core.storage import ObjectStore
from tests.icg_core.rewards.synthetic import (
    bag_of_words_encoder,
    build_tiny_clip,
    pattern_image,
    planted_logs,
)

FAST = RelevanceConfig(
    image_size=32,
    epochs=25,
    batch_size=16,
    lr=3e-3,
    holdout_fraction=0.25,
    device="cpu",
    soft_target_weight=0.0,
)


def testsoft_targets_spread_only_over_similar_titles():
    titles = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    targets = soft_targets(titles, weight=0.4, temperature=0.05)
    assert torch.allclose(targets.sum(dim=1), torch.ones(3))
    assert torch.allclose(targets.diagonal(), torch.full((3,), 0.6))
    assert targets[0, 1] > 0.39 and targets[0, 2] < 0.01  # the similar title takes the spread
    assert torch.equal(soft_targets(titles, weight=0.0, temperature=0.05), torch.eye(3))


def test_split_is_stable_and_sized():
    ids = [f"item_{i}" for i in range(2000)]
    held = split_items(ids, 0.2, seed=0)
    assert abs(held.mean() - 0.2) < 0.03
    assert np.array_equal(held[:100], split_items(ids[:100], 0.2, seed=0))  # per item, not per list


def test_dual_encoder_retrieves_planted_pairs(tmp_path):
    store = ObjectStore(str(tmp_path))
    logs = planted_logs(store, n_items=48, n_users=5, days=1, per_day=200)
    model = build_relevance_model(store, logs.catalog, logs.impressions, FAST, bag_of_words_encoder())
    held, train = model.metrics["heldout"], model.metrics["train"]
    assert held["n_items"] > 5 and model.metrics["train_covers"] > len(logs.catalog)
    assert model.metrics["losses"][-1] < model.metrics["losses"][0]
    # Titles name the pattern: retrieval by pattern on unseen items, well above chance (1/4).
    assert held["top1_same_category"] >= 0.7
    assert held["top5"] > held["chance_top5"] and train["top1_same_category"] >= 0.85
    assert held["matched_cosine"] > held["unmatched_cosine"] + 0.1
    # Reward contract: a cover scores higher with its own pattern's title than with another's.
    rings = pattern_image("rings", np.array([200, 60, 40]), 0.8)
    stripes = pattern_image("stripes", np.array([200, 60, 40]), 0.8)
    reward = relevance_reward_fn(model, model.stats)
    rewards, info = reward(
        np.stack([rings, rings, stripes, stripes]),
        ["oscar rings tango", "oscar stripes tango", "oscar stripes tango", "oscar rings tango"],
        [{}] * 4,
    )
    assert rewards.shape == (4,) and rewards.dtype == np.float32 and info["cosine"].shape == (4,)
    assert rewards[0] > rewards[1] and rewards[2] > rewards[3]


def test_saved_dual_encoder_scores_identically(tmp_path):
    store = ObjectStore(str(tmp_path))
    logs = planted_logs(store, n_items=16, n_users=5, days=1, per_day=50)
    encoder = bag_of_words_encoder()
    result = build_relevance_reward(
        store, logs.ds, FAST.model_copy(update={"epochs": 2}), encode_titles=encoder
    )
    assert result.version == logs.ds and "heldout" in result.metrics
    images = np.stack([pattern_image(p, np.array([90, 160, 60]), 0.9) for p in ("dots", "checks")])
    titles = ["lima dots", "lima checks"]
    loaded = load_relevance_reward_fn(store, encode_titles=encoder)
    rewards, info = loaded(images, titles, [{}, {}])
    raw, _ = load_relevance_reward_fn(store, logs.ds, standardize=False, encode_titles=encoder)(
        images, titles, [{}, {}]
    )
    assert np.allclose(info["raw"], raw) and rewards.shape == (2,)
    assert np.allclose(rewards, (raw - result.stats.mean) / result.stats.std, atol=1e-5)


def test_clip_score_from_a_tiny_local_clip(tmp_path):
    path = build_tiny_clip(tmp_path / "clip")
    scorer = ClipScorer(path, device="cpu", batch_size=3)
    images = np.stack(
        [
            pattern_image(p, np.array([90, 160, 60]), 0.9, size=40)
            for p in ("dots", "checks", "rings", "stripes")
        ]
    )
    titles = ["lima dots", "echo checks bravo", "rings", "a long title " * 10]  # the last one is truncated
    scores = scorer.score(images, titles)
    assert scores.shape == (4,) and np.all(np.abs(scores) <= 1.0 + 1e-5)
    assert np.allclose(
        scores[:2], scorer.score(images[:2], titles[:2]), atol=1e-5
    )  # batching does not matter
    rewards, info = relevance_reward_fn(scorer)(images, titles, [{}] * 4)
    assert np.allclose(rewards, scores) and not info["standardized"]
    with pytest.raises(ValueError, match="titles"):
        scorer.score(images, titles[:2])


def test_clip_backend_is_calibrated_and_versioned(tmp_path):
    store = ObjectStore(str(tmp_path / "root"))
    logs = planted_logs(store, n_items=8, n_users=3, days=1, per_day=20)
    cfg = RelevanceConfig(backend="clip", clip_path=build_tiny_clip(tmp_path / "clip"), device="cpu")
    result = build_relevance_reward(store, logs.ds, cfg)
    assert result.stats.count == 8
    reward = load_relevance_reward_fn(store)
    rewards, info = reward(
        np.stack([pattern_image("dots", np.array([9, 9, 9]), 1.0)] * 2), ["a", "b"], [{}, {}]
    )
    assert rewards.shape == (2,) and info["standardized"]


def test_sentence_encoder_is_offline_and_cached():
    encode = sentence_title_encoder()
    vectors = encode(["Nebula Orbit", "Harbor Tide", "Nebula Orbit"])
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2])
