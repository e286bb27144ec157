"""Stage users: user embeddings (BPR + visual preference) and stable k-means segments for ``ds``.

Reads ``validated/impressions/ds=<ds>/``; writes ``users/{user_embeddings,user_segments,segment_centroids}``.
Runs as one Ray task (local Ray here, ``RAY_ADDRESS`` on a cluster) with the resources it declares.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipelines.ray_runtime import run_task, task_threads, training_resources
from pipelines.runtime import (
    ConfigOpt,
    DsOpt,
    JsonOpt,
    RootOpt,
    main,
    open_stage,
    print_summary,
    setup_logging,
)


def _train(store: Any, cfg: Any, ds: str) -> dict[str, Any]:
    """The users stage's work (a Ray task)."""
    from icg_core.runtime import torch_threads
    from icg_core.stages.users import run_users

    setup_logging(cfg.operations.log_format)
    with torch_threads(task_threads(cfg)):
        return dataclasses.asdict(run_users(store, ds, cfg.users))


def train_users(ds: DsOpt, root: RootOpt = None, config: ConfigOpt = None, json: JsonOpt = False) -> None:
    """Learn user embeddings from the validated window of DS and segment the users."""
    cfg, store = open_stage("users", config, root)
    summary = run_task(
        _train, store, cfg, ds, **training_resources(cfg.models.device, cfg.models.cpu_threads)
    )
    if not json:  # people get the first and last loss; the curve stays in the model card
        summary["bpr_losses"] = [round(summary["bpr_losses"][0], 4), round(summary["bpr_losses"][-1], 4)]
    print_summary(summary, json)


if __name__ == "__main__":
    main(train_users)
