"""The one tiny configuration tests build models from: a few dozen items, 32-pixel covers, 2-step loops.

Tests that need another size or gate pass overrides per section (``tiny_settings(world={...})``);
everything else stays shared, so a change to the model layout is made once.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

TINY: dict[str, dict[str, Any]] = {
    "world": {"n_items": 24, "n_users": 40, "days": 4, "impressions_per_day": 300, "image_size": 32, "variants_per_item": 2},
    "models": {
        "num_meta_tokens": 4, "adapter_hidden_dim": 32, "adapter_layers": 1, "user_dim": 8,
        "tiny_vlm_hidden_size": 32, "tiny_vlm_image_size": 16, "tiny_sd_image_size": 32,
        "tiny_sd_block_out_channels": [16, 32], "tiny_sd_cross_attention_dim": 16, "sample_steps": 2,
        "cpu_threads": 1,  # models this small: a thread's synchronization costs more than its share of an op
    },
    "stage1": {
        "steps": 2, "batch_size": 4, "warmup_steps": 1, "vae_steps": 2, "vae_batch_size": 4, "vae_crop": 16,
        "vlm_warmup_steps": 0, "checkpoint_every": 2, "log_every": 1, "sheet_items": 2,
    },
    "users": {"bpr_epochs": 2, "n_segments": 2, "kmeans_restarts": 2},
    "rewards": {
        "relevance": {"epochs": 2, "batch_size": 8, "holdout_fraction": 0.3},
        "preference": {"holdout_days": 1, "auc_floor": 0.0, "epochs": 2, "batch_size": 256},
    },
    "finetune": {
        "steps": 2, "pairs_per_step": 2, "candidates": 2, "sample_steps": 2, "warmup_steps": 1,
        "reg_batch_size": 2, "guard_every": 1, "guard_items": 2, "checkpoint_every": 1, "log_every": 1,
        "updates_per_batch": 1, "noise_draws": 1,
    },
    "guidance": {"steps": 2, "item_rank": 0},  # the item guard is off with the item gate (below)
    "generate": {"batch_size": 4, "features_batch_size": 8},
    # 2-step, 32-pixel models do not draw their items: the item guard and gates against the reference
    # are off here, and tested on their own (test_policy, test_gates, and a broken generator in test_evaluate).
    "evaluate": {"min_item_recall_ratio": 0.0, "max_reference_share": 1.0, "max_relevance_drop_vs_reference": 10.0},
    # Tests run nights past a tiny world's last day of logs (no new data): completeness off.
    "validation": {"min_day_rows_fraction": 0.0},
}  # fmt: skip


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def tiny_settings(**sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """:data:`TINY` with per-section overrides merged in (nested dicts merge, other values replace)."""
    return _merge(copy.deepcopy(TINY), sections)


def write_tiny_config(path: Path, **sections: dict[str, Any]) -> Path:
    """Write :func:`tiny_settings` as a YAML config file at ``path``; returns ``path``."""
    path.write_text(yaml.safe_dump(tiny_settings(**sections)))
    return path


def prepare_tiny_day(store: Any, cfg: Any) -> str:
    """World, validated day, stage-1 bootstrap, users and the three rewards in ``store``; returns the ds.

    Single-threaded torch (tiny models run faster so, and the suite shares the machine).
    """
    from icg_core.rewards.aesthetic import build_aesthetic_reward
    from icg_core.rewards.preference import build_preference_reward
    from icg_core.rewards.relevance import build_relevance_reward
    from icg_core.runtime import torch_threads
    from icg_core.stages.bootstrap import bootstrap
    from icg_core.stages.extract import extract_day
    from icg_core.stages.users import run_users
    from icg_core.stages.validate import validate_day
    from icg_core.world.simulator import generate_world

    with torch_threads(1):
        ds = generate_world(store, cfg.world).first_nightly_ds
        extract_day(store, ds, cfg.extract)
        assert validate_day(store, ds, cfg).success
        assert bootstrap(store, cfg, ds=ds).complete
        run_users(store, ds, cfg.users)
        build_aesthetic_reward(store, ds, cfg.rewards.aesthetic)
        build_preference_reward(store, ds, cfg.rewards.preference, cfg.users)
        build_relevance_reward(store, ds, cfg.rewards.relevance)
    return ds
