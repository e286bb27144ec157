"""GPU path check: covers/s in float32, float16 and bfloat16, the cover policy's cost, a training step.

Usage (on a machine with a CUDA device; the root holds a trained generator, rewards and features)::

    python benchmarks/bench_gpu.py --root R --ds DS [--items 64] [--titles titles.npz] [--out FILE]

For the first ``--items`` catalog items x every segment it measures, on ``cuda``:

1. plain sampling (20 DDIM steps, guidance 5) at each dtype: covers/s after one warm-up batch;
2. the cover policy (reward-guided look steer + base candidate, :mod:`icg_core.serving.policy`) in
   float16: covers/s and its cost relative to plain sampling;
3. one stage-2-shaped training step: the denoising loss on a batch of latents, backward through the
   UNet into the refiner, in float32 and under bfloat16 autocast (ms per step);
4. peak GPU memory.

``--titles`` is an ``.npz`` of precomputed title vectors (``titles``, ``vectors``), for machines
without the offline sentence-encoder package. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from icg_core.config import RewardWeights, load_config
from icg_core.models.bundle import load_bundle
from icg_core.models.checkpoint import resolve_version
from icg_core.models.users import load_segments
from icg_core.rewards.aesthetic import aesthetic_reward_fn
from icg_core.rewards.common import load_reward_model, model_name
from icg_core.rewards.guidance import GuidanceReward
from icg_core.rewards.preference import PreferenceModel, preference_reward_fn
from icg_core.rewards.relevance import load_relevance_model, relevance_reward_fn
from icg_core.serving.features import compute_item_features, load_features
from icg_core.serving.policy import CoverPolicy, CoverRewards, Sampling
from icg_core.storage import ObjectStore
from icg_core.training.data import read_catalog


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up: kernels, allocator
    _sync()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync()
    return (time.perf_counter() - started) / repeats


def _seconds_per_batch(policy: CoverPolicy, batch: dict) -> float:
    return _timed(lambda: policy(batch["features"], batch["users"], batch["seeds"], titles=batch["titles"],
                                 segment_ids=batch["segment_ids"], categories=batch["categories"]))  # fmt: skip


def _rewards(
    store: ObjectStore,
    weights: RewardWeights,
    segment_ids: np.ndarray,
    centroids: np.ndarray,
    titles: Path | None,
) -> CoverRewards:
    """The saved rewards with guidance; title vectors from ``titles`` where the sentence encoder is absent."""
    versions = {
        k: resolve_version(store, model_name(k), "latest") for k in ("aesthetic", "relevance", "preference")
    }
    encode = None
    if titles is not None:
        saved = np.load(titles)
        lookup = dict(zip(saved["titles"].tolist(), saved["vectors"], strict=True))

        def encode(batch: list[str]) -> np.ndarray:
            return np.stack([lookup[t] for t in batch])

    relevance = load_relevance_model(store, versions["relevance"], encode)
    preference = PreferenceModel.load(store, versions["preference"])
    aesthetic_stats = load_reward_model(store, "aesthetic", versions["aesthetic"]).stats
    return CoverRewards(
        aesthetic_reward_fn(None, aesthetic_stats),
        relevance_reward_fn(relevance, relevance.stats),
        preference_reward_fn(preference, dict(zip(segment_ids.tolist(), centroids, strict=True))),
        weights,
        GuidanceReward(preference, relevance, aesthetic_stats, weights),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--ds", required=True)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--titles", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to check the script itself")
    args = parser.parse_args()
    device = torch.device(args.device)
    store = ObjectStore(args.root)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    results: dict = {"device": name, "torch": torch.__version__}

    base_cfg = load_config(root=args.root)
    catalog = read_catalog(store, args.ds).slice(0, args.items)
    segment_ids, centroids = load_segments(store, args.ds).centroid_matrix()
    n = catalog.num_rows * len(segment_ids)
    rows = torch.arange(catalog.num_rows).repeat_interleave(len(segment_ids))
    users = torch.from_numpy(np.tile(centroids, (catalog.num_rows, 1))).float()
    seeds = list(range(n))
    titles = [catalog["title"][int(i)].as_py() for i in rows]
    categories = [catalog["category"][int(i)].as_py() for i in rows]
    segments = np.tile(segment_ids, catalog.num_rows).tolist()
    results["covers"] = n

    sampling = Sampling.from_config(base_cfg)
    plain = Sampling(sampling.steps, sampling.guidance_scale, sampling.scheduler)
    batch = {
        "users": users,
        "seeds": seeds,
        "titles": titles,
        "segment_ids": segments,
        "categories": categories,
    }
    for dtype in ("float32", "float16", "bfloat16"):
        models = base_cfg.models.model_copy(update={"device": args.device, "dtype": dtype})
        bundle = load_bundle(store, models)
        batch["features"] = load_features(
            store,
            compute_item_features(bundle.encoder, catalog, store).table.column("features_uri").to_pylist(),
        )[rows]
        seconds = _seconds_per_batch(CoverPolicy(bundle, plain, None), batch)
        results[f"plain_{dtype}_covers_per_s"] = round(n / seconds, 1)
        if dtype != "float16":
            continue
        rewards = _rewards(store, base_cfg.rewards.weights, segment_ids, centroids, args.titles)
        guided = _seconds_per_batch(CoverPolicy(bundle, sampling, rewards), batch)
        results["policy_float16_covers_per_s"] = round(n / guided, 1)
        results["policy_cost_vs_plain"] = round(guided / seconds, 2)
        steer_only = _seconds_per_batch(
            CoverPolicy(bundle, replace(sampling, base_candidate=False), rewards), batch
        )
        results["steer_only_float16_covers_per_s"] = round(n / steer_only, 1)

    # 3. One training step: denoising loss through the frozen UNet into the refiner (stage 2's update shape).
    models = base_cfg.models.model_copy(update={"device": args.device, "dtype": "float32"})
    bundle = load_bundle(store, models)
    features = load_features(
        store, compute_item_features(bundle.encoder, catalog, store).table.column("features_uri").to_pylist()
    )[rows].to(device)
    unet, scheduler = bundle.covers.unet, bundle.covers.make_scheduler("ddim")
    params = [p for p in bundle.refiner.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=1e-4)
    side = bundle.covers.latent_size
    latents = torch.randn(n, unet.config.in_channels, side, side, device=device)

    def step(autocast: bool) -> None:
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            cond = bundle.conditioning(features, users.to(device), None)
            pred = unet(scheduler.add_noise(latents, noise, t), t, return_dict=False, **cond.unet_kwargs())[0]
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    results["train_step_float32_ms"] = round(1000 * _timed(lambda: step(False), repeats=5), 1)
    results["train_step_bf16_autocast_ms"] = round(1000 * _timed(lambda: step(True), repeats=5), 1)
    results["train_batch"] = n
    if device.type == "cuda":
        results["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
