"""The diffusion math both training stages share: noise, timesteps, the denoising error and its weights.

:class:`Denoiser` is the frozen UNet under a bundle's conditioning. It draws a training example from
a cover's VAE posterior (latents, noise, timestep: always in that order from one generator, so a run
is reproducible from its seed) and measures one of two errors:

- :meth:`Denoiser.loss`: the standard objective (epsilon or v), min-SNR weighted; optionally only the
  error's detail counts on some rows (:func:`detail_of`);
- :meth:`Denoiser.clean_latent_loss`: the error of the clean latents the prediction implies, at
  high-noise timesteps, where a cover's global look is decided.
"""

from __future__ import annotations

from typing import Any

import torch

from icg_core.models.bundle import ICGBundle
from icg_core.models.conditioning import Conditioning


def min_snr_weight(
    alphas: torch.Tensor, timesteps: torch.Tensor, prediction_type: str, gamma: float
) -> torch.Tensor:
    """min-SNR-gamma weights of ``timesteps`` ``[B]`` (Hang et al. 2023): no timestep dominates the loss."""
    alpha = alphas[timesteps]
    snr = alpha / (1 - alpha)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)


def detail_of(latents: torch.Tensor, pool: int) -> torch.Tensor:
    """``latents`` ``[B, C, h, w]`` minus their means over ``pool`` x ``pool`` blocks: the detail, not the look.

    A pool larger than the latents is the whole latent (only the global mean is removed).
    """
    h, w = latents.shape[-2:]
    pool = min(pool, h, w)
    if h % pool or w % pool:
        raise ValueError(f"detail pool {pool} must divide the latent size {h}x{w}")
    coarse = torch.nn.functional.avg_pool2d(latents, pool)
    return latents - torch.nn.functional.interpolate(coarse, size=latents.shape[-2:], mode="nearest")


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """An optimizer state dict as (tensors keyed ``<param>.<name>``, JSON param groups): safetensors-friendly."""
    tensors = {}
    for param, values in state["state"].items():
        for name, value in values.items():
            tensors[f"{param}.{name}"] = torch.as_tensor(value)
    return tensors, state["param_groups"]


def unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The inverse of :func:`flatten_optimizer`."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        param, name = key.split(".", 1)
        state.setdefault(int(param), {})[name] = value
    return {"state": state, "param_groups": groups}


class Denoiser:
    """A bundle's frozen UNet under its trainable conditioning; draws examples from ``generator``.

    Args:
        bundle: the generator (its conditioning modules may be training).
        generator: the CPU random generator every draw comes from.
        min_snr_gamma: the loss weighting's gamma; 0 turns the weighting off.
    """

    def __init__(self, bundle: ICGBundle, generator: torch.Generator, min_snr_gamma: float) -> None:
        self.bundle, self.generator, self.gamma = bundle, generator, min_snr_gamma
        self.unet = bundle.covers.unet
        self.scheduler = bundle.covers.make_scheduler("ddim")
        self.prediction_type = self.scheduler.config.prediction_type
        self.alphas = self.scheduler.alphas_cumprod.to(torch.float32)

    def draw(
        self, mean: torch.Tensor, std: torch.Tensor, groups: torch.Tensor | None = None, low: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(latents, noise, timesteps in ``[low, T)``) for posteriors (mean, std) ``[B, 4, h, w]``.

        ``groups`` ``[B]`` (ids 0..G-1): rows of one group share their noise and timestep, so their
        losses differ only through their latents and conditioning (a low-variance comparison).
        """
        g = self.generator
        latents = mean + std * torch.randn(mean.shape, generator=g)
        if groups is None:
            noise = torch.randn(mean.shape, generator=g)
            timesteps = torch.randint(low, len(self.alphas), (len(mean),), generator=g)
        else:
            n_groups = int(groups.max()) + 1
            noise = torch.randn((n_groups, *mean.shape[1:]), generator=g)[groups]
            timesteps = torch.randint(low, len(self.alphas), (n_groups,), generator=g)[groups]
        return latents, noise, timesteps

    def predict(
        self,
        features: torch.Tensor,
        users: torch.Tensor | None,
        user_mask: torch.Tensor | None,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
    ) -> torch.Tensor:
        """The UNet's prediction ``[B, 4, h, w]`` (float32) for noisy latents under the items' conditioning."""
        device = self.bundle.covers.device
        cond = self.bundle.conditioning(
            features.to(device),
            None if users is None else users.to(device),
            None if user_mask is None else user_mask.to(device),
        )
        return self.unet_prediction(cond, noisy, timesteps)

    def unet_prediction(
        self, cond: Conditioning, noisy: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The UNet's prediction ``[B, 4, h, w]`` (float32) under a ready conditioning."""
        device, dtype = self.bundle.covers.device, self.bundle.covers.dtype
        kwargs = cond.to(dtype=dtype).unet_kwargs()
        output = self.unet(noisy.to(device, dtype), timesteps.to(device), return_dict=False, **kwargs)
        return output[0].float()

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(latents, noise, timesteps)

    def snr_weight(self, timesteps: torch.Tensor) -> torch.Tensor:
        if self.gamma <= 0:
            return torch.ones(len(timesteps))
        return min_snr_weight(self.alphas, timesteps, self.prediction_type, self.gamma)

    def clean_latents(
        self, noisy: torch.Tensor, prediction: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The clean latents ``[B, 4, h, w]`` a prediction implies (epsilon or v parameterization)."""
        alpha = self.alphas[timesteps].to(noisy.device).view(-1, 1, 1, 1)
        if self.prediction_type == "epsilon":
            return (noisy - (1 - alpha).sqrt() * prediction) / alpha.sqrt()
        return alpha.sqrt() * noisy - (1 - alpha).sqrt() * prediction

    def loss(
        self,
        features: torch.Tensor,
        users: torch.Tensor | None,
        user_mask: torch.Tensor | None,
        mean: torch.Tensor,
        std: torch.Tensor,
        *,
        groups: torch.Tensor | None = None,
        detail_rows: torch.Tensor | None = None,
        detail_pool: int = 1,
    ) -> torch.Tensor:
        """Per-row denoising loss ``[B]``, min-SNR weighted; on ``detail_rows`` only the error's detail."""
        device = self.bundle.covers.device
        latents, noise, timesteps = self.draw(mean, std, groups)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        prediction = self.predict(features, users, user_mask, noisy, timesteps)
        error = prediction - self.target(latents, noise, timesteps).to(device)
        if detail_rows is not None and detail_pool > 1:
            error = torch.where(
                detail_rows.to(device).view(-1, 1, 1, 1), detail_of(error, detail_pool), error
            )
        return error.pow(2).mean(dim=(1, 2, 3)) * self.snr_weight(timesteps).to(device)

    def clean_latent_loss(
        self,
        features: torch.Tensor,
        users: torch.Tensor | None,
        mean: torch.Tensor,
        std: torch.Tensor,
        *,
        x0_from: int,
        pool: int = 1,
        groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-row error ``[B]`` of the predicted clean latents at timesteps in ``[x0_from, T)``.

        At high noise the model's clean-latent prediction is its mean cover for the conditioning --
        where the global look (warmth, brightness, saturation, contrast) is decided -- while the
        min-SNR epsilon loss weights those timesteps' clean-latent error by SNR, almost not at all.
        ``pool`` > 1 compares coarse latents only: the look, not the motif's detail.
        """
        device = self.bundle.covers.device
        latents, noise, timesteps = self.draw(mean, std, groups, low=x0_from)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        prediction = self.predict(features, users, None, noisy, timesteps)
        error = self.clean_latents(noisy.to(device), prediction, timesteps) - latents.to(device)
        if pool > 1:
            error = torch.nn.functional.avg_pool2d(error, pool)
        return error.pow(2).mean(dim=(1, 2, 3))
