"""How the cover of one (item, segment) is made: sample, steer by the rewards, keep the best.

The generate stage and the evaluation's generated variants both call :class:`CoverPolicy`, so what
is measured is what is published (docs/architecture.md, "Generation").

1. **Sample** ``candidates`` personalized covers with the segment centroid as the user (candidate
   ``k`` uses seed ``seed + k``; candidate 0 is the cover's own seed).
2. **Steer** each candidate's final latent along the differentiable R
   (:class:`icg_core.rewards.guidance.GuidanceReward`), over a *look* transform of the latent::

       z' = m + (z - m) * exp(g) + b        m: per-channel spatial mean of z;  theta = (g, b): [2C] per cover

   Colour, tone and contrast can move; the spatial pattern of each channel, which carries the
   item's motif, only scales. Each step takes R's gradient in theta, removes the part that would
   lower a *guard* reward (aesthetic, relevance: they may not fall below where the sample started),
   and tries it at a few radii; per cover the best R whose guards hold is kept (radius 0 always
   qualifies, so R never falls). This reaches every attribute the preference model reads (warmth,
   brightness, saturation, contrast) for a few decoder passes, where reward-weighted fine-tuning
   alone moves mostly what the sampler's noise already varies.
3. **Fall back**: with ``base_candidate`` the base cover (null user, not steered: what not
   personalizing gives) competes with the candidates. It is the item's one unpersonalized cover,
   seeded per item (``base_seeds``), so it costs one sampling per item, not per (item, segment).
4. **Keep the best** by R from the reward fns (standardized, ``w_a*a + w_r*r + w_p*p`` with the
   segment's own preference), so a personalized cover is published only where the rewards expect it
   to beat the base cover; how often the base wins is counted (``source``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from icg_core.config import ICGConfig, RewardWeights
from icg_core.models.generator import seed_for
from icg_core.rewards.guidance import GuidanceReward
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)

REWARD_KINDS = ("aesthetic", "relevance", "preference")
PERSONALIZED, BASE = "personalized", "base"


def base_seed(item_id: str, generator_version: str) -> int:
    """Seed of an item's one unpersonalized (base) cover: shared by all its segments."""
    return seed_for(item_id, -1, generator_version)


@dataclass(frozen=True)
class Sampling:
    """Settings that change a cover's pixels (all part of its fingerprint).

    Attributes:
        steps, guidance_scale, scheduler: the diffusion sampler (``models`` section).
        reward_steps: steer steps on each candidate's final latent (0 = off).
        reward_radii: step lengths tried per step (in theta units), best kept per cover.
        reward_guards: rewards a step may not lower below the sample's own.
        candidates: personalized candidates per cover.
        base_candidate: the base cover (null user) competes, so the rewards can refuse personalization.
    """

    steps: int
    guidance_scale: float
    scheduler: str
    reward_steps: int = 0
    reward_radii: tuple[float, ...] = (0.5, 1.0, 2.0)
    reward_guards: tuple[str, ...] = ("aesthetic", "relevance")
    candidates: int = 1
    base_candidate: bool = False

    @classmethod
    def from_config(cls, cfg: ICGConfig) -> Sampling:
        models, guidance = cfg.models, cfg.guidance
        return cls(
            models.sample_steps,
            models.guidance_scale,
            models.scheduler,
            guidance.steps,
            tuple(guidance.radii),
            tuple(guidance.guards),
            guidance.candidates,
            guidance.base_candidate,
        )

    @property
    def uses_rewards(self) -> bool:
        """Whether covers depend on the reward models (then their versions are part of the fingerprint)."""
        return self.reward_steps > 0 or self.candidates > 1 or self.base_candidate


@dataclass
class CoverRewards:
    """The three standardized reward fns for covers of given segments, R's weights and the guidance R."""

    aesthetic: Callable
    relevance: Callable
    preference: Callable
    weights: RewardWeights
    guide: GuidanceReward | None = None

    def score(
        self, images: np.ndarray, titles: Sequence[str], segment_ids: Sequence[int], categories: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Standardized rewards ``[B]`` per kind for uint8 covers ``[B, H, W, 3]``."""
        metadata = [
            {"segment_id": int(s), "category": c} for s, c in zip(segment_ids, categories, strict=True)
        ]
        return {
            "aesthetic": self.aesthetic(images, titles, metadata)[0],
            "relevance": self.relevance(images, titles, metadata)[0],
            "preference": self.preference(images, titles, metadata)[0],
        }

    def with_weights(self, weights: RewardWeights) -> CoverRewards:
        """The same models under other weights of R (an ablation drops a reward from guidance and choice too)."""
        guide = None if self.guide is None else replace(self.guide, weights=weights)
        return replace(self, weights=weights, guide=guide)

    def total(self, rewards: Mapping[str, np.ndarray]) -> np.ndarray:
        """R ``[B]`` from :meth:`score`'s standardized rewards."""
        w = self.weights
        return (
            w.aesthetic * rewards["aesthetic"]
            + w.relevance * rewards["relevance"]
            + w.preference * rewards["preference"]
        )


def load_cover_rewards(
    store: ObjectStore,
    versions: Mapping[str, str],
    centroids: Mapping[int, np.ndarray],
    weights: RewardWeights | None = None,
    *,
    guidance: bool = False,
) -> CoverRewards:
    """Load the saved reward models once: the reward fns for ``centroids``' segments and, with
    ``guidance``, their differentiable R (:class:`GuidanceReward`)."""
    from icg_core.rewards.aesthetic import aesthetic_reward_fn, load_aesthetic_reward_fn
    from icg_core.rewards.common import load_reward_model
    from icg_core.rewards.preference import PreferenceModel, preference_reward_fn
    from icg_core.rewards.relevance import load_relevance_model, load_relevance_reward_fn, relevance_reward_fn

    weights = weights or RewardWeights()
    preference = PreferenceModel.load(store, versions["preference"])
    relevance_model = None
    if load_reward_model(store, "relevance", versions["relevance"]).settings.get("backend") == "dual_encoder":
        relevance_model = load_relevance_model(store, versions["relevance"])
        relevance = relevance_reward_fn(relevance_model, relevance_model.stats)
    else:
        relevance = load_relevance_reward_fn(store, versions["relevance"])
    saved_aesthetic = load_reward_model(store, "aesthetic", versions["aesthetic"])
    proxy = saved_aesthetic.settings.get("backend", "proxy") == "proxy"
    aesthetic = (
        aesthetic_reward_fn(None, saved_aesthetic.stats)
        if proxy
        else load_aesthetic_reward_fn(store, versions["aesthetic"])
    )
    guide = None
    if guidance:
        guide = GuidanceReward(preference, relevance_model, saved_aesthetic.stats if proxy else None, weights)
    return CoverRewards(
        aesthetic, relevance, preference_reward_fn(preference, dict(centroids)), weights, guide
    )


def steer_latents(
    decode: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    terms: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    weights: Mapping[str, float],
    *,
    steps: int,
    radii: Sequence[float],
    guards: Sequence[str] = (),
) -> torch.Tensor:
    """Guarded ascent of R over the look transform of the module docstring, covers independently.

    Args:
        decode: latents ``[B, C, h, w]`` -> images ``float [B, 3, H, W]`` in [0, 1], differentiable.
        latents: the sampler's final latents ``[B, C, h, w]``.
        terms: images -> each reward ``[B]`` by name; R is their sum weighted by ``weights``.
        weights: weight of each term in R (terms without a weight count 0).
        steps: gradient steps; each costs one decoder pass with gradients and ``len(radii)`` without.
        radii: step lengths tried per step, in theta units (log-gain and latent shift).
        guards: terms that may not fall below their value for the unsteered latents.

    Returns:
        The steered latents ``[B, C, h, w]``.
    """
    latents = latents.detach().float()
    mean = latents.mean(dim=(2, 3), keepdim=True)
    channels = latents.shape[1]

    def look(theta: torch.Tensor) -> torch.Tensor:
        gain, shift = theta[:, :channels, None, None], theta[:, channels:, None, None]
        return mean + (latents - mean) * gain.exp() + shift

    def evaluate(theta: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = terms(decode(look(theta)))
        return sum(weights.get(k, 0.0) * v for k, v in values.items()), values  # type: ignore[return-value]

    theta = torch.zeros(len(latents), 2 * channels, device=latents.device)
    with torch.no_grad():
        best, start = evaluate(theta)
    floors = {name: start[name] for name in guards if name in start}
    for _ in range(steps):
        probe = theta.clone().requires_grad_(True)
        with torch.enable_grad():
            reward, values = evaluate(probe)
            outputs = [reward.sum(), *(values[name].sum() for name in floors)]
            grads = [torch.autograd.grad(o, probe, retain_graph=True)[0] for o in outputs]
        direction = grads[0]
        for guard in grads[1:]:  # first order: keep each guard level where R's gradient would lower it
            dot = (direction * guard).sum(dim=1, keepdim=True)
            projected = direction - dot / guard.pow(2).sum(dim=1, keepdim=True).clamp_min(1e-12) * guard
            direction = torch.where(dot < 0, projected, direction)
        direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        chosen = theta
        with torch.no_grad():
            for radius in radii:
                candidate = theta + radius * direction
                reward, values = evaluate(candidate)
                better = reward > best
                for name, floor in floors.items():
                    better &= values[name] >= floor
                best = torch.where(better, reward, best)
                chosen = torch.where(better[:, None], candidate, chosen)
        theta = chosen
    return look(theta).detach()


@dataclass
class PolicyCovers:
    """The kept cover of each row and why.

    Attributes:
        images: uint8 ``[B, H, W, 3]``.
        rewards: standardized rewards ``[B]`` per kind of the kept covers.
        source: per row, ``"personalized"`` or ``"base"`` (the fallback).
        candidate: per row, the index of the kept personalized candidate (-1 for the base cover).
    """

    images: np.ndarray
    rewards: dict[str, np.ndarray]
    source: list[str]
    candidate: np.ndarray

    @property
    def fallbacks(self) -> int:
        return self.source.count(BASE)


@dataclass
class CoverPolicy:
    """Steps 1-4 of the module docstring over a loaded generator (:class:`icg_core.models.bundle.ICGBundle`).

    Args:
        bundle: the generator.
        sampling: the settings (:meth:`Sampling.from_config`).
        rewards: the reward fns (and, when ``sampling.reward_steps`` > 0, ``rewards.guide``).
    """

    bundle: Any
    sampling: Sampling
    rewards: CoverRewards | None

    def __post_init__(self) -> None:
        if self.sampling.uses_rewards and self.rewards is None:
            raise ValueError("reward guidance, several candidates or a base candidate need the reward models")
        if self.sampling.reward_steps > 0 and (self.rewards is None or self.rewards.guide is None):
            raise ValueError("reward guidance needs rewards loaded with guidance=True")

    def _sample(
        self, features: torch.Tensor, users: torch.Tensor | None, seeds: Sequence[int]
    ) -> torch.Tensor:
        """Final latents of the rows (decoded after steering)."""
        s = self.sampling
        return self.bundle.generate_latents(features, list(seeds), users=users, steps=s.steps,
                                            guidance_scale=s.guidance_scale, scheduler=s.scheduler,
                                            batch_size=max(len(seeds), 1))  # fmt: skip

    def __call__(
        self,
        features: torch.Tensor,
        users: torch.Tensor,
        seeds: Sequence[int],
        *,
        titles: Sequence[str],
        segment_ids: Sequence[int],
        categories: Sequence[str],
        base_seeds: Sequence[int] | None = None,
    ) -> PolicyCovers:
        """The cover of each row.

        Args:
            features: ``[B, N, d]`` meta-token features of each row's item.
            users: ``[B, D]`` segment centroids.
            seeds: B seeds (``seed_for``).
            titles, segment_ids, categories: per row, for the rewards.
            base_seeds: B seeds of the base candidate, equal for rows of one item (default: ``seeds``);
                each distinct one is sampled once.
        """
        s, rows = self.sampling, len(seeds)
        # 1. Sample the personalized candidates (candidate-major: rows k*B .. k*B + B - 1).
        k = max(s.candidates, 1)
        candidate_seeds = [(int(seed) + c) % 2**63 for c in range(k) for seed in seeds]
        latents = self._sample(features.repeat(k, 1, 1), users.repeat(k, 1), candidate_seeds)
        covers = self.bundle.covers
        # 2. Steer them by the rewards.
        guide = None if self.rewards is None else self.rewards.guide
        # The guide is present whenever reward_steps > 0 (checked in __init__).
        if s.reward_steps > 0 and guide is not None:
            embeddings = guide.title_embeddings(list(titles) * k)
            users_k = users.repeat(k, 1).to(covers.device)
            latents = steer_latents(
                covers.decode_tensor,
                latents,
                lambda images: guide.terms(images, users_k, embeddings),
                guide.weights.model_dump(),
                steps=s.reward_steps,
                radii=s.reward_radii,
                guards=s.reward_guards,
            )
        images = covers.decode(latents)
        if self.rewards is None:
            return PolicyCovers(images, {}, [PERSONALIZED] * rows, np.zeros(rows, np.int64))
        # 3. The base cover competes: one per distinct base seed (per item).
        if s.base_candidate:
            base_seeds = list(seeds) if base_seeds is None else [int(b) for b in base_seeds]
            first = {seed: row for row, seed in reversed(list(enumerate(base_seeds)))}
            distinct = list(first)
            with torch.no_grad():
                base = covers.decode(self._sample(features[[first[b] for b in distinct]], None, distinct))
            images = np.concatenate([images, base[[distinct.index(b) for b in base_seeds]]])
        # 4. Keep the best by R.
        n = len(images) // rows
        rewards = self.rewards.score(images, list(titles) * n, list(segment_ids) * n, list(categories) * n)
        best = self.rewards.total(rewards).reshape(n, rows).argmax(axis=0)
        pick = best * rows + np.arange(rows)
        return PolicyCovers(
            images[pick],
            {kind: value[pick] for kind, value in rewards.items()},
            [BASE if b == k else PERSONALIZED for b in best.tolist()],
            np.where(best == k, -1, best),
        )
