"""Stage 1, alignment pretraining (docs/architecture.md, "The method"): the plain denoising loss, no labels.

Meta tokens (through the frozen VLM, forward and backward every step), refiner and adapter learn to
make the UNet reproduce each training item's covers (reference and logged variants) from the item's
features. Each row gets the null user or, with ``random_user_fraction``, a random normal user
embedding, so the refiner learns to pass content through whatever user it is given; a share
``cond_dropout`` of rows trains the adapter's null conditioning for classifier-free guidance.
With ``train_unet`` the UNet trains in the same loop (the embedded world has no pretrained UNet);
in production it stays frozen and only our modules learn.

The loss follows the scheduler's ``prediction_type`` (epsilon or v), weighted by min-SNR.

Training is resumable: every ``checkpoint_every`` steps the weights, the optimizer state, the step,
the loss curve and the data/noise generator's state are saved as the module checkpoint
``models/<state_name>/<version>/`` (``_latest`` untouched), and a rerun continues from there. N
steps in one run and N/2 + N/2 across a restart give the same weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from icg_core.config import Stage1Config
from icg_core.models.bundle import ICGBundle
from icg_core.models.checkpoint import checkpoint_exists, load_module_checkpoint, save_module_checkpoint
from icg_core.models.generator import CoverGenerator
from icg_core.progress import Progress
from icg_core.storage import ObjectStore
from icg_core.training.base import images_to_tensor, lr_factor
from icg_core.training.diffusion import Denoiser, flatten_optimizer, unflatten_optimizer

log = logging.getLogger(__name__)

STATE_SUFFIX = "-stage1-state"


@dataclass
class Stage1Data:
    """Training rows: each cover's item and VAE posterior, and each item's title and reference.

    Attributes:
        titles: per item, length I.
        references: per item uint8 ``[S, S, 3]`` reference images (what the encoder reads).
        cover_item: int64 ``[C]`` item index of each cover.
        latent_mean, latent_std: ``[C, 4, h, w]`` scaled VAE posterior of each cover.
    """

    titles: list[str]
    references: list[np.ndarray]
    cover_item: torch.Tensor
    latent_mean: torch.Tensor
    latent_std: torch.Tensor

    def __len__(self) -> int:
        return int(self.cover_item.shape[0])


@torch.no_grad()
def encode_latents(
    covers: CoverGenerator, images: np.ndarray, batch_size: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled VAE posterior (mean, std) of uint8 images ``[C, S, S, 3]``, each ``[C, 4, h, w]``, on CPU.

    The VAE is frozen during stage 1, so covers are encoded once and each step draws a fresh
    latent sample from the stored posterior (what ``CoverGenerator.encode`` would draw).
    """
    scale = float(covers.vae.config.scaling_factor)
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        x = images_to_tensor(images[start : start + batch_size]).to(covers.device, covers.vae.dtype)
        dist = covers.vae.encode(x).latent_dist
        means.append(dist.mean.float().cpu() * scale)
        stds.append(dist.std.float().cpu() * scale)
    return torch.cat(means), torch.cat(stds)


def make_stage1_data(
    bundle: ICGBundle,
    titles: Sequence[str],
    references: np.ndarray,
    covers: np.ndarray,
    cover_item: np.ndarray,
) -> Stage1Data:
    """Encode the covers once with the (frozen) VAE and pack the training rows."""
    mean, std = encode_latents(bundle.covers, covers)
    return Stage1Data(
        titles=list(titles),
        references=list(references),
        cover_item=torch.as_tensor(cover_item, dtype=torch.long),
        latent_mean=mean,
        latent_std=std,
    )


@dataclass
class Stage1Result:
    """What a stage-1 run did."""

    steps: int  # optimizer steps reached (cfg.steps when complete)
    resumed_from: int  # step the run started at (0 = fresh)
    seconds: float  # wall time of this run
    final_loss: float  # mean loss over the last logged window
    complete: bool  # reached cfg.steps (False when stopped early by stop_after)
    curve: list[dict[str, float]] = field(default_factory=list)  # {"step", "loss", "lr", "seconds"}


class Stage1Trainer:
    """The stage-1 loop over a bundle and its data, resumable through the object store.

    Args:
        bundle: the modules to train (encoder meta tokens, refiner, adapter; UNet if ``train_unet``).
        data: training rows (training items only).
        cfg: stage-1 settings.
        store: where resumable states go; None = no states (tests, throwaway runs).
        version: the run's identity (the generator version it will produce); states are saved as
            ``models/<state_name>/<version>/``.
        state_name: checkpoint name of the resumable states.
    """

    def __init__(
        self,
        bundle: ICGBundle,
        data: Stage1Data,
        cfg: Stage1Config,
        *,
        store: ObjectStore | None = None,
        version: str = "run",
        state_name: str = "icg_generator" + STATE_SUFFIX,
    ) -> None:
        self.bundle, self.data, self.cfg = bundle, data, cfg
        self.store, self.version, self.state_name = store, version, state_name
        self.unet = bundle.covers.unet
        groups = [{"params": self._conditioning_params(), "lr": cfg.lr, "base_lr": cfg.lr}]
        if cfg.train_unet:
            groups.append({"params": list(self.unet.parameters()), "lr": cfg.unet_lr, "base_lr": cfg.unet_lr})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.denoiser = Denoiser(bundle, self.generator, cfg.min_snr_gamma)
        self.step = 0
        self.curve: list[dict[str, float]] = []
        self._window: list[float] = []

    def _conditioning_params(self) -> list[torch.nn.Parameter]:
        encoder = [p for p in self.bundle.encoder.parameters() if p.requires_grad]
        return encoder + list(self.bundle.refiner.parameters()) + list(self.bundle.adapter.parameters())

    # ------------------------------------------------------------------ state
    def _modules(self) -> dict[str, Any]:
        modules: dict[str, Any] = {
            "meta_tokens": self.bundle.encoder.trainable_state_dict(),
            "refiner": self.bundle.refiner,
            "adapter": self.bundle.adapter,
        }
        if self.cfg.train_unet:
            modules["unet"] = self.unet
        return modules

    def save_state(self) -> None:
        """Write the resumable state (weights, optimizer, step, generator, curve)."""
        if self.store is None:
            return
        tensors, groups = flatten_optimizer(self.optimizer.state_dict())
        modules = {
            **self._modules(),
            "optimizer": tensors,
            "rng": {"generator": self.generator.get_state()},
        }
        config = {
            "step": self.step,
            "param_groups": groups,
            "curve": self.curve,
            "stage1": self.cfg.model_dump(),
        }
        save_module_checkpoint(self.store, self.state_name, self.version, modules, config, set_latest=False)

    def load_state(self) -> bool:
        """Continue from a saved state of this version, if one exists. Returns whether it did."""
        if self.store is None or not checkpoint_exists(self.store, self.state_name, self.version):
            return False
        states, config = load_module_checkpoint(self.store, self.state_name, self.version)
        self.bundle.encoder.load_trainable_state_dict(states["meta_tokens"])
        self.bundle.refiner.load_state_dict(states["refiner"])
        self.bundle.adapter.load_state_dict(states["adapter"])
        if self.cfg.train_unet:
            self.unet.load_state_dict(states["unet"])
        self.optimizer.load_state_dict(unflatten_optimizer(states["optimizer"], config["param_groups"]))
        self.generator.set_state(states["rng"]["generator"])
        self.step = int(config["step"])
        self.curve = list(config["curve"])
        log.info("stage=stage1 resumed version=%s step=%d", self.version, self.step)
        return True

    # ------------------------------------------------------------------ one step
    def _train_mode(self, training: bool) -> None:
        self.bundle.encoder.train(training)
        self.bundle.refiner.train(training)
        self.bundle.adapter.train(training)
        self.unet.requires_grad_(training and self.cfg.train_unet)
        self.unet.train(training and self.cfg.train_unet)

    def loss(self, rows: torch.Tensor) -> torch.Tensor:
        """Denoising loss of the covers ``rows`` (indices into the data), drawing from the generator."""
        g, cfg, device = self.generator, self.cfg, self.bundle.covers.device
        size = len(rows)
        items, inverse = torch.unique(self.data.cover_item[rows], return_inverse=True)
        features = self.bundle.encoder(
            [self.data.titles[i] for i in items.tolist()], [self.data.references[i] for i in items.tolist()]
        )[inverse]
        users = torch.randn(size, self.bundle.refiner.config.user_dim, generator=g)
        user_mask = torch.rand(size, generator=g) < cfg.random_user_fraction
        drop = torch.rand(size, generator=g) < cfg.cond_dropout
        cond = self.bundle.conditioning(features, users.to(device), user_mask.to(device))
        cond = self.bundle.adapter.drop_to_null(cond, drop.to(device))
        # Condition dropout (the null path guidance needs) is stage 1's own: the conditioning is built
        # here, and the shared denoiser draws the example and weights the error.
        latents, noise, timesteps = self.denoiser.draw(
            self.data.latent_mean[rows], self.data.latent_std[rows]
        )
        noisy = self.denoiser.scheduler.add_noise(latents, noise, timesteps)
        prediction = self.denoiser.unet_prediction(cond, noisy, timesteps)
        target = self.denoiser.target(latents, noise, timesteps)
        per_row = (prediction - target.to(device)).pow(2).mean(dim=(1, 2, 3))
        return (per_row * self.denoiser.snr_weight(timesteps).to(device)).mean()

    def train_step(self) -> float:
        """One optimizer step on a uniformly drawn batch of covers. Returns its loss."""
        factor = lr_factor(self.step, self.cfg.steps, self.cfg.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        rows = torch.randint(0, len(self.data), (self.cfg.batch_size,), generator=self.generator)
        loss = self.loss(rows)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
        self.optimizer.step()
        self.step += 1
        return loss.item()

    # ------------------------------------------------------------------ the loop
    def run(self, stop_after: int | None = None) -> Stage1Result:
        """Train from the saved state (if any) to ``cfg.steps``, or stop early after ``stop_after`` steps.

        The learning-rate schedule always spans ``cfg.steps``, so stopping and resuming changes nothing.
        """
        if self.step == 0:
            self.load_state()
        resumed_from = self.step
        target = self.cfg.steps if stop_after is None else min(self.cfg.steps, stop_after)
        started = time.perf_counter()
        self._train_mode(True)
        try:
            progress = Progress("stage=stage1", target, "steps", initial=self.step)
            while self.step < target:
                self._window.append(self.train_step())
                progress.add(1)
                if self.step % self.cfg.log_every == 0 or self.step == target:
                    self._log_point(started)
                if self.step % self.cfg.checkpoint_every == 0 and self.step < target:
                    self.save_state()
                    log.info(
                        "stage=stage1 step=%d/%d loss=%.4f seconds=%.0f",
                        self.step,
                        self.cfg.steps,
                        self.curve[-1]["loss"] if self.curve else float("nan"),
                        time.perf_counter() - started,
                    )
            progress.finish()
        finally:
            self._train_mode(False)
        self.save_state()
        final = self.curve[-1]["loss"] if self.curve else float("nan")
        result = Stage1Result(
            steps=self.step,
            resumed_from=resumed_from,
            seconds=round(time.perf_counter() - started, 2),
            final_loss=final,
            complete=self.step >= self.cfg.steps,
            curve=list(self.curve),
        )
        log.info(
            "stage=stage1 version=%s steps=%d (from %d) seconds=%.1f loss=%.4f",
            self.version,
            result.steps,
            resumed_from,
            result.seconds,
            final,
        )
        return result

    def _log_point(self, started: float) -> None:
        if not self._window:
            return
        self.curve.append(
            {
                "step": self.step,
                "loss": round(float(np.mean(self._window)), 6),
                "lr": self.optimizer.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        self._window = []
