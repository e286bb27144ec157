"""Measure users, segments and the three reward models on the embedded world (evaluation code).

Usage::

    python benchmarks/eval_rewards.py --root /tmp/icg_world [--generate [--seed N] [--world n_users=500]]
        [--threads 1] [--out FILE]

With ``--generate`` (or when the root has no validated day yet) the world is generated (default
knobs unless overridden), extracted and validated first; otherwise the latest validated day is used. The script trains everything on the
validated window exactly as the pipeline would, then -- and only here -- reads the oracle to judge:
segment ARI against the hidden taste groups, and the oracle's own click AUC on the held-out
impressions the preference gate scored (the ceiling). It prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, log_loss, roc_auc_score

from icg_core import layout
from icg_core.config import AestheticConfig, ICGConfig, PreferenceConfig, RelevanceConfig, UsersConfig
from icg_core.data.images import read_images
from icg_core.models.users import load_segments, load_user_embeddings
from icg_core.rewards.aesthetic import build_aesthetic_reward
from icg_core.rewards.preference import build_preference_reward, split_days
from icg_core.rewards.relevance import build_relevance_reward
from icg_core.stages.extract import extract_day
from icg_core.stages.users import run_users
from icg_core.stages.validate import validate_day
from icg_core.storage import ObjectStore
from icg_core.world.oracle import Oracle
from icg_core.world.simulator import generate_world


def _timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, round(time.perf_counter() - started, 2)


def prepare_world(store: ObjectStore, cfg: ICGConfig, generate: bool) -> str:
    """The ds to measure: the root's latest validated day, or (``generate``, or none yet) a fresh world's."""
    validated = layout.IMPRESSIONS.days(store)
    if validated and not generate:
        return validated[-1]
    summary = generate_world(store, cfg.world)
    ds = summary.first_nightly_ds
    extract_day(store, ds, cfg.extract)
    report = validate_day(store, ds, cfg)
    if not report.success:
        raise SystemExit(f"validation failed for {ds}: {report.report_uri}")
    return ds


def segment_report(store: ObjectStore, ds: str, oracle: Oracle, n_segments: int) -> dict:
    segments = load_segments(store, ds)
    groups = oracle.taste_group(segments.user_ids.tolist())
    taste = oracle.taste_vectors(segments.user_ids.tolist())
    ceiling = KMeans(n_segments, n_init=10, random_state=0).fit_predict(taste)
    sizes = np.bincount(segments.segment_ids)
    return {
        "ari_vs_taste_group": round(float(adjusted_rand_score(groups, segments.segment_ids)), 4),
        "ari_kmeans_on_true_taste": round(float(adjusted_rand_score(groups, ceiling)), 4),
        "n_taste_groups": int(len(np.unique(groups))),
        "segment_sizes": sizes[sizes > 0].tolist(),
        # Mean hidden taste of each segment's users (warmth, brightness, saturation, contrast).
        "segment_mean_taste": {
            int(s): np.round(taste[segments.segment_ids == s].mean(axis=0), 2).tolist()
            for s in sorted(segments.centroids)
        },
    }


def oracle_ceiling(store: ObjectStore, ds: str, oracle: Oracle, holdout_days: int) -> dict:
    """The oracle's click AUC / log loss on the held-out impressions the gate scored."""
    impressions = layout.IMPRESSIONS.read(store, ds)
    train, held, _ = split_days(impressions, holdout_days)
    seen = set(train.column("user_id").to_pylist())
    users = held.column("user_id").to_pylist()
    keep = np.array([u in seen for u in users])
    users = [u for u, k in zip(users, keep, strict=True) if k]
    uris = [u for u, k in zip(held.column("cover_uri").to_pylist(), keep, strict=True) if k]
    clicked = np.asarray(held.column("clicked").to_pylist())[keep]
    probability = oracle.click_probability(users, read_images(store, uris))
    return {
        "oracle_auc": round(float(roc_auc_score(clicked, probability)), 4),
        "oracle_log_loss": round(float(log_loss(clicked, np.clip(probability, 1e-6, 1 - 1e-6))), 4),
        "n_eval": int(keep.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/icg_world")
    parser.add_argument("--generate", action="store_true", help="(re)generate the default world first")
    parser.add_argument("--seed", type=int, default=None, help="world seed (with --generate)")
    parser.add_argument(
        "--world",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="world knob override (with --generate)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.world)}
    if args.seed is not None:
        overrides["seed"] = args.seed
    cfg = ICGConfig.model_validate({"world": overrides})
    store = ObjectStore(args.root)
    ds, prepare_seconds = _timed(prepare_world, store, cfg, args.generate)
    oracle = Oracle.load(store)
    users_cfg, preference_cfg = UsersConfig(), PreferenceConfig()

    users, users_seconds = _timed(run_users, store, ds, users_cfg)
    aesthetic, aesthetic_seconds = _timed(build_aesthetic_reward, store, ds, AestheticConfig())
    relevance, relevance_seconds = _timed(build_relevance_reward, store, ds, RelevanceConfig())
    embeddings = load_user_embeddings(store, ds)
    preference, preference_seconds = _timed(
        build_preference_reward, store, ds, preference_cfg, users_cfg, embeddings
    )
    metrics = preference.metrics
    result = {
        "root": store.root,
        "ds": ds,
        "world": overrides,
        "torch_threads": torch.get_num_threads(),
        "prepare_seconds": prepare_seconds,
        "users": {
            "seconds": users_seconds,
            "n_users": users.n_users,
            "embedding_dim": users.embedding_dim,
            "bpr_loss_first_last": [round(users.bpr_losses[0], 4), round(users.bpr_losses[-1], 4)],
            **segment_report(store, ds, oracle, users_cfg.n_segments),
        },
        "preference": {
            "seconds": preference_seconds,
            "gate_seconds": round(metrics["gate_seconds"], 2),
            "heldout_auc": round(metrics["auc"], 4),
            "heldout_log_loss": round(metrics["log_loss"], 4),
            "heldout_log_loss_base_rate": round(metrics["log_loss_base_rate"], 4),
            "auc_floor": preference_cfg.auc_floor,
            "eval_days": metrics["eval_days"],
            **oracle_ceiling(store, ds, oracle, preference_cfg.holdout_days),
        },
        "relevance": {
            "seconds": relevance_seconds,
            "heldout": {k: round(v, 4) for k, v in relevance.metrics["heldout"].items()},
            "train": {k: round(v, 4) for k, v in relevance.metrics["train"].items()},
            "final_loss": round(relevance.metrics["losses"][-1], 4),
        },
        "aesthetic": {
            "seconds": aesthetic_seconds,
            "stats": aesthetic.stats.to_dict(),
            "correlation_with_heldout_measure": round(aesthetic.metrics["correlation_with_heldout"], 4),
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
