"""Cover sampling: a standard diffusers checkpoint (UNet + VAE + scheduler) driven by ICG conditioning.

The folder is the usual ``model_index.json`` layout (``unet/``, ``vae/``, ``scheduler/``), loaded
offline with each component's ``from_pretrained``. The denoising loop is written here over the UNet
and scheduler instead of going through ``StableDiffusionPipeline``: it is a dozen lines, takes our
conditioning directly, handles SD1.5- and SDXL-type UNets alike, and seeds every sample on its own
so a cover is reproducible whatever batch it was generated in.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from icg_core.models.conditioning import Conditioning

log = logging.getLogger(__name__)

SchedulerName = Literal["ddim", "dpm"]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def seed_for(item_id: str, segment_id: int, generator_version: str) -> int:
    """Stable per-cover seed in [0, 2**63): same (item, segment, generator) -> same seed on any machine."""
    key = f"{item_id}\x1f{segment_id}\x1f{generator_version}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") & (2**63 - 1)


def to_pil(images: np.ndarray) -> list:
    """uint8 [B, H, W, 3] -> list of PIL RGB images."""
    from PIL import Image

    return [Image.fromarray(image) for image in images]


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float32 on CPU whatever was asked (half precision is slow or unsupported there)."""
    if device.type == "cpu" or dtype is None:
        return torch.float32
    return _DTYPES[dtype] if isinstance(dtype, str) else dtype


class CoverGenerator:
    """A frozen diffusers UNet + VAE that turns :class:`Conditioning` into uint8 covers.

    Args:
        checkpoint_dir: diffusers folder with ``model_index.json``, ``unet/``, ``vae/``, ``scheduler/``.
        device: torch device; the GPU path is switched on by passing ``"cuda"``.
        dtype: ``"float16"`` / ``"bfloat16"`` on CUDA; always float32 on CPU.
        channels_last: use the channels-last memory format for the UNet (faster convolutions on GPU).
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        channels_last: bool = True,
    ) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.checkpoint_dir = Path(checkpoint_dir)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        model_index = json.loads((self.checkpoint_dir / "model_index.json").read_text())
        self.base_model = str(model_index.get("_name_or_path") or self.checkpoint_dir.name)
        self.unet = UNet2DConditionModel.from_pretrained(
            self.checkpoint_dir, subfolder="unet", local_files_only=True, torch_dtype=self.dtype
        )
        self.vae = AutoencoderKL.from_pretrained(self.checkpoint_dir, subfolder="vae", local_files_only=True)
        # VAEs flagged force_upcast (the SDXL one) overflow in float16: keep those in float32.
        if not self.vae.config.get("force_upcast", True):
            self.vae.to(self.dtype)
        for module in (self.unet, self.vae):
            module.requires_grad_(False)
            module.eval()
            module.to(self.device)
            if hasattr(torch.nn.functional, "scaled_dot_product_attention"):
                module.set_attn_processor(AttnProcessor2_0())  # fused SDPA kernels
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        self.scheduler_config = self._scheduler_config()
        self.kind = "sdxl" if self.unet.config.addition_embed_type == "text_time" else "sd15"
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_size = int(self.unet.config.sample_size)
        self.image_size = self.latent_size * self.vae_scale_factor
        log.info(
            "cover generator: checkpoint=%s kind=%s image=%d device=%s dtype=%s",
            self.checkpoint_dir,
            self.kind,
            self.image_size,
            self.device,
            self.dtype,
        )

    def _scheduler_config(self) -> dict:
        from diffusers import DDIMScheduler

        return dict(
            DDIMScheduler.load_config(self.checkpoint_dir, subfolder="scheduler", local_files_only=True)
        )

    def make_scheduler(self, name: SchedulerName):
        """A fresh scheduler of the checkpoint's noise schedule: ``"ddim"`` or ``"dpm"`` (DPM-Solver++ 2M)."""
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        if name == "ddim":
            return DDIMScheduler.from_config(self.scheduler_config)
        if name == "dpm":
            return DPMSolverMultistepScheduler.from_config(
                self.scheduler_config, algorithm_type="dpmsolver++", solver_order=2
            )
        raise ValueError(f"unknown scheduler {name!r} (use 'ddim' or 'dpm')")

    def initial_latents(self, seeds: Sequence[int]) -> torch.Tensor:
        """Gaussian latents [B, 4, h, w], row i drawn on CPU from its own ``seeds[i]`` (device independent)."""
        shape = (1, self.unet.config.in_channels, self.latent_size, self.latent_size)
        rows = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
        return torch.cat(rows).to(self.device, self.dtype)

    @torch.no_grad()
    def sample(
        self,
        cond: Conditioning,
        *,
        seeds: Sequence[int],
        steps: int = 20,
        guidance_scale: float = 5.0,
        scheduler: SchedulerName = "ddim",
        null_cond: Conditioning | None = None,
        output_type: Literal["uint8", "latent"] = "uint8",
        init_latents: torch.Tensor | None = None,
        strength: float = 1.0,
    ) -> np.ndarray | torch.Tensor:
        """Generate one cover per conditioning row, from noise or from given latents (image to image).

        Args:
            cond: B rows of conditioning (from ``ConditionAdapter``), matching this UNet's kind.
            seeds: B seeds, one per row (see :func:`seed_for`).
            steps: denoising steps.
            guidance_scale: classifier-free guidance weight; > 1 needs ``null_cond``.
            scheduler: ``"ddim"`` (eta 0) or ``"dpm"``; both deterministic given the initial latents.
            null_cond: the adapter's ``null_conditioning(B)`` for the unconditional branch.
            output_type: ``"uint8"`` for decoded covers, ``"latent"`` for the final latents (to refine
                them before :meth:`decode`).
            init_latents: ``[B, 4, h, w]`` latents to start from (:meth:`encode_images` of the item's
                reference cover), noised to ``strength``: the sample keeps their layout (SDEdit).
            strength: share of the schedule run from ``init_latents``, in [0, 1]; 1 (or no
                ``init_latents``) samples from pure noise, and a strength that rounds to no step
                returns ``init_latents`` as they are. Costs ``round(steps * strength)`` UNet steps.

        Returns:
            uint8 array [B, H, W, 3], or latents [B, 4, h, w] with ``output_type="latent"``.
        """
        if len(seeds) != len(cond):
            raise ValueError(f"{len(cond)} conditioning rows but {len(seeds)} seeds")
        if (cond.pooled_embeds is not None) != (self.kind == "sdxl"):
            raise ValueError(f"conditioning does not match a {self.kind} UNet (pooled embeds / time ids)")
        use_cfg = guidance_scale > 1.0
        if use_cfg and null_cond is None:
            raise ValueError("guidance_scale > 1 needs null_cond (the adapter's null_conditioning)")
        cond = cond.to(self.device, self.dtype)
        unet_cond = (
            Conditioning.cat([null_cond.to(self.device, self.dtype), cond])
            if null_cond is not None and use_cfg
            else cond
        )
        noise_scheduler = self.make_scheduler(scheduler)
        noise_scheduler.set_timesteps(steps, device=self.device)
        timesteps = noise_scheduler.timesteps
        noise = self.initial_latents(seeds)
        if init_latents is None or strength >= 1.0:
            latents = noise * noise_scheduler.init_noise_sigma
        elif round(steps * strength) == 0:  # nothing to run: the starting latents themselves
            latents, timesteps = init_latents.to(self.device, self.dtype), timesteps[:0]
        else:
            skipped = steps - min(steps, round(steps * strength))
            timesteps = timesteps[skipped:]
            if hasattr(noise_scheduler, "set_begin_index"):  # multistep solvers count steps from it
                noise_scheduler.set_begin_index(skipped)
            latents = noise_scheduler.add_noise(
                init_latents.to(self.device, self.dtype), noise, timesteps[:1]
            )
        for t in timesteps:
            model_in = torch.cat([latents, latents]) if use_cfg else latents
            model_in = noise_scheduler.scale_model_input(model_in, t)
            noise = self.unet(model_in, t, return_dict=False, **unet_cond.unet_kwargs())[0]
            if use_cfg:
                uncond, text = noise.chunk(2)
                noise = uncond + guidance_scale * (text - uncond)
            latents = noise_scheduler.step(noise, t, latents, return_dict=False)[0]
        return latents if output_type == "latent" else self.decode(latents)

    __call__ = sample

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """VAE-decode latents [B, 4, h, w] to uint8 images [B, H, W, 3]."""
        images = (self.decode_tensor(latents) * 255).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

    def decode_tensor(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE-decode latents [B, 4, h, w] to float images [B, 3, H, W] in [0, 1], differentiably."""
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        images = self.vae.decode(latents, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """Deterministic latents ``[B, 4, h, w]`` (the posterior mean) of uint8 covers ``[B, H, W, 3]``."""
        pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        return (dist.mean * self.vae.config.scaling_factor).to(self.dtype)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled VAE latents of images [B, 3, H, W] in [-1, 1] (for the denoising loss in training)."""
        dist = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist
        return (dist.sample(generator) * self.vae.config.scaling_factor).to(self.dtype)
