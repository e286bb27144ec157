"""Stage rewards: the aesthetic, relevance and preference reward models of ``ds``, each saved as version ``ds``.

Needs the validated day and the users stage's embeddings of ``ds``. The preference model is gated:
a held-out AUC below ``rewards.preference.auc_floor`` refuses it, and the stage exits 2. Runs as one
Ray task (local Ray here, ``RAY_ADDRESS`` on a cluster) with the resources it declares.
"""

from __future__ import annotations

from typing import Any

from pipelines.ray_runtime import run_task, training_resources
from pipelines.runtime import (
    ConfigOpt,
    DsOpt,
    JsonOpt,
    RootOpt,
    StageFailed,
    main,
    open_stage,
    print_summary,
    setup_logging,
)


def train_rewards(ds: DsOpt, root: RootOpt = None, config: ConfigOpt = None, json: JsonOpt = False) -> None:
    """Train the three reward models on DS (aesthetic statistics, relevance dual encoder, click model)."""
    cfg, store = open_stage("rewards", config, root)
    summary = run_task(
        _train, store, cfg, ds, **training_resources(cfg.models.device, cfg.models.cpu_threads)
    )
    print_summary(summary, json)


def _train(store: Any, cfg: Any, ds: str) -> dict[str, Any]:
    """The rewards stage's work (a Ray task). Raises StageFailed below the preference AUC floor."""
    import time

    from icg_core.bootstrap import torch_threads
    from icg_core.rewards.aesthetic import build_aesthetic_reward
    from icg_core.rewards.preference import PreferenceGateError, build_preference_reward
    from icg_core.rewards.relevance import build_relevance_reward

    setup_logging()
    rewards = cfg.rewards
    summary: dict = {"ds": ds, "seconds": {}}
    with torch_threads(cfg.models.cpu_threads):
        started = time.perf_counter()
        aesthetic = build_aesthetic_reward(store, ds, rewards.aesthetic)
        summary["aesthetic"] = {"version": aesthetic["version"], "stats": aesthetic["stats"]}
        summary["seconds"]["aesthetic"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        relevance = build_relevance_reward(store, ds, rewards.relevance)
        summary["relevance"] = {
            "version": relevance["version"],
            "heldout": relevance["metrics"].get("heldout", {}),
        }
        summary["seconds"]["relevance"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        try:
            preference = build_preference_reward(store, ds, rewards.preference, cfg.users)
        except PreferenceGateError as exc:
            raise StageFailed(str(exc)) from exc
        metrics = preference.metrics
        summary["preference"] = {
            "version": ds,
            "heldout_auc": round(metrics["auc"], 4),
            "heldout_log_loss": round(metrics["log_loss"], 4),
            "auc_floor": rewards.preference.auc_floor,
        }
        summary["seconds"]["preference"] = round(time.perf_counter() - started, 2)
    return summary


if __name__ == "__main__":
    main(train_rewards)
