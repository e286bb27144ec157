"""The rewards stage: the aesthetic, relevance and preference reward models of ``ds``, each saved as version ``ds``.

Needs the validated day and the users stage's embeddings of ``ds``. The preference model is gated:
a held-out AUC below ``rewards.preference.auc_floor`` refuses it (:class:`PreferenceGateError`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from icg_core.config import ICGConfig
from icg_core.rewards.aesthetic import build_aesthetic_reward
from icg_core.rewards.preference import PreferenceGateError, build_preference_reward
from icg_core.rewards.relevance import build_relevance_reward
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)

__all__ = ["PreferenceGateError", "run_rewards"]


def run_rewards(store: ObjectStore, cfg: ICGConfig, ds: str) -> dict[str, Any]:
    """Train and save the three reward models of ``ds``.

    Returns:
        The summary: each model's version and held-out numbers, and seconds per model.

    Raises:
        PreferenceGateError: the click model's held-out AUC is below the floor; it is not saved.
    """
    rewards = cfg.rewards
    summary: dict[str, Any] = {"ds": ds, "seconds": {}}

    started = time.perf_counter()
    aesthetic = build_aesthetic_reward(store, ds, rewards.aesthetic)
    summary["aesthetic"] = {"version": aesthetic.version, "stats": aesthetic.stats.to_dict()}
    summary["seconds"]["aesthetic"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    relevance = build_relevance_reward(store, ds, rewards.relevance)
    summary["relevance"] = {
        "version": relevance.version,
        "heldout": relevance.metrics.get("heldout", {}),
    }
    summary["seconds"]["relevance"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    preference = build_preference_reward(store, ds, rewards.preference, cfg.users)
    summary["preference"] = {
        "version": preference.version,
        "heldout_auc": round(preference.metrics["auc"], 4),
        "heldout_log_loss": round(preference.metrics["log_loss"], 4),
        "auc_floor": rewards.preference.auc_floor,
    }
    summary["seconds"]["preference"] = round(time.perf_counter() - started, 2)
    log.info("stage=rewards ds=%s done seconds=%s", ds, summary["seconds"])
    return summary
