"""Stage rewards: the aesthetic, relevance and preference reward models of ``ds``, each saved as version ``ds``.

Needs the validated day and the users stage's embeddings of ``ds``. The preference model is gated:
a held-out AUC below ``rewards.preference.auc_floor`` refuses it, and the stage exits 2. Runs as one
Ray task (local Ray here, ``RAY_ADDRESS`` on a cluster) with the resources it declares.
"""

from __future__ import annotations

from typing import Any

from pipelines.ray_runtime import run_task, task_threads, training_resources
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
    from icg_core.runtime import torch_threads
    from icg_core.stages.rewards import PreferenceGateError, run_rewards

    setup_logging(cfg.operations.log_format)
    with torch_threads(task_threads(cfg)):
        try:
            return run_rewards(store, cfg, ds)
        except PreferenceGateError as exc:
            raise StageFailed(str(exc)) from exc


if __name__ == "__main__":
    main(train_rewards)
