"""Stage 2: softmax weighting within pairs, reward combination, what one step updates, resume, and the
relevance-collapse guard (with rigged rewards on a tiny bundle)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from icg_core import layout
from icg_core.config import FinetuneConfig, ModelsConfig, RewardWeights
from icg_core.models.bundle import ICGBundle, build_bundle
from icg_core.models.checkpoint import checkpoint_exists
from icg_core.models.tiny import build_tiny_sd, build_tiny_vlm
from icg_core.rewards.aesthetic import aesthetic_reward_fn
from icg_core.rewards.common import RewardStats, finish
from icg_core.storage import ObjectStore
from icg_core.training.stage1 import encode_latents
from icg_core.training.stage2 import (
    LoggedCovers,
    RelevanceCollapse,
    Rewards,
    Stage2Data,
    Stage2Trainer,
    candidate_weights,
    combine_rewards,
    pair_weights,
    preference_matrix,
)

SIZE = 32
MODELS = ModelsConfig(num_meta_tokens=4, user_dim=8, adapter_hidden_dim=32, adapter_layers=1)
TITLES = ["Red Rings", "Blue Stripes", "Green Checks", "Yellow Dots"]


def finetune_config(**overrides) -> FinetuneConfig:
    base = dict(
        steps=4, pairs_per_step=2, candidates=3, sample_steps=2, warmup_steps=1, noise_draws=1,
        reg_batch_size=2, guard_every=100, guard_items=2, checkpoint_every=2, log_every=1,
        max_relevance_drop=0.5, lr=5e-3, logged_pairs_per_step=2, logged_candidates=3,
    )  # fmt: skip
    return FinetuneConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("base")
    vlm = build_tiny_vlm(root / "vlm", "llava", TITLES, hidden_size=32, image_size=16)
    sd = build_tiny_sd(
        root / "sd", "sd15", sample_size=SIZE, cross_attention_dim=16, block_out_channels=(16, 32)
    )
    return {"vlm": {"path": str(vlm)}, "sd": {"path": str(sd)}}


def fresh(base_dirs) -> ICGBundle:
    return build_bundle(
        ObjectStore("/nonexistent-unused"), {k: dict(v) for k, v in base_dirs.items()}, MODELS
    )


def tiny_data(bundle: ICGBundle) -> Stage2Data:
    g = torch.Generator().manual_seed(0)
    colours = np.array([[220, 40, 40], [40, 40, 220], [40, 200, 40], [230, 220, 40]], dtype=np.uint8)
    references = np.broadcast_to(colours[:, None, None, :], (4, SIZE, SIZE, 3)).copy()
    mean, std = encode_latents(bundle.covers, references)
    width = bundle.encoder.feature_dim
    # Logged covers: each item's reference, then a darker and a lighter variant of it.
    shades = [
        references,
        (references * 0.5).astype(np.uint8),
        np.minimum(references.astype(np.int16) + 60, 255).astype(np.uint8),
    ]
    logged = np.stack(shades, axis=1).reshape(-1, SIZE, SIZE, 3)
    logged_mean, logged_std = encode_latents(bundle.covers, logged)
    return Stage2Data(
        titles=TITLES,
        features=torch.randn(4, MODELS.num_meta_tokens, width, generator=g),
        ref_mean=mean,
        ref_std=std,
        guard_titles=["Held Out A", "Held Out B"],
        guard_item_ids=["held_a", "held_b"],
        guard_features=torch.randn(2, MODELS.num_meta_tokens, width, generator=g),
        segment_ids=np.array([0, 3]),
        centroids=torch.randn(2, MODELS.user_dim, generator=g),
        logged=LoggedCovers(logged, torch.arange(4).repeat_interleave(3), logged_mean, logged_std),
    )


def brightness_reward(scale: float = 1.0):
    def reward(images: Any, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]):
        raw = scale * np.asarray(images, np.float32).mean(axis=(1, 2, 3)) / 255.0
        return finish(raw, RewardStats(0.5, 0.1, 1, "test"), {})

    return reward


def rewards(relevance=None) -> Rewards:
    return Rewards(aesthetic_reward_fn(), relevance or brightness_reward(), brightness_reward(-1.0))


def trainer_for(
    base_dirs,
    cfg: FinetuneConfig,
    store: ObjectStore | None = None,
    relevance=None,
    weights: RewardWeights | None = None,
) -> Stage2Trainer:
    bundle = fresh(base_dirs)
    return Stage2Trainer(
        bundle,
        tiny_data(bundle),
        rewards(relevance),
        cfg,
        weights or RewardWeights(),
        store=store,
        version="test",
    )


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- weighting
def test_softmax_weights_are_taken_within_each_pair() -> None:
    rewards = torch.tensor([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]])
    weights = pair_weights(rewards, beta=1.0)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    assert weights[0, 2] > weights[0, 1] > weights[0, 0]
    torch.testing.assert_close(weights[1], torch.full((3,), 1 / 3))
    # A constant added to one pair changes nothing (only differences within a pair count) ...
    torch.testing.assert_close(pair_weights(rewards + torch.tensor([[10.0], [-3.0]]), 1.0), weights)
    # ... and a small beta approaches winner-takes-all.
    assert pair_weights(rewards, beta=0.01)[0, 2] > 0.999
    with pytest.raises(ValueError):
        pair_weights(rewards, beta=0.0)


def test_rewards_are_standardized_then_weighted() -> None:
    stats = RewardStats(mean=2.0, std=4.0, count=10, reference="test")
    standardized = {
        "aesthetic": stats.standardize(np.array([2.0, 6.0])),  # -> [0, 1]
        "relevance": np.array([1.0, -1.0], np.float32),
        "preference": np.array([0.5, 3.0], np.float32),
    }
    np.testing.assert_allclose(standardized["aesthetic"], [0.0, 1.0])
    total = combine_rewards(standardized, RewardWeights(aesthetic=2.0, relevance=1.0, preference=0.5))
    np.testing.assert_allclose(total, [0.0 + 1.0 + 0.25, 2.0 - 1.0 + 1.5])
    ablated = combine_rewards(standardized, RewardWeights(aesthetic=1.0, relevance=1.0, preference=0.0))
    np.testing.assert_allclose(ablated, [1.0, 0.0])


def test_reward_set_returns_standardized_and_raw_scores() -> None:
    images = np.full((2, 8, 8, 3), 153, np.uint8)  # brightness 0.6 -> z = (0.6 - 0.5) / 0.1 = 1
    scores = rewards().score(images, ["a", "b"], [0, 3])
    np.testing.assert_allclose(scores["relevance"]["raw"], [0.6, 0.6], atol=1e-6)
    np.testing.assert_allclose(scores["relevance"]["standardized"], [1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(scores["preference"]["standardized"], [-11.0, -11.0], atol=1e-4)


# ----------------------------------------------------------------------------- training
def test_one_step_updates_refiner_and_adapter_but_not_the_unet(base_dirs) -> None:
    trainer = trainer_for(base_dirs, finetune_config(steps=1, train_adapter=True))
    before = {name: state(getattr(trainer.bundle, name)) for name in ("refiner", "adapter")}
    unet_before = state(trainer.bundle.covers.unet)
    result = trainer.run()
    assert result.complete and result.steps == 1 and len(result.guard) == 2  # step 0 and the end
    for name in ("refiner", "adapter"):
        after = state(getattr(trainer.bundle, name))
        assert not all(torch.equal(before[name][k], after[k]) for k in after), name
    assert all(torch.equal(unet_before[k], v) for k, v in trainer.bundle.covers.unet.state_dict().items())
    assert not any(p.requires_grad for p in trainer.bundle.covers.unet.parameters())
    point = result.curve[0]
    assert {
        "aesthetic_raw",
        "relevance_raw",
        "preference_raw",
        "reward",
        "reward_loss",
        "logged_loss",
        "reg_loss",
    } <= point.keys()


def test_logged_covers_are_scored_once_and_pull_the_refiner(base_dirs) -> None:
    weights = RewardWeights(aesthetic=0.0, relevance=0.5, preference=4.0)
    trainer = trainer_for(base_dirs, finetune_config(preference_advantage="absolute"), weights=weights)
    rewards = trainer.logged_rewards
    assert rewards.shape == (12, 2)  # 4 items x 3 logged covers, 2 segments
    # The preference reward here likes dark covers (weight 4 against relevance's 0.5 for bright):
    # every item's darker variant (row 1 of its three) has the highest R, for both segments.
    assert (rewards.reshape(4, 3, 2).argmax(axis=1) == 1).all()
    loss = trainer.logged_loss()
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    assert trainer.bundle.refiner.out.weight.grad.abs().sum() > 0
    off = trainer_for(base_dirs, finetune_config(logged_pairs_per_step=0))
    assert off.logged_rewards is None and float(off.logged_loss()) == 0.0


def test_adapter_stays_frozen_when_configured(base_dirs) -> None:
    trainer = trainer_for(base_dirs, finetune_config(steps=1, train_adapter=False))
    adapter_before = state(trainer.bundle.adapter)
    trainer.run()
    assert all(torch.equal(adapter_before[k], v) for k, v in trainer.bundle.adapter.state_dict().items())


def test_resumed_run_equals_uninterrupted_run(base_dirs, tmp_path) -> None:
    cfg = finetune_config()
    straight = trainer_for(base_dirs, cfg)
    straight.run()

    store = ObjectStore(str(tmp_path))
    stopped = trainer_for(base_dirs, cfg, store).run(stop_after=2)
    assert not stopped.complete and stopped.steps == 2
    assert checkpoint_exists(store, "icg_generator-stage2-state", "test")
    assert layout.latest_version(store, "icg_generator-stage2-state") is None

    second = trainer_for(base_dirs, cfg, store)  # a new process: fresh modules, state from the store
    resumed = second.run()
    assert resumed.resumed_from == 2 and resumed.complete
    for name in ("refiner", "adapter"):
        expected, actual = state(getattr(straight.bundle, name)), state(getattr(second.bundle, name))
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=f"{name}.{key}")
    assert [p["reward"] for p in resumed.curve] == pytest.approx(
        [p["reward"] for p in straight.curve], rel=1e-4
    )


def test_relevance_collapse_stops_training(base_dirs) -> None:
    calls = {"n": 0}

    def collapsing(images: Any, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]):
        calls["n"] += 1  # the step-0 check sees relevance 1.0, everything after it 0.3
        raw = np.full(len(images), 1.0 if calls["n"] == 1 else 0.3, np.float32)
        return finish(raw, None, {})

    trainer = trainer_for(base_dirs, finetune_config(steps=6, guard_every=2), relevance=collapsing)
    calls["n"] = 0  # construction scored the logged covers; count from the step-0 check
    with pytest.raises(RelevanceCollapse) as caught:
        trainer.run()
    assert caught.value.step == 2 and caught.value.drop == pytest.approx(0.7)
    assert caught.value.result is not None and caught.value.result.collapsed
    assert not caught.value.result.complete and trainer.step == 2


# ----------------------------------------------------------------------------- advantages and the reward loss
def segment_preference(images: Any, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]):
    """Segment 0 likes bright covers, segment 3 dark ones; both like red more."""
    x = np.asarray(images, np.float32) / 255.0
    sign = np.array([1.0 if m["segment_id"] == 0 else -1.0 for m in metadata], np.float32)
    raw = sign * x.mean(axis=(1, 2, 3)) + 1.5 * x[..., 0].mean(axis=(1, 2))
    return finish(raw, None, {})


def test_segment_relative_preference_removes_what_every_segment_shares() -> None:
    images = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (40, 120, 220)])
    images[..., 0] = 250  # red: liked by both segments alike
    titles, segment_ids = ["a", "b", "c"], np.array([0, 3])
    absolute = preference_matrix(segment_preference, images, titles, segment_ids, "absolute")
    assert absolute.shape == (2, 3) and (absolute > 0).all()  # the shared red term dominates
    relative = preference_matrix(segment_preference, images, titles, segment_ids, "segment_relative")
    np.testing.assert_allclose(relative, absolute - absolute.mean(axis=0), atol=1e-6)
    assert relative[0, 2] > relative[0, 0] and relative[1, 0] > relative[1, 2]  # opposite directions


def test_softmax_weights_are_the_combined_rewards_within_each_pair() -> None:
    rng = np.random.default_rng(0)
    scores = {n: rng.normal(size=6).astype(np.float32) for n in ("aesthetic", "relevance", "preference")}
    rewards = combine_rewards(scores, RewardWeights()).reshape(2, 3)
    weights = candidate_weights(rewards, 1.0, "softmax")
    torch.testing.assert_close(weights, pair_weights(torch.from_numpy(rewards), 1.0).view(-1))


def test_centered_weights_sum_to_zero_and_rank_like_softmax() -> None:
    scores = {n: np.zeros(6, np.float32) for n in ("aesthetic", "relevance")}
    scores["preference"] = np.array([0.0, 0.3, -0.3, 0.0, 0.0, 0.0], np.float32)
    weights = candidate_weights(combine_rewards(scores, RewardWeights()).reshape(2, 3), 1.0, "centered")
    torch.testing.assert_close(weights.view(2, 3).sum(1), torch.zeros(2))
    assert weights[1] > 0 > weights[2]  # toward the better candidate, away from the worse
    torch.testing.assert_close(weights[3:], torch.zeros(3))  # a pair of equal candidates: no pull at all


def test_rows_of_one_group_share_noise_and_timestep(base_dirs) -> None:
    trainer = trainer_for(base_dirs, finetune_config())
    data = trainer.data
    mean, std = data.ref_mean[[0, 0, 1, 1]], torch.zeros_like(data.ref_mean[[0, 0, 1, 1]])
    features = data.features[[0, 0, 1, 1]]
    with torch.no_grad():
        loss = trainer.denoiser.loss(features, None, None, mean, std, groups=torch.tensor([0, 0, 1, 1]))
    assert loss[0] == loss[1] and loss[2] == loss[3] and loss[0] != loss[2]


def test_user_rows_of_the_regularization_pin_only_the_detail(base_dirs) -> None:
    trainer = trainer_for(base_dirs, finetune_config(reg_detail_pool=4))
    data = trainer.data
    rows = torch.tensor([0, 1, 2, 3])
    users = data.centroids[[0, 1, 0, 1]]

    def loss(detail_rows: torch.Tensor | None) -> torch.Tensor:
        trainer.generator.manual_seed(7)  # the same latents, noise and timesteps for every call
        with torch.no_grad():
            return trainer.denoiser.loss(
                data.features[rows],
                users,
                None,
                data.ref_mean[rows],
                data.ref_std[rows],
                detail_rows=detail_rows,
                detail_pool=trainer.cfg.reg_detail_pool,
            )

    whole, detail = loss(None), loss(torch.ones(4, dtype=torch.bool))
    mixed = loss(torch.tensor([True, False, True, False]))
    assert (detail < whole).all()  # the look's share of the error no longer counts
    torch.testing.assert_close(mixed, torch.where(torch.tensor([True, False, True, False]), detail, whole))


def test_clean_latents_invert_the_forward_noising(base_dirs) -> None:
    trainer = trainer_for(base_dirs, finetune_config())
    g = torch.Generator().manual_seed(1)
    latents, noise = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    timesteps = torch.tensor([10, 500, 990])
    noisy = trainer.denoiser.scheduler.add_noise(latents, noise, timesteps)
    torch.testing.assert_close(
        trainer.denoiser.clean_latents(noisy, noise, timesteps), latents, rtol=1e-3, atol=1e-3
    )


def test_high_noise_clean_latent_loss_trains(base_dirs) -> None:
    trainer = trainer_for(
        base_dirs, finetune_config(steps=1, reward_x0_from=600, reward_x0_pool=2, weighting="centered")
    )
    before = state(trainer.bundle.refiner)
    result = trainer.run()
    assert result.complete and np.isfinite(result.curve[0]["reward_loss"])
    after = state(trainer.bundle.refiner)
    assert not all(torch.equal(before[k], after[k]) for k in after)
