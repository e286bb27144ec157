"""CoverGenerator overhead: a batch of covers vs a bare diffusers loop over the same UNet and scheduler.

Usage::

    python benchmarks/bench_generate.py [--root ROOT] [--batch 16] [--steps 20] [--rounds 7]

Both sides get the same precomputed conditioning (the adapter's output and its null conditioning
for classifier-free guidance), the same UNet and VAE modules, the same DDIM schedule and step count,
the same initial noise, and end with the same uint8 images; only the loop differs. Rounds are
interleaved (the order alternates) because the machine is shared and noisy; the ratio reported is
the median of the per-round ratios CoverGenerator / bare. With ``--root`` the saved generator of
that root is timed, else a fresh tiny checkpoint of the embedded configuration (speed does not
depend on the weights). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from icg_core.config import load_config
from icg_core.models.bundle import ICGBundle, build_bundle, load_bundle
from icg_core.models.conditioning import Conditioning
from icg_core.models.tiny import build_tiny_sd, build_tiny_vlm
from icg_core.runtime import torch_threads
from icg_core.storage import ObjectStore


@torch.no_grad()
def bare_diffusers_loop(bundle: ICGBundle, cond: Conditioning, null: Conditioning, latents: torch.Tensor,
                        steps: int, guidance_scale: float) -> np.ndarray:  # fmt: skip
    """The textbook diffusers sampling loop (as in StableDiffusion[XL]Pipeline), CFG included."""
    from diffusers import DDIMScheduler

    unet, vae = bundle.covers.unet, bundle.covers.vae
    scheduler = DDIMScheduler.from_config(bundle.covers.scheduler_config)
    scheduler.set_timesteps(steps)
    states = torch.cat([null.encoder_hidden_states, cond.encoder_hidden_states])
    extra = {}
    if cond.pooled_embeds is not None:  # SDXL-type UNet: pooled embedding + time ids, as the SDXL pipeline
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.cat([null.pooled_embeds, cond.pooled_embeds]),
            "time_ids": torch.cat([null.time_ids, cond.time_ids]),
        }
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        noise = unet(model_in, t, encoder_hidden_states=states, **extra).sample
        uncond, text = noise.chunk(2)
        latents = scheduler.step(uncond + guidance_scale * (text - uncond), t, latents).prev_sample
    images = vae.decode(latents / vae.config.scaling_factor).sample
    return ((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def tiny_bundle(cfg, tmp: Path) -> ICGBundle:
    models = cfg.models
    vlm = build_tiny_vlm(tmp / "vlm", models.tiny_vlm_family, ["a title"], hidden_size=models.tiny_vlm_hidden_size,
                         image_size=models.tiny_vlm_image_size)  # fmt: skip
    sd = build_tiny_sd(
        tmp / "sd",
        models.tiny_sd_kind,
        sample_size=models.tiny_sd_image_size,
        cross_attention_dim=models.tiny_sd_cross_attention_dim,
        block_out_channels=tuple(models.tiny_sd_block_out_channels),
        prediction_type=models.tiny_sd_prediction_type,
    )
    store = ObjectStore(str(tmp / "root"))
    return build_bundle(store, {"vlm": {"path": str(vlm)}, "sd": {"path": str(sd)}}, models).eval()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", default=None, help="time this root's saved generator (default: a fresh tiny one)"
    )
    parser.add_argument("--config", default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="default models.sample_steps")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="default models.cpu_threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config, root=args.root)
    steps = args.steps or cfg.models.sample_steps
    guidance = cfg.models.guidance_scale
    with (
        tempfile.TemporaryDirectory(prefix="icg-bench-") as tmp,
        torch_threads(args.threads or cfg.models.cpu_threads),
    ):
        if args.root:
            bundle = load_bundle(ObjectStore.from_config(cfg.storage), cfg.models).eval()
        else:
            bundle = tiny_bundle(cfg, Path(tmp))
        generator = bundle.covers
        torch.manual_seed(0)
        features = torch.randn(
            args.batch, bundle.adapter.config.num_tokens, bundle.adapter.config.feature_dim
        )
        with torch.no_grad():
            cond = bundle.conditioning(features)
            null = bundle.adapter.null_conditioning(args.batch)
        seeds = list(range(args.batch))
        latents = generator.initial_latents(seeds)

        def ours() -> np.ndarray:
            return generator.sample(cond, seeds=seeds, steps=steps, guidance_scale=guidance, null_cond=null)

        def bare() -> np.ndarray:
            return bare_diffusers_loop(bundle, cond, null, latents, steps, guidance)

        same = np.abs(ours().astype(int) - bare().astype(int)).max()  # warm-up, and the outputs must agree
        timings: dict[str, list[float]] = {"icg": [], "bare": []}
        for round_index in range(args.rounds):
            order = [("icg", ours), ("bare", bare)]
            for name, fn in order if round_index % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                fn()
                timings[name].append(time.perf_counter() - started)
    ratios = [a / b for a, b in zip(timings["icg"], timings["bare"], strict=True)]
    report = {
        "batch": args.batch,
        "image_size": generator.image_size,
        "steps": steps,
        "guidance_scale": guidance,
        "threads": torch.get_num_threads()
        if not (args.threads or cfg.models.cpu_threads)
        else (args.threads or cfg.models.cpu_threads),
        "rounds": args.rounds,
        "max_pixel_difference": int(same),
        "icg_seconds": [round(t, 3) for t in timings["icg"]],
        "bare_seconds": [round(t, 3) for t in timings["bare"]],
        "median_icg_seconds": round(statistics.median(timings["icg"]), 3),
        "median_bare_seconds": round(statistics.median(timings["bare"]), 3),
        "ratio_median_of_rounds": round(statistics.median(ratios), 3),
        "ratio_of_medians": round(statistics.median(timings["icg"]) / statistics.median(timings["bare"]), 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
