"""Aesthetic: the pixel proxy, the held-out composition measure, and the LAION loader on a tiny CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from icg_core.rewards.aesthetic import (
    PROXY_WEIGHTS,
    AestheticConfig,
    AestheticHead,
    LaionAestheticScorer,
    aesthetic_proxy,
    aesthetic_reward_fn,
    build_aesthetic_reward,
    composition_reward_fn,
    composition_score,
    load_aesthetic_reward_fn,
    proxy_components,
)
from icg_core.storage import ObjectStore
from tests.icg_core.rewards.synthetic import build_tiny_clip, pattern_image, planted_logs


def _covers() -> np.ndarray:
    vivid = pattern_image("checks", np.array([230, 40, 20]), 1.0, size=64)
    muted = (0.5 * vivid + 0.5 * vivid.mean(axis=-1, keepdims=True)).astype(np.uint8) // 3 + 40
    blurred = np.full((64, 64, 3), 128, np.uint8)
    return np.stack([vivid, muted, blurred])


def test_proxy_components_rank_vivid_over_muted_over_flat():
    components = proxy_components(_covers())
    assert set(components) == set(PROXY_WEIGHTS) and sum(PROXY_WEIGHTS.values()) == pytest.approx(1.0)
    for values in components.values():
        assert values.shape == (3,) and np.all((values >= 0) & (values <= 1))
    score = aesthetic_proxy(_covers())
    assert score[0] > score[1] > score[2]
    assert components["exposure"][2] == pytest.approx(1.0, abs=0.01)  # mid-grey is perfectly exposed
    assert components["sharpness"][2] == 0 and components["colorfulness"][2] == 0
    # Size-independent: covers are analysed at one size.
    big = np.repeat(np.repeat(_covers(), 2, axis=1), 2, axis=2)
    assert np.allclose(aesthetic_proxy(big), score, atol=0.05)


def test_composition_is_a_different_measure():
    centred = np.zeros((1, 64, 64, 3), np.uint8)
    centred[:, 16:48, 16:48] = 255
    corner = np.zeros((1, 64, 64, 3), np.uint8)
    corner[:, :24, :24] = 255
    scores = composition_score(np.concatenate([centred, corner]))
    assert scores.shape == (2,) and scores[0] > scores[1]
    measured, info = composition_reward_fn()(_covers(), ["t"] * 3, [{}] * 3)
    assert measured.shape == (3,) and not info["standardized"]


def test_proxy_reward_contract_and_versioned_stats(tmp_path):
    store = ObjectStore(str(tmp_path))
    logs = planted_logs(store, n_items=8, n_users=4, days=1, per_day=40)
    result = build_aesthetic_reward(store, logs.ds, AestheticConfig())
    assert result.metrics["n_images"] > 8 and "heldout_stats" in result.metrics
    reward = load_aesthetic_reward_fn(store, logs.ds)
    rewards, info = reward(
        torch.from_numpy(_covers()).permute(0, 3, 1, 2).float() / 255, ["a", "b", "c"], [{}] * 3
    )
    assert rewards.shape == (3,) and rewards.dtype == np.float32 and info["standardized"]
    stats = result.stats
    assert np.allclose(rewards, (info["aesthetic_proxy"] - stats.mean) / stats.std, atol=1e-4)
    raw, raw_info = aesthetic_reward_fn()(_covers(), ["a"] * 3, [{}] * 3)
    assert np.allclose(raw, aesthetic_proxy(_covers())) and not raw_info["standardized"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip", projection_dim=16)


def test_laion_head_matches_the_published_layout():
    keys = set(AestheticHead(768).state_dict())
    assert keys == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    assert AestheticHead(768).layers[0].in_features == 768


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_laion_scorer_loads_clip_and_head_from_local_paths(tmp_path, tiny_clip, fmt):
    torch.manual_seed(0)
    head = AestheticHead(16)
    path = tmp_path / f"head.{fmt}"
    if fmt == "pth":
        torch.save(head.state_dict(), path)
    else:
        save_file(head.state_dict(), str(path))
    scorer = LaionAestheticScorer(tiny_clip, str(path), device="cpu", batch_size=2)
    scores = scorer.score(_covers())
    assert scores.shape == (3,) and np.isfinite(scores).all()
    embeddings = scorer.clip.image_features(_covers())
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)  # L2-normalized into the head
    assert np.allclose(scores, head.eval()(embeddings).detach().numpy(), atol=1e-5)
    wrong = tmp_path / "wrong.safetensors"
    save_file(AestheticHead(768).state_dict(), str(wrong))
    with pytest.raises(ValueError, match="768-d"):
        LaionAestheticScorer(tiny_clip, str(wrong), device="cpu")


def test_laion_backend_is_versioned_with_its_head(tmp_path, tiny_clip):
    store = ObjectStore(str(tmp_path / "root"))
    logs = planted_logs(store, n_items=6, n_users=3, days=1, per_day=20)
    head_path = tmp_path / "head.safetensors"
    save_file(AestheticHead(16).state_dict(), str(head_path))
    cfg = AestheticConfig(backend="laion", clip_path=tiny_clip, head_path=str(head_path), device="cpu")
    result = build_aesthetic_reward(store, logs.ds, cfg)
    assert store.exists(f"models/reward_aesthetic/{logs.ds}/head.safetensors")
    head_path.unlink()  # the saved copy is what loads
    rewards, info = load_aesthetic_reward_fn(store)(_covers(), ["t"] * 3, [{}] * 3)
    assert rewards.shape == (3,) and info["standardized"] and result.stats.count > 6
    with pytest.raises(ValueError, match="clip_path and head_path"):
        build_aesthetic_reward(store, logs.ds, AestheticConfig(backend="laion"))
