"""How the cover of one (item, segment) is made: sample, steer by the rewards, keep the best.

The generate stage and the evaluation's generated variants both call :class:`CoverPolicy`, so what
is measured is what is published (docs/architecture.md, "Generation").

1. **Sample** ``candidates`` personalized covers per entry of ``strengths`` with the segment centroid
   as the user (candidate ``k`` uses seed ``seed + k``; candidate 0 is the cover's own seed). A
   strength below 1 starts from the item's reference cover, its VAE latent noised that far, and
   runs only that share of the schedule (SDEdit): the cover keeps the reference's layout, so
   personalization changes how the item is presented, not what it is; 1 samples from pure noise.
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
3. **Fall back**: with ``base_candidate`` the base cover (null user, at the first strength, not
   steered: what not personalizing gives) competes with the candidates. It is the item's one
   unpersonalized cover, seeded per item (``base_seeds``), so it costs one sampling per item, not
   per (item, segment).
4. **Keep the best** by R from the reward fns (standardized, ``w_a*a + w_r*r + w_p*p`` with the
   segment's own preference), so a personalized cover is published only where the rewards expect it
   to beat the base cover. With ``item_rank`` k > 0, only candidates that still show their item
   compete: the item's own reference must be among the k nearest references of the catalog's
   gallery (:class:`icg_core.rewards.content.ContentIndex`, a frozen encoder no reward was trained
   with). Where no candidate does, the item's reference cover is kept. What won is counted
   (``source``: personalized, base or reference).
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
from icg_core.rewards.content import ContentIndex
from icg_core.rewards.guidance import GuidanceReward
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)

REWARD_KINDS = ("aesthetic", "relevance", "preference")
PERSONALIZED, BASE, REFERENCE = "personalized", "base", "reference"


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
        candidates: personalized candidates per strength.
        base_candidate: the base cover (null user) competes, so the rewards can refuse personalization.
        strengths: share of the schedule each group of candidates runs from the item's reference
            latent; 1.0 = from pure noise.
        item_rank: 0 = off; k = a kept cover's own item is among the k nearest gallery references.
    """

    steps: int
    guidance_scale: float
    scheduler: str
    reward_steps: int = 0
    reward_radii: tuple[float, ...] = (0.5, 1.0, 2.0)
    reward_guards: tuple[str, ...] = ("aesthetic", "relevance")
    candidates: int = 1
    base_candidate: bool = False
    strengths: tuple[float, ...] = (1.0,)
    item_rank: int = 0

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
            tuple(guidance.strengths),
            guidance.item_rank,
        )

    @property
    def uses_rewards(self) -> bool:
        """Whether covers depend on the reward models (then their versions are part of the fingerprint)."""
        return (
            self.reward_steps > 0
            or self.candidates * len(self.strengths) > 1
            or self.base_candidate
            or self.item_rank > 0
        )

    @property
    def uses_references(self) -> bool:
        """Whether covers start from, or are checked against, the item's reference cover."""
        return self.item_rank > 0 or min(self.strengths) < 1.0


@dataclass
class CoverRewards:
    """The three standardized reward fns for covers of given segments, R's weights, the guidance R
    and the content index the item guard retrieves from."""

    aesthetic: Callable
    relevance: Callable
    preference: Callable
    weights: RewardWeights
    guide: GuidanceReward | None = None
    content: ContentIndex | None = None

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
    content: ContentIndex | None = None,
) -> CoverRewards:
    """Load the saved reward models once: the reward fns for ``centroids``' segments and, with
    ``guidance``, their differentiable R (:class:`GuidanceReward`); ``content`` is passed through."""
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
        aesthetic, relevance, preference_reward_fn(preference, dict(centroids)), weights, guide, content
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
        source: per row, ``"personalized"``, ``"base"`` (the fallback) or ``"reference"`` (no
            candidate kept the item).
        candidate: per row, the index of the kept personalized candidate (-1: the base cover,
            -2: the reference).
    """

    images: np.ndarray
    rewards: dict[str, np.ndarray]
    source: list[str]
    candidate: np.ndarray

    @property
    def fallbacks(self) -> int:
        return self.source.count(BASE)

    @property
    def references(self) -> int:
        return self.source.count(REFERENCE)


@dataclass
class CoverPolicy:
    """Steps 1-4 of the module docstring over a loaded generator (:class:`icg_core.models.bundle.ICGBundle`).

    Args:
        bundle: the generator.
        sampling: the settings (:meth:`Sampling.from_config`).
        rewards: the reward fns (and, when ``sampling.reward_steps`` > 0, ``rewards.guide``; when
            ``sampling.item_rank`` > 0, ``rewards.content``).
    """

    bundle: Any
    sampling: Sampling
    rewards: CoverRewards | None

    def __post_init__(self) -> None:
        if self.sampling.uses_rewards and self.rewards is None:
            raise ValueError(
                "reward guidance, several candidates, a base candidate or the item guard need the reward models"
            )
        if self.sampling.reward_steps > 0 and (self.rewards is None or self.rewards.guide is None):
            raise ValueError("reward guidance needs rewards loaded with guidance=True")
        if self.sampling.item_rank > 0 and (self.rewards is None or self.rewards.content is None):
            raise ValueError("the item guard (item_rank > 0) needs rewards with a content index")

    def _sample(
        self,
        features: torch.Tensor,
        users: torch.Tensor | None,
        seeds: Sequence[int],
        anchors: torch.Tensor | None,
        strength: float,
    ) -> torch.Tensor:
        """Final latents of the rows (decoded after steering), from ``anchors`` noised to ``strength``."""
        s = self.sampling
        return self.bundle.generate_latents(
            features,
            list(seeds),
            users=users,
            steps=s.steps,
            guidance_scale=s.guidance_scale,
            scheduler=s.scheduler,
            batch_size=max(len(seeds), 1),
            init_latents=anchors,
            strength=strength,
        )

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
        item_ids: Sequence[str] | None = None,
        references: np.ndarray | None = None,
    ) -> PolicyCovers:
        """The cover of each row.

        Args:
            features: ``[B, N, d]`` meta-token features of each row's item.
            users: ``[B, D]`` segment centroids.
            seeds: B seeds (``seed_for``).
            titles, segment_ids, categories: per row, for the rewards.
            base_seeds: B seeds of the base candidate, equal for rows of one item (default: ``seeds``);
                each distinct one is sampled once.
            item_ids: per row, the item (the item guard retrieves it).
            references: uint8 ``[B, H, W, 3]`` each row's reference cover at the generator's size
                (needed when ``sampling.uses_references``).
        """
        s, rows = self.sampling, len(seeds)
        if s.uses_references and (references is None or item_ids is None):
            raise ValueError(
                "these sampling settings start from or check against references: pass item_ids and references"
            )
        covers = self.bundle.covers
        anchors = None if references is None or min(s.strengths) >= 1.0 else covers.encode_images(references)
        # 1. Sample the personalized candidates (candidate-major: rows k*B .. k*B + B - 1).
        latents = self._candidates(features, users, seeds, anchors)
        k = len(latents) // max(rows, 1)
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
            images = np.concatenate([images, self._base_covers(features, seeds, base_seeds, anchors)])
        # 4. Keep the best by R, among the candidates that still show their item.
        return self._keep_best(images, k, titles, segment_ids, categories, item_ids, references)

    def _candidates(
        self, features: torch.Tensor, users: torch.Tensor, seeds: Sequence[int], anchors: torch.Tensor | None
    ) -> torch.Tensor:
        """Latents of every personalized candidate, candidate-major: ``candidates`` per strength."""
        s, per = self.sampling, max(self.sampling.candidates, 1)
        groups = []
        for g, strength in enumerate(s.strengths):
            group_seeds = [(int(seed) + g * per + c) % 2**63 for c in range(per) for seed in seeds]
            groups.append(
                self._sample(
                    features.repeat(per, 1, 1),
                    users.repeat(per, 1),
                    group_seeds,
                    None if anchors is None else anchors.repeat(per, 1, 1, 1),
                    strength,
                )
            )
        return torch.cat(groups)

    def _base_covers(
        self,
        features: torch.Tensor,
        seeds: Sequence[int],
        base_seeds: Sequence[int] | None,
        anchors: torch.Tensor | None,
    ) -> np.ndarray:
        """The base cover of each row (null user, first strength), sampled once per distinct base seed."""
        base_seeds = list(seeds) if base_seeds is None else [int(b) for b in base_seeds]
        first = {seed: row for row, seed in reversed(list(enumerate(base_seeds)))}
        distinct = list(first)
        picked = [first[b] for b in distinct]
        with torch.no_grad():
            base = self.bundle.covers.decode(
                self._sample(
                    features[picked],
                    None,
                    distinct,
                    None if anchors is None else anchors[picked],
                    self.sampling.strengths[0],
                )
            )
        return base[[distinct.index(b) for b in base_seeds]]

    def _keep_best(
        self,
        images: np.ndarray,
        k: int,
        titles: Sequence[str],
        segment_ids: Sequence[int],
        categories: Sequence[str],
        item_ids: Sequence[str] | None,
        references: np.ndarray | None,
    ) -> PolicyCovers:
        """Step 4 over candidate-major ``images`` (k personalized candidates, then the base if any)."""
        assert self.rewards is not None  # the caller made covers with rewards
        rows = len(titles)
        n = len(images) // rows
        rewards = self._score(images, titles, segment_ids, categories)
        keeps = self._keeps_item(images, item_ids, references)
        total = self.rewards.total(rewards).reshape(n, rows)
        best = np.where(keeps.reshape(n, rows), total, -np.inf).argmax(axis=0)
        pick = best * rows + np.arange(rows)
        kept_images = images[pick]
        kept = {kind: value[pick] for kind, value in rewards.items()}
        source = [BASE if b == k else PERSONALIZED for b in best.tolist()]
        candidate = np.where(best == k, -1, best)
        lost = np.flatnonzero(~keeps.reshape(n, rows).any(axis=0)).tolist()
        if lost and references is not None:  # no candidate shows the item: its reference does
            kept_images[lost] = references[lost]
            stand_in = self._score(
                references[lost],
                [titles[i] for i in lost],
                [segment_ids[i] for i in lost],
                [categories[i] for i in lost],
            )
            for kind in kept:
                kept[kind][lost] = stand_in[kind]
            for row in lost:
                source[row] = REFERENCE
            candidate[lost] = -2
        return PolicyCovers(kept_images, kept, source, candidate)

    def _score(
        self, images: np.ndarray, titles: Sequence[str], segment_ids: Sequence[int], categories: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Standardized rewards of candidate-major ``images``: each block of ``len(titles)`` is one per row."""
        assert self.rewards is not None  # the caller made covers with rewards
        m = len(images) // max(len(titles), 1)
        return self.rewards.score(images, list(titles) * m, list(segment_ids) * m, list(categories) * m)

    def _keeps_item(
        self, images: np.ndarray, item_ids: Sequence[str] | None, references: np.ndarray | None
    ) -> np.ndarray:
        """``bool [len(images)]``: whether each candidate-major cover passes the item guard (all True when off)."""
        content, rank = None if self.rewards is None else self.rewards.content, self.sampling.item_rank
        if rank <= 0 or content is None or references is None or item_ids is None:
            return np.ones(len(images), dtype=bool)
        m = len(images) // len(references)
        return content.ranks(images, list(item_ids) * m, np.tile(references, (m, 1, 1, 1))) <= rank
