"""The cover policy: the look steer raises R without touching the pattern; the base cover is a real fallback."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from icg_core.config import RewardWeights
from icg_core.data.images import read_images
from icg_core.models.generator import seed_for
from icg_core.rewards.content import load_content_index
from icg_core.serving.policy import (
    BASE,
    REFERENCE,
    CoverPolicy,
    Sampling,
    load_cover_rewards,
    steer_latents,
)
from icg_core.training.data import read_catalog
from tests.icg_core.stages.test_generate import build_tiny_world


def _decode(latents: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in decoder: three latent channels squashed to RGB in [0, 1]."""
    return torch.sigmoid(latents[:, :3])


def _redness(images: torch.Tensor) -> torch.Tensor:
    return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


def _brightness(images: torch.Tensor) -> torch.Tensor:
    return images.mean(dim=(1, 2, 3))


def test_steer_raises_the_reward_and_only_scales_the_pattern() -> None:
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    steered = steer_latents(
        _decode, latents, lambda x: {"red": _redness(x)}, {"red": 1.0}, steps=3, radii=(0.5, 1.0, 2.0)
    )
    assert (_redness(_decode(steered)) > _redness(_decode(latents)) + 0.1).all()
    # Per channel, the steered pattern is the original one up to gain and offset: correlation 1.
    for row in range(3):
        for channel in range(4):
            a, b = latents[row, channel].flatten(), steered[row, channel].flatten()
            assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9999


def test_a_guard_does_not_fall_while_the_reward_rises() -> None:
    """Redness is steered up; brightness is a guard: it may not end below where it started."""
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def terms(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"red": _redness(images), "bright": _brightness(images)}

    free = steer_latents(_decode, latents, terms, {"red": 1.0}, steps=3, radii=(0.5, 1.0, 2.0))
    guarded = steer_latents(
        _decode, latents, terms, {"red": 1.0}, steps=3, radii=(0.5, 1.0, 2.0), guards=["bright"]
    )
    start = _brightness(_decode(latents))
    assert (_brightness(_decode(guarded)) >= start - 1e-6).all()
    assert (_redness(_decode(guarded)) > _redness(_decode(latents))).all()
    # Unguarded, the same ascent is free to spend brightness (red up, blue down darkens the decode here).
    assert not torch.allclose(_brightness(_decode(free)), _brightness(_decode(guarded)))


def test_the_reward_never_falls_and_zero_steps_change_nothing() -> None:
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))

    def terms(images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"peak": -((images - 0.5) ** 2).mean(dim=(1, 2, 3))}  # concave: a step can overshoot

    steered = steer_latents(_decode, latents, terms, {"peak": 1.0}, steps=4, radii=(5.0,))
    assert (terms(_decode(steered))["peak"] >= terms(_decode(latents))["peak"] - 1e-6).all()
    unchanged = steer_latents(_decode, latents, terms, {"peak": 1.0}, steps=0, radii=(1.0,))
    assert torch.allclose(unchanged, latents, atol=1e-6)


def test_rewards_are_needed_when_the_sampling_uses_them() -> None:
    with pytest.raises(ValueError, match="need the reward models"):
        CoverPolicy(object(), Sampling(2, 1.0, "ddim", base_candidate=True), None)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory):
    """A tiny world, its generator, rewards, and eight (item, segment) rows to cover."""
    from icg_core.models.bundle import load_bundle
    from icg_core.models.users import load_segments
    from icg_core.serving.features import compute_item_features, load_features

    root = tmp_path_factory.mktemp("policy")
    from icg_core.storage import ObjectStore

    store, cfg, ds = build_tiny_world(ObjectStore(str(root / "root")), root / "cache")
    bundle = load_bundle(store, cfg.models)
    catalog = read_catalog(store, ds).slice(0, 4)
    features_table = compute_item_features(bundle.encoder, catalog, store).table
    features = load_features(store, features_table.column("features_uri").to_pylist())
    segment_ids, centroids = load_segments(store, ds).centroid_matrix()
    from icg_core.models.checkpoint import resolve_version
    from icg_core.rewards.common import model_name

    versions = {
        k: resolve_version(store, model_name(k), "latest") for k in ("aesthetic", "relevance", "preference")
    }
    size = bundle.covers.image_size
    references = read_images(store, catalog.column("reference_image_uri").to_pylist(), size)
    rewards = load_cover_rewards(
        store,
        versions,
        dict(zip(segment_ids.tolist(), centroids, strict=True)),
        RewardWeights(),
        guidance=True,
        content=load_content_index(store, read_catalog(store, ds), size),
    )
    items = np.repeat(np.arange(4), 2)
    segments = np.tile(segment_ids[:2], 4)
    rows = {
        "features": features[items],
        "users": torch.from_numpy(centroids[np.tile(np.arange(2), 4)]).float(),
        "seeds": [seed_for(catalog["item_id"][int(i)].as_py(), int(s), bundle.version) for i, s in zip(items, segments, strict=True)],
        "titles": [catalog["title"][int(i)].as_py() for i in items],
        "segment_ids": segments.tolist(),
        "categories": [catalog["category"][int(i)].as_py() for i in items],
        "item_ids": [catalog["item_id"][int(i)].as_py() for i in items],
        "references": references[items],
    }  # fmt: skip
    return bundle, rewards, Sampling.from_config(cfg), rows


def _run(policy: CoverPolicy, rows: dict):
    return policy(
        rows["features"],
        rows["users"],
        rows["seeds"],
        titles=rows["titles"],
        segment_ids=rows["segment_ids"],
        categories=rows["categories"],
        item_ids=rows["item_ids"],
        references=rows["references"],
    )


def _total(rewards, images: np.ndarray, rows: dict) -> np.ndarray:
    return rewards.total(rewards.score(images, rows["titles"], rows["segment_ids"], rows["categories"]))


@pytest.mark.slow
def test_the_kept_cover_is_never_worse_than_the_base_by_r_and_guidance_raises_r(made) -> None:
    bundle, rewards, sampling, rows = made
    guided = _run(CoverPolicy(bundle, replace(sampling, reward_steps=2), rewards), rows)
    base = bundle.generate(rows["features"], rows["seeds"], users=None, steps=sampling.steps,
                           guidance_scale=sampling.guidance_scale, scheduler=sampling.scheduler)  # fmt: skip
    kept = _total(rewards, guided.images, rows)
    assert (kept >= _total(rewards, base, rows) - 1e-4).all()
    assert guided.images.shape == base.shape and guided.images.dtype == np.uint8
    assert set(guided.source) <= {"personalized", BASE, REFERENCE} and len(guided.source) == len(
        rows["seeds"]
    )
    assert ((guided.candidate == -1) == (np.array(guided.source) == BASE)).all()
    assert ((guided.candidate == -2) == (np.array(guided.source) == REFERENCE)).all()

    plain = _run(CoverPolicy(bundle, replace(sampling, reward_steps=0, base_candidate=False), rewards), rows)
    steered = _run(
        CoverPolicy(bundle, replace(sampling, reward_steps=2, base_candidate=False), rewards),
        rows,
    )
    assert _total(rewards, steered.images, rows).mean() > _total(rewards, plain.images, rows).mean()


@pytest.mark.slow
def test_the_base_cover_wins_where_the_judge_expects_personalization_to_lose(made) -> None:
    """The steer ascends the segment's preference while the judge's R wants the opposite: covers fall back."""
    bundle, rewards, sampling, rows = made
    against = rewards.with_weights(RewardWeights(aesthetic=0.0, relevance=0.0, preference=-1.0))
    judge = replace(against, guide=rewards.guide)
    from_noise = replace(
        sampling, reward_steps=2, strengths=(1.0,)
    )  # the base: another sample, not the reference
    covers = _run(CoverPolicy(bundle, from_noise, judge), rows)
    assert covers.fallbacks >= 1


@pytest.mark.slow
def test_covers_that_lose_their_item_are_never_kept_the_reference_stands_in(made, monkeypatch) -> None:
    """A broken generator (every cover one flat colour) under the item guard: each pair gets its reference."""
    bundle, rewards, sampling, rows = made
    flat = np.full(rows["references"].shape, 127, np.uint8)
    monkeypatch.setattr(bundle.covers, "decode", lambda latents: flat[: len(latents)].copy())
    guarded = replace(sampling, reward_steps=0, item_rank=1, base_candidate=True)
    covers = _run(CoverPolicy(bundle, guarded, rewards), rows)
    assert covers.source == [REFERENCE] * len(rows["seeds"]) and covers.references == len(rows["seeds"])
    assert np.array_equal(covers.images, rows["references"]) and (covers.candidate == -2).all()
    unguarded = _run(CoverPolicy(bundle, replace(guarded, item_rank=0), rewards), rows)
    assert np.array_equal(unguarded.images, flat)  # without the guard the broken covers would be published


@pytest.mark.slow
def test_strengths_below_one_start_from_the_references_and_need_them(made) -> None:
    """The policy samples from each row's reference latent (the latent test is in test_generator.py)."""
    bundle, rewards, sampling, rows = made
    plain = replace(sampling, reward_steps=0, base_candidate=False, item_rank=0)
    anchored = _run(CoverPolicy(bundle, replace(plain, strengths=(0.3,)), rewards), rows)
    moved = dict(rows, references=np.roll(rows["references"], 1, axis=0))
    elsewhere = _run(CoverPolicy(bundle, replace(plain, strengths=(0.3,)), rewards), moved)
    assert not np.array_equal(anchored.images, elsewhere.images)  # other references, other covers
    from_noise = _run(CoverPolicy(bundle, replace(plain, strengths=(1.0,)), rewards), moved)
    noise_only = _run(CoverPolicy(bundle, replace(plain, strengths=(1.0,)), rewards), rows)
    assert np.array_equal(from_noise.images, noise_only.images)  # strength 1 reads no reference
    with pytest.raises(ValueError, match="references"):
        _run(CoverPolicy(bundle, replace(plain, strengths=(0.3,)), rewards), dict(rows, references=None))
