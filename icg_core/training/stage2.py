"""Stage 2, multi-reward alignment (docs/architecture.md, "The method"): reward-weighted fine-tuning, no covers.

Per step:

1. draw ``pairs_per_step`` (training item, segment) pairs;
2. sample ``candidates`` (K) covers per pair from the current generator, the segment centroid as user;
3. score every cover with the three standardized rewards and combine them:
   ``R = w_a*aesthetic + w_r*relevance + w_p*preference(segment, cover)``; with
   ``preference_advantage="segment_relative"`` the preference term is the segment's preference
   minus the mean over all segments for the same cover (a look everyone likes pulls no segment);
4. weight the denoising loss on each candidate (its VAE latents, re-noised) by ``softmax(R / beta)``
   within its pair -- the model moves toward its own best candidates (RWR);
   ``weighting="centered"`` subtracts the mean weight (:func:`candidate_weights`), and
   ``reward_x0_from`` measures this term as the clean-latent error at high-noise timesteps, where a
   cover's global look is decided (:meth:`icg_core.training.diffusion.Denoiser.clean_latent_loss`);
   With ``logged_pairs_per_step``, more pairs take their candidates from the item's logged covers
   (its reference and the variants shown in impressions) instead of fresh samples: off-policy RWR
   with the same R, precomputed once. Logged covers span the looks users actually reacted to, a
   wider range than the model's own samples (whose look is mostly decided by the noise seed), so
   each segment is shown which looks of an item it prefers even before its path has opened;
5. add ``reg_weight`` x the stage-1 denoising loss on training items' reference covers with the null
   user, a segment centroid or a random user, so content and the non-personalized path stay put
   (rows with a user pin only the cover's detail: its global look is the rewards' to move);
6. update the refiner and (``train_adapter``) the adapter. The UNet and VAE stay frozen, and so do
   the meta tokens: items are read from the feature cache. LoRA on the UNet is not implemented.
   The adapter is shared by every segment: what it learns moves all segments alike, so the default
   trains the refiner alone.

Reward hacking guard: at step 0, every ``guard_every`` steps and at the end, a fixed set of held-out
items x every segment is generated with fixed seeds and scored: the relevance reward's raw cosine,
the aesthetic reward, the held-out aesthetic measure (``composition_score``, never trained on) and
the preference reward. If held-out relevance falls more than ``max_relevance_drop`` (relative) below
its step-0 value, training stops and the run fails (:class:`RelevanceCollapse`): nothing is saved
as a generator and ``_latest`` does not move.

Resumable like stage 1: weights, optimizer, step, curves and the generator state are saved every
``checkpoint_every`` steps as ``models/<generator>-stage2-state/<version>/``; a rerun continues.
The finetune stage around this trainer (data, versions, saving) is :mod:`icg_core.stages.finetune`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from icg_core.config import FinetuneConfig, RewardWeights
from icg_core.models.bundle import ICGBundle
from icg_core.models.checkpoint import (
    checkpoint_exists,
    load_module_checkpoint,
    save_module_checkpoint,
)
from icg_core.models.generator import seed_for
from icg_core.progress import Progress
from icg_core.rewards.aesthetic import composition_score, load_aesthetic_reward_fn
from icg_core.rewards.common import RewardFn
from icg_core.rewards.preference import load_preference_reward_fn
from icg_core.rewards.relevance import load_relevance_reward_fn
from icg_core.storage import ObjectStore
from icg_core.training.base import lr_factor
from icg_core.training.diffusion import Denoiser, flatten_optimizer, unflatten_optimizer
from icg_core.training.stage1 import encode_latents

log = logging.getLogger(__name__)

STATE_SUFFIX = "-stage2-state"
# Refiner and adapter weights at every checkpoint step, kept for the evaluation's fine-tuning curve.
SNAPSHOT_SUFFIX = "-stage2-snapshots"


def snapshot_version(version: str, step: int) -> str:
    """Version of the snapshot of generator ``version`` at ``step``."""
    return f"{version}-step{step:05d}"


REWARD_NAMES = ("aesthetic", "relevance", "preference")
MIN_SNR_GAMMA = 5.0  # min-SNR loss weighting, as stage 1's default
GUARD_SEED_KEY = "stage2-guard"  # held-out checks use seed_for(item, segment, this): same covers every check


class RelevanceCollapse(RuntimeError):
    """Held-out relevance fell more than the configured share below its step-0 value: the run failed."""

    def __init__(self, step: int, baseline: float, value: float, threshold: float) -> None:
        drop = (baseline - value) / max(abs(baseline), 1e-8)
        super().__init__(
            f"stage 2 stopped at step {step}: held-out relevance {value:.4f} is {drop:.1%} below its "
            f"step-0 value {baseline:.4f} (limit {threshold:.0%}); no generator was saved"
        )
        self.step, self.baseline, self.value, self.drop = step, baseline, value, drop
        self.result: Stage2Result | None = None  # the stopped run (curves), set by the trainer


# ----------------------------------------------------------------------------- rewards
@dataclass
class Rewards:
    """The three standardized reward fns (``fn(images, prompts, metadata) -> (rewards, info)``)."""

    aesthetic: RewardFn
    relevance: RewardFn
    preference: RewardFn

    def score(
        self, images: np.ndarray, titles: Sequence[str], segment_ids: Sequence[int] | np.ndarray
    ) -> dict[str, dict[str, np.ndarray]]:
        """Each reward of covers ``[B, H, W, 3]``: {name: {"standardized": [B], "raw": [B]}}."""
        metadata = [{"segment_id": int(s)} for s in segment_ids]
        out = {}
        for name in REWARD_NAMES:
            standardized, info = getattr(self, name)(images, list(titles), metadata)
            out[name] = {"standardized": np.asarray(standardized, np.float32), "raw": np.asarray(info["raw"])}
        return out


def load_rewards(store: ObjectStore, version: str, centroids: dict[int, np.ndarray]) -> Rewards:
    """The saved rewards of ``version`` (the rewards stage saves version = ds), standardized."""
    return Rewards(
        aesthetic=load_aesthetic_reward_fn(store, version),
        relevance=load_relevance_reward_fn(store, version),
        preference=load_preference_reward_fn(store, version, centroids=centroids),
    )


def combine_rewards(standardized: dict[str, np.ndarray], weights: RewardWeights) -> np.ndarray:
    """``R = w_a*aesthetic + w_r*relevance + w_p*preference`` over standardized rewards ``[B]`` each."""
    total: np.ndarray = np.zeros_like(standardized[REWARD_NAMES[0]], dtype=np.float32)
    for name in REWARD_NAMES:
        total = total + np.float32(getattr(weights, name)) * standardized[name]
    return total


def pair_weights(rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """Loss weights ``softmax(R / beta)`` within each pair: rewards ``[P, K]`` -> weights ``[P, K]``, rows sum to 1."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return torch.softmax(rewards.float() / beta, dim=1)


def candidate_weights(rewards: np.ndarray, beta: float, weighting: str) -> torch.Tensor:
    """Loss weights ``[P*K]`` of candidates with combined rewards ``[P, K]``.

    ``softmax(R / beta)`` within each pair. ``weighting="centered"`` subtracts 1/K (the weights then
    sum to 0 per pair): the loss pulls toward the pair's better candidates and away from its worse
    ones, and no longer toward the model's own average sample. With plain softmax weights that
    average pull is most of the gradient, and self-training on unguided candidates drifts every
    segment the same way.
    """
    weights = pair_weights(torch.from_numpy(rewards), beta)
    if weighting == "centered":
        weights = weights - 1.0 / rewards.shape[1]
    return weights.reshape(-1)


def preference_matrix(
    preference: RewardFn, images: np.ndarray, titles: Sequence[str], segment_ids: np.ndarray, advantage: str
) -> np.ndarray:
    """Standardized preference of every segment for every image: ``[S, B]``.

    ``advantage="segment_relative"`` subtracts, per image, the mean over all segments: what is left
    is how much more a segment likes the cover than segments do on average. A look every segment
    likes (or that the click model over-rates for everyone) then pulls no segment, and the weights
    move each segment in its own direction instead of all in one shared one.
    """
    n_segments, n_images = len(segment_ids), len(images)
    metadata = [{"segment_id": int(s)} for s in segment_ids for _ in range(n_images)]
    every, _ = preference(np.concatenate([images] * n_segments), list(titles) * n_segments, metadata)
    every = np.asarray(every, np.float32).reshape(n_segments, n_images)
    if advantage == "segment_relative":
        every = every - every.mean(axis=0)
    return every


# ----------------------------------------------------------------------------- data
@dataclass
class Stage2Data:
    """What stage 2 reads: items' cached features, reference latents, and the segments.

    Attributes:
        titles: per training item, length I.
        features: ``[I, N, d]`` cached meta-token features of the training items.
        ref_mean, ref_std: ``[I, 4, h, w]`` scaled VAE posterior of their reference covers.
        guard_titles: per guard (held-out) item, length G.
        guard_item_ids: their ids (the guard seeds depend on them).
        guard_features: ``[G, N, d]``.
        segment_ids: ``[S]`` segment ids; centroids ``[S, D]`` in that order.
        logged: the training items' logged covers (None = no off-policy candidates).
    """

    titles: list[str]
    features: torch.Tensor
    ref_mean: torch.Tensor
    ref_std: torch.Tensor
    guard_titles: list[str]
    guard_item_ids: list[str]
    guard_features: torch.Tensor
    segment_ids: np.ndarray
    centroids: torch.Tensor
    logged: LoggedCovers | None = None


@dataclass
class LoggedCovers:
    """The training items' logged covers: the off-policy candidates of stage 2.

    Attributes:
        images: uint8 ``[C, H, W, 3]``, every training item's reference followed by its logged variants.
        item: ``[C]`` int64, index of each cover's item in :class:`Stage2Data` ``titles``.
        mean, std: ``[C, 4, h, w]`` scaled VAE posterior of each cover.
    """

    images: np.ndarray
    item: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


# ----------------------------------------------------------------------------- trainer
@dataclass
class Stage2Result:
    """What a stage-2 run did."""

    steps: int  # optimizer steps reached
    resumed_from: int  # step the run started at
    seconds: dict[str, float]  # sample / score / update / guard / total wall time of this run
    complete: bool  # reached cfg.steps without a collapse
    collapsed: bool  # the relevance guard stopped it
    curve: list[dict[str, float]] = field(default_factory=list)  # per-reward means of the candidates
    guard: list[dict[str, float]] = field(default_factory=list)  # held-out checks


class HeldoutGuard:
    """The reward-hacking guard: held-out items x every segment, generated with fixed seeds and scored.

    Args:
        data: the guard items (``guard_*``) and the segments.
        rewards: the standardized reward fns.
        max_relevance_drop: the relative fall of held-out relevance from the first check that stops training.
    """

    def __init__(self, data: Stage2Data, rewards: Rewards, max_relevance_drop: float) -> None:
        self.data, self.rewards, self.max_drop = data, rewards, max_relevance_drop
        n_items, n_segments = len(data.guard_titles), len(data.segment_ids)
        self.items = torch.arange(n_items).repeat_interleave(n_segments)
        self.segments = torch.arange(n_segments).repeat(n_items)
        self.seeds = [
            seed_for(data.guard_item_ids[i], int(data.segment_ids[s]), GUARD_SEED_KEY)
            for i, s in zip(self.items.tolist(), self.segments.tolist(), strict=True)
        ]

    @torch.no_grad()
    def check(
        self, step: int, generate: Callable[[torch.Tensor, torch.Tensor, list[int]], np.ndarray]
    ) -> dict:
        """Generate the guard covers with ``generate(features, users, seeds)`` and score them."""
        data = self.data
        images = generate(data.guard_features[self.items], data.centroids[self.segments], self.seeds)
        titles = [data.guard_titles[i] for i in self.items.tolist()]
        scores = self.rewards.score(images, titles, data.segment_ids[self.segments.numpy()])
        point = {"step": step, "composition": float(composition_score(images).mean())}
        point |= {f"{n}_raw": float(scores[n]["raw"].mean()) for n in REWARD_NAMES}
        point |= {f"{n}_z": float(scores[n]["standardized"].mean()) for n in REWARD_NAMES}
        return point

    def collapse(self, first: dict[str, float], point: dict[str, float]) -> RelevanceCollapse | None:
        """The collapse ``point`` shows against the ``first`` check (its drop is recorded in ``point``), if any."""
        baseline = first["relevance_raw"]
        drop = (baseline - point["relevance_raw"]) / max(abs(baseline), 1e-8)
        point["relevance_drop"] = round(drop, 5)
        if drop <= self.max_drop:
            return None
        return RelevanceCollapse(int(point["step"]), baseline, point["relevance_raw"], self.max_drop)


def score_logged_covers(
    rewards: Rewards, data: Stage2Data, weights: RewardWeights, advantage: str
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Combined R of every logged cover for every segment ``[C, S]`` (they never change: scored once),
    and each item's cover rows."""
    logged = data.logged
    assert logged is not None
    titles = [data.titles[i] for i in logged.item.tolist()]
    scores = rewards.score(logged.images, titles, np.full(len(titles), data.segment_ids[0]))
    preference = preference_matrix(rewards.preference, logged.images, titles, data.segment_ids, advantage)
    per_segment = [
        combine_rewards(
            {
                "aesthetic": scores["aesthetic"]["standardized"],
                "relevance": scores["relevance"]["standardized"],
                "preference": preference[s],
            },
            weights,
        )
        for s in range(len(data.segment_ids))
    ]
    covers_of = [np.flatnonzero(logged.item.numpy() == i) for i in range(len(data.titles))]
    return np.stack(per_segment, axis=1), covers_of


@dataclass
class Candidates:
    """One step's on-policy candidates: ``pairs`` x K sampled covers, their latents and loss weights."""

    items: torch.Tensor  # [P*K] training item of each candidate
    segments: torch.Tensor  # [P*K] segment index of each candidate
    mean: torch.Tensor  # [P*K, 4, h, w] VAE posterior of each cover
    std: torch.Tensor
    scores: dict[str, dict[str, np.ndarray]]  # Rewards.score of the covers
    standardized: dict[str, np.ndarray]  # what R combines ([P*K] each; preference as the weighting sees it)
    rewards: np.ndarray  # [P, K] combined R
    weights: torch.Tensor  # [P*K] loss weights
    pair: torch.Tensor | None  # [P*K] pair of each candidate when pairs share noise (centered weights)


class Stage2Trainer:
    """The stage-2 loop over a bundle, its data and rewards; resumable through the object store.

    Args:
        bundle: the generator to fine-tune (refiner and adapter train, everything else frozen).
        data: see :class:`Stage2Data`.
        rewards: the standardized reward fns.
        cfg: the finetune section.
        weights: reward weights.
        guidance_scale, scheduler: sampling settings of the held-out checks (``models`` section).
        store: where resumable states go; None = no states.
        version: the run's identity (the generator version it will produce).
        state_name: checkpoint name of the resumable states.
    """

    def __init__(
        self,
        bundle: ICGBundle,
        data: Stage2Data,
        rewards: Rewards,
        cfg: FinetuneConfig,
        weights: RewardWeights,
        *,
        guidance_scale: float = 3.0,
        scheduler: str = "ddim",
        store: ObjectStore | None = None,
        version: str = "run",
        state_name: str = "icg_generator" + STATE_SUFFIX,
    ) -> None:
        self.bundle, self.data, self.rewards, self.cfg, self.weights = bundle, data, rewards, cfg, weights
        self.guidance_scale, self.sampler = guidance_scale, scheduler
        self.store, self.version, self.state_name = store, version, state_name
        groups = [{"params": list(bundle.refiner.parameters()), "lr": cfg.lr, "base_lr": cfg.lr}]
        if cfg.train_adapter:
            groups.append(
                {"params": list(bundle.adapter.parameters()), "lr": cfg.adapter_lr, "base_lr": cfg.adapter_lr}
            )
        self.optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.denoiser = Denoiser(bundle, self.generator, MIN_SNR_GAMMA)
        self.guard_check = HeldoutGuard(data, rewards, cfg.max_relevance_drop)
        self.step = 0
        self.curve: list[dict[str, float]] = []
        self.guard: list[dict[str, float]] = []
        self.timing = {"sample": 0.0, "score": 0.0, "update": 0.0, "guard": 0.0}
        self._window: list[dict[str, float]] = []
        self.logged_rewards: np.ndarray | None = None
        self.logged_covers_of: list[np.ndarray] = []
        if data.logged is not None and cfg.logged_pairs_per_step > 0:
            self.logged_rewards, self.logged_covers_of = score_logged_covers(
                rewards, data, weights, cfg.preference_advantage
            )
        # Items with enough logged covers to fill a pair (the only ones the logged term draws).
        self.logged_items = [
            i for i, rows in enumerate(self.logged_covers_of) if len(rows) >= cfg.logged_candidates
        ]

    def trainable_params(self) -> list[torch.nn.Parameter]:
        params = list(self.bundle.refiner.parameters())
        return params + (list(self.bundle.adapter.parameters()) if self.cfg.train_adapter else [])

    # ------------------------------------------------------------------ state
    def save_state(self) -> None:
        """Write the resumable state (weights, optimizer, step, generator, curves) and a weights snapshot."""
        if self.store is None:
            return
        tensors, groups = flatten_optimizer(self.optimizer.state_dict())
        modules: dict[str, torch.nn.Module | Mapping[str, torch.Tensor]] = {
            "refiner": self.bundle.refiner,
            "adapter": self.bundle.adapter,
            "optimizer": tensors,
            "rng": {"generator": self.generator.get_state()},
        }
        config = {"step": self.step, "param_groups": groups, "curve": self.curve, "guard": self.guard}
        save_module_checkpoint(self.store, self.state_name, self.version, modules, config, set_latest=False)
        save_module_checkpoint(
            self.store,
            self.state_name.removesuffix(STATE_SUFFIX) + SNAPSHOT_SUFFIX,
            snapshot_version(self.version, self.step),
            {"refiner": self.bundle.refiner, "adapter": self.bundle.adapter},
            {"step": self.step},
            set_latest=False,
        )

    def load_state(self) -> bool:
        """Continue from a saved state of this version, if one exists. Returns whether it did."""
        if self.store is None or not checkpoint_exists(self.store, self.state_name, self.version):
            return False
        states, config = load_module_checkpoint(self.store, self.state_name, self.version)
        self.bundle.refiner.load_state_dict(states["refiner"])
        self.bundle.adapter.load_state_dict(states["adapter"])
        self.optimizer.load_state_dict(unflatten_optimizer(states["optimizer"], config["param_groups"]))
        self.generator.set_state(states["rng"]["generator"])
        self.step, self.curve, self.guard = int(config["step"]), list(config["curve"]), list(config["guard"])
        log.info("stage=finetune resumed version=%s step=%d", self.version, self.step)
        return True

    # ------------------------------------------------------------------ pieces of a step
    def _train_mode(self, training: bool) -> None:
        self.bundle.refiner.train(training)
        self.bundle.adapter.train(training and self.cfg.train_adapter)
        self.bundle.covers.unet.requires_grad_(False)
        self.bundle.adapter.requires_grad_(self.cfg.train_adapter)

    def _generate(
        self, features: torch.Tensor, users: torch.Tensor, seeds: Sequence[int], guidance_scale: float
    ) -> np.ndarray:
        was_training = self.bundle.refiner.training
        self.bundle.refiner.eval()
        self.bundle.adapter.eval()
        try:
            return self.bundle.generate(
                features, list(seeds), users=users, steps=self.cfg.sample_steps,
                guidance_scale=guidance_scale, scheduler=self.sampler, batch_size=64,
            )  # fmt: skip
        finally:
            self._train_mode(was_training)

    def reward_loss(
        self,
        features: torch.Tensor,
        users: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        pair: torch.Tensor | None,
    ) -> torch.Tensor:
        """Per-candidate loss ``[B]`` the reward weights apply to: the clean-latent error at high noise
        (``reward_x0_from``, where a cover's look is decided), or the min-SNR denoising loss."""
        cfg = self.cfg
        if cfg.reward_x0_from is None:
            return self.denoiser.loss(features, users, None, mean, std, groups=pair)
        return self.denoiser.clean_latent_loss(
            features, users, mean, std, x0_from=cfg.reward_x0_from, pool=cfg.reward_x0_pool, groups=pair
        )

    def regularization_loss(self) -> torch.Tensor:
        """The stage-1 term: reference covers of training items with the null user, a segment centroid
        or a random user. Centroid rows matter most: the segments' path is the one the rewards move, and
        without them it drifts to a degenerate conditioning that guidance turns into the same
        saturated texture for every item. Rows with a user pin only the cover's detail
        (``reg_detail_pool``): the motif stays the item's, while its global look is left to the
        rewards -- with the whole latent pinned, this term and the preference reward pull the same
        coarse latents in opposite directions."""
        g, data, cfg = self.generator, self.data, self.cfg
        rows = torch.randint(0, len(data.titles), (cfg.reg_batch_size,), generator=g)
        users = torch.randn(len(rows), data.centroids.shape[1], generator=g)
        kind = torch.rand(len(rows), generator=g)
        centroid_rows = kind < cfg.reg_segment_fraction
        picked = torch.randint(0, len(data.segment_ids), (len(rows),), generator=g)
        users[centroid_rows] = data.centroids[picked[centroid_rows]]
        mask = kind < cfg.reg_segment_fraction + cfg.reg_random_user_fraction
        return self.denoiser.loss(
            data.features[rows], users, mask, data.ref_mean[rows], data.ref_std[rows],
            detail_rows=mask, detail_pool=cfg.reg_detail_pool,
        ).mean()  # fmt: skip

    def logged_loss(self) -> torch.Tensor:
        """The off-policy RWR term: pairs whose K candidates are the item's logged covers."""
        cfg, g, data, logged = self.cfg, self.generator, self.data, self.data.logged
        eligible = self.logged_items
        if logged is None or self.logged_rewards is None or not eligible:
            return torch.zeros(())
        pairs, k = cfg.logged_pairs_per_step, cfg.logged_candidates
        items = torch.tensor(eligible)[torch.randint(0, len(eligible), (pairs,), generator=g)]
        segments = torch.randint(0, len(data.segment_ids), (pairs,), generator=g)
        picks = [
            self.logged_covers_of[i][torch.randperm(len(self.logged_covers_of[i]), generator=g)[:k].numpy()]
            for i in items.tolist()
        ]
        covers = torch.from_numpy(np.concatenate(picks))
        segments = segments.repeat_interleave(k)
        rewards = self.logged_rewards[covers.numpy(), segments.numpy()].reshape(pairs, k)
        weights = candidate_weights(rewards, cfg.beta, cfg.weighting)
        pair = torch.arange(pairs).repeat_interleave(k) if cfg.weighting == "centered" else None
        per_row = self.reward_loss(
            data.features[items.repeat_interleave(k)], data.centroids[segments], logged.mean[covers],
            logged.std[covers], pair,
        )  # fmt: skip
        return (weights.to(per_row.device) * per_row).sum() / pairs

    def sample_candidates(self) -> Candidates:
        """Draw (item, segment) pairs, sample K covers each from the current model, score and weight them."""
        cfg, g, data = self.cfg, self.generator, self.data
        pairs, k = cfg.pairs_per_step, cfg.candidates
        items = torch.randint(0, len(data.titles), (pairs,), generator=g).repeat_interleave(k)
        segments = torch.randint(0, len(data.segment_ids), (pairs,), generator=g).repeat_interleave(k)
        seeds = torch.randint(0, 2**62, (pairs * k,), generator=g).tolist()
        started = time.perf_counter()
        # Candidates come from the conditional model itself (guidance off by default): training the
        # conditional branch on guided samples and sampling them with guidance again compounds the
        # guidance every step (every cover turns into one saturated texture within 20 steps).
        images = self._generate(
            data.features[items], data.centroids[segments], seeds, cfg.candidate_guidance_scale
        )
        mean, std = encode_latents(self.bundle.covers, images)
        sampled = time.perf_counter()
        titles = [data.titles[i] for i in items.tolist()]
        scores = self.rewards.score(images, titles, data.segment_ids[segments.numpy()])
        standardized = {n: s["standardized"] for n, s in scores.items()}
        preference = preference_matrix(
            self.rewards.preference, images, titles, data.segment_ids, cfg.preference_advantage
        )
        standardized["preference"] = preference[segments.numpy(), np.arange(len(images))]
        rewards = combine_rewards(standardized, self.weights).reshape(-1, k)
        weights = candidate_weights(rewards, cfg.beta, cfg.weighting)
        # Rows of one pair share noise and timestep when the weights are centered: their weighted sum
        # is then a comparison of the candidates, not mostly noise.
        pair = torch.arange(pairs).repeat_interleave(k) if cfg.weighting == "centered" else None
        self.timing["sample"] += sampled - started
        self.timing["score"] += time.perf_counter() - sampled
        return Candidates(items, segments, mean, std, scores, standardized, rewards, weights, pair)

    def train_step(self) -> dict[str, float]:
        """One step: sample, score, weight, then a few updates. Returns the step's reward means and losses."""
        cfg, data = self.cfg, self.data
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(self.step, cfg.steps, cfg.warmup_steps)
        c = self.sample_candidates()
        started = time.perf_counter()
        losses = []
        for _ in range(cfg.updates_per_batch):  # sampling dominates the cost: each batch serves a few updates
            reward_loss = torch.zeros(())
            for _ in range(cfg.noise_draws):
                per_row = self.reward_loss(
                    data.features[c.items], data.centroids[c.segments], c.mean, c.std, c.pair
                )
                reward_loss = reward_loss + (c.weights.to(per_row.device) * per_row).sum() / (
                    cfg.pairs_per_step * cfg.noise_draws
                )
            logged_loss = self.logged_loss()
            reg_loss = self.regularization_loss() if cfg.reg_weight > 0 else torch.zeros(())
            loss = reward_loss + logged_loss + cfg.reg_weight * reg_loss
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.trainable_params(), 1.0)
            self.optimizer.step()
            losses.append((reward_loss.item(), logged_loss.item(), reg_loss.item()))
        self.step += 1
        self.timing["update"] += time.perf_counter() - started
        return self._step_point(c, np.asarray(losses))

    def _step_point(self, c: Candidates, losses: np.ndarray) -> dict[str, float]:
        """The step's curve point: reward means, their spread within pairs, losses, weight entropy."""
        pairs, k = c.rewards.shape
        softmax = pair_weights(torch.from_numpy(c.rewards), self.cfg.beta)
        entropy = -(softmax * softmax.clamp_min(1e-12).log()).sum(1).mean()
        point = {f"{n}_raw": float(c.scores[n]["raw"].mean()) for n in REWARD_NAMES}
        point |= {f"{n}_z": float(c.scores[n]["standardized"].mean()) for n in REWARD_NAMES}
        # How much each reward varies among a pair's candidates: what actually steers the weights.
        point |= {
            f"{n}_spread": float(c.standardized[n].reshape(pairs, k).std(1).mean()) for n in REWARD_NAMES
        }
        # How far the segments' path has opened: the refiner's output map starts at 0.
        point["refiner_out"] = float(self.bundle.refiner.out.weight.detach().abs().mean())
        reward_loss, logged_loss, reg_loss = losses.mean(axis=0)
        return point | {
            "reward": float(c.rewards.mean()),
            "reward_loss": float(reward_loss),
            "logged_loss": float(logged_loss),
            "reg_loss": float(reg_loss),
            "weight_entropy": float(entropy) / float(np.log(k)) if k > 1 else 1.0,
        }

    def check_heldout(self) -> dict[str, float]:
        """Score held-out items x every segment with fixed seeds (the guard's measurements)."""
        started = time.perf_counter()
        point = self.guard_check.check(
            self.step, lambda f, u, seeds: self._generate(f, u, seeds, self.guidance_scale)
        )
        self.timing["guard"] += time.perf_counter() - started
        return point

    # ------------------------------------------------------------------ the loop
    def run(self, stop_after: int | None = None) -> Stage2Result:
        """Train from the saved state (if any) to ``cfg.steps``, or stop after ``stop_after`` steps.

        Raises:
            RelevanceCollapse: held-out relevance fell past ``max_relevance_drop`` (state is kept).
        """
        if self.step == 0:
            self.load_state()
        resumed_from = self.step
        target = self.cfg.steps if stop_after is None else min(self.cfg.steps, stop_after)
        started = time.perf_counter()
        if not self.guard:
            self.guard.append(self.check_heldout())
        collapse: RelevanceCollapse | None = None
        self._train_mode(True)
        try:
            progress = Progress("stage=finetune", target, "steps", initial=self.step)
            while self.step < target and collapse is None:
                self._window.append(self.train_step())
                progress.add(1)
                if self.step % self.cfg.log_every == 0 or self.step == target:
                    self._log_point(started)
                if self.step % self.cfg.guard_every == 0 or self.step == self.cfg.steps:
                    point = self.check_heldout()
                    collapse = self.guard_check.collapse(self.guard[0], point)
                    self.guard.append(point)
                    log.info("stage=finetune step=%d held-out %s", self.step, json.dumps(point))
                if collapse is None and self.step % self.cfg.checkpoint_every == 0 and self.step < target:
                    self.save_state()
            progress.finish()
        finally:
            self._train_mode(False)
        self.save_state()
        seconds = {k: round(v, 2) for k, v in self.timing.items()} | {
            "total": round(time.perf_counter() - started, 2)
        }
        complete = collapse is None and self.step >= self.cfg.steps
        result = Stage2Result(self.step, resumed_from, seconds, complete, collapse is not None,
                              list(self.curve), list(self.guard))  # fmt: skip
        log.info("stage=finetune version=%s steps=%d (from %d) seconds=%s",
                 self.version, self.step, resumed_from, seconds)  # fmt: skip
        if collapse is not None:
            collapse.result = result
            raise collapse
        return result

    def _log_point(self, started: float) -> None:
        if not self._window:
            return
        keys = self._window[0].keys()
        point = {k: round(float(np.mean([w[k] for w in self._window])), 5) for k in keys}
        point |= {"step": self.step, "lr": self.optimizer.param_groups[0]["lr"]}
        point["seconds"] = round(time.perf_counter() - started, 2)
        self.curve.append(point)
        self._window = []
