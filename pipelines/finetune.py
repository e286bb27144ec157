"""Stage finetune: stage 2 (multi-reward, reward-weighted fine-tuning) of the generator for ``ds``.

Needs the users stage's segments and the rewards stage's models of ``ds`` and a stage-1 generator
(``icg bootstrap``). Saves a new generator version and moves ``_latest`` only on success; when the
held-out relevance guard trips, nothing is saved and the stage exits 2. Runs as one Ray task (local
Ray here, ``RAY_ADDRESS`` on a cluster) with the resources it declares.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

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


def _train(store: Any, cfg: Any, ds: str, stop_after: int | None) -> dict[str, Any]:
    """Stage 2 (a Ray task). Raises StageFailed when the relevance guard stops it."""
    from icg_core.runtime import torch_threads
    from icg_core.stages.finetune import run_finetune
    from icg_core.training.stage2 import RelevanceCollapse

    setup_logging(cfg.operations.log_format)
    with torch_threads(task_threads(cfg)):
        try:
            return run_finetune(store, cfg, ds, stop_after=stop_after).to_dict()
        except RelevanceCollapse as exc:
            raise StageFailed(str(exc)) from exc


def finetune(
    ds: DsOpt,
    root: RootOpt = None,
    config: ConfigOpt = None,
    stop_after: Annotated[
        int | None, typer.Option(help="Stop after this many steps (state saved; rerun to resume).")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Fine-tune the generator on DS with the aesthetic, relevance and preference rewards."""
    cfg, store = open_stage("finetune", config, root)
    resources = training_resources(cfg.models.device, cfg.models.cpu_threads)
    summary = run_task(_train, store, cfg, ds, stop_after, **resources)
    if not json:  # people get the last points; full curves are in the report JSON
        result = summary.pop("result", {})
        summary["curve_last"] = (result.get("curve") or [{}])[-1]
        summary["guard_last"] = (result.get("guard") or [{}])[-1]
    print_summary(summary, json)


if __name__ == "__main__":
    main(finetune)
