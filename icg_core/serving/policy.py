"""How the cover of one (item, segment) is made: sample, steer by the rewards, keep the best.

The generate stage and the evaluation's generated variants both call :class:`CoverPolicy`, so what
is measured is what is published (docs/architecture.md, "Generation").

1. **Sample** ``candidates`` personalized covers with the segment centroid as the user (candidate
   ``k`` uses seed ``seed + k``; candidate 0 is the cover's own seed).
2. **Steer** each candidate's final latent by gradient ascent on the differentiable R
   (:class:`icg_core.rewards.guidance.GuidanceReward`), over a *look* transform of the latent::

       z' = m + (z - m) * exp(g) + b        m: per-channel spatial mean of z;  g, b: [C] per cover

   Colour, tone and contrast can move; the spatial pattern of each channel, which carries the
   item's motif, only scales. A quadratic penalty on (g, b) keeps the steer where the decoder
   renders well. This reaches every attribute the preference model reads (warmth, brightness,
   saturation, contrast) at the cost of a few decoder passes, where reward-weighted fine-tuning alone
   moves mostly what the sampler's noise already varies.
3. **Fall back**: with ``base_candidate`` the base cover (null user, same seed, not steered: what not
   personalizing gives) competes with the candidates.
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
from icg_core.rewards.guidance import GuidanceReward
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)

REWARD_KINDS = ("aesthetic", "relevance", "preference")
PERSONALIZED, BASE = "personalized", "base"


@dataclass(frozen=True)
class Sampling:
    """Settings that change a cover's pixels (all part of its fingerprint).

    Attributes:
        steps, guidance_scale, scheduler: the diffusion sampler (``models`` section).
        reward_steps: reward-guidance steps on each candidate's final latent (0 = off).
        reward_lr: Adam step size of the look transform.
        reward_penalty: weight of ``|g|^2 + |b|^2`` against R.
        candidates: personalized candidates per cover.
        base_candidate: the base cover (null user) competes, so the rewards can refuse personalization.
    """

    steps: int
    guidance_scale: float
    scheduler: str
    reward_steps: int = 0
    reward_lr: float = 0.05
    reward_penalty: float = 1.0
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
            guidance.lr,
            guidance.penalty,
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
    reward: Callable[[torch.Tensor], torch.Tensor],
    *,
    steps: int,
    lr: float,
    penalty: float,
) -> torch.Tensor:
    """Gradient ascent of ``reward(decode(z'))`` over the look transform of the module docstring.

    Args:
        decode: latents ``[B, C, h, w]`` -> images ``float [B, 3, H, W]`` in [0, 1], differentiable.
        latents: the sampler's final latents ``[B, C, h, w]``.
        reward: images -> ``[B]`` (each cover's R; covers are steered independently).
        steps, lr, penalty: Adam steps, step size, weight of ``|g|^2 + |b|^2``.

    Returns:
        The steered latents ``[B, C, h, w]``.
    """
    latents = latents.detach().float()
    mean = latents.mean(dim=(2, 3), keepdim=True)
    gain = torch.zeros_like(mean, requires_grad=True)
    shift = torch.zeros_like(mean, requires_grad=True)
    optimizer = torch.optim.Adam([gain, shift], lr=lr)

    def look() -> torch.Tensor:
        return mean + (latents - mean) * gain.exp() + shift

    with torch.enable_grad():
        for _ in range(steps):
            size = (gain**2 + shift**2).sum(dim=(1, 2, 3))
            loss = (penalty * size - reward(decode(look()))).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return look().detach()


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
        self, features: torch.Tensor, users: torch.Tensor | None, seeds: Sequence[int], **kw: Any
    ) -> Any:
        s = self.sampling
        return self.bundle.generate(features, list(seeds), users=users, steps=s.steps, guidance_scale=s.guidance_scale,
                                    scheduler=s.scheduler, batch_size=max(len(seeds), 1), **kw)  # fmt: skip

    def __call__(
        self,
        features: torch.Tensor,
        users: torch.Tensor,
        seeds: Sequence[int],
        *,
        titles: Sequence[str],
        segment_ids: Sequence[int],
        categories: Sequence[str],
    ) -> PolicyCovers:
        """The cover of each row.

        Args:
            features: ``[B, N, d]`` meta-token features of each row's item.
            users: ``[B, D]`` segment centroids.
            seeds: B seeds (``seed_for``).
            titles, segment_ids, categories: per row, for the rewards.
        """
        s, rows = self.sampling, len(seeds)
        # 1. Sample the personalized candidates (candidate-major: rows k*B .. k*B + B - 1).
        k = max(s.candidates, 1)
        candidate_seeds = [(int(seed) + c) % 2**63 for c in range(k) for seed in seeds]
        latents = self._sample(
            features.repeat(k, 1, 1), users.repeat(k, 1), candidate_seeds, output_type="latent"
        )
        covers = self.bundle.covers
        # 2. Steer them by the rewards.
        if s.reward_steps > 0:
            guide = self.rewards.guide  # type: ignore[union-attr]
            titles_k = list(titles) * k
            embeddings = guide.title_embeddings(titles_k)
            users_k = users.repeat(k, 1).to(covers.device)
            latents = steer_latents(
                covers.decode_tensor,
                latents,
                lambda images: guide(images, users_k, embeddings),
                steps=s.reward_steps,
                lr=s.reward_lr,
                penalty=s.reward_penalty,
            )
        images = covers.decode(latents)
        if self.rewards is None:
            return PolicyCovers(images, {}, [PERSONALIZED] * rows, np.zeros(rows, np.int64))
        # 3. The base cover competes.
        if s.base_candidate:
            images = np.concatenate([images, self._sample(features, None, seeds)])
        # 4. Keep the best by R.
        n = len(images) // rows
        rewards = self.rewards.score(  # type: ignore[union-attr]
            images, list(titles) * n, list(segment_ids) * n, list(categories) * n
        )
        best = self.rewards.total(rewards).reshape(n, rows).argmax(axis=0)  # type: ignore[union-attr]
        pick = best * rows + np.arange(rows)
        return PolicyCovers(
            images[pick],
            {kind: value[pick] for kind, value in rewards.items()},
            [BASE if b == k else PERSONALIZED for b in best.tolist()],
            np.where(best == k, -1, best),
        )
