"""Stage evaluate: every variant on the same held-out items -> ``reports/ds=<ds>/metrics.json``, then the gates.

Needs the day's segments, reward models, the production generator (and the stage-1 one it was
fine-tuned from); reads the generate stage's staged covers of ``ds`` when they exist. Exits 2 when a
gate fails (``icg_core.evaluation.gates``): the icg variant regressed against the last published
run, or lost too much relevance against the base generator. The metrics file is written either way.
``--ablations`` also fine-tunes and evaluates the two reward ablations (the manual ``icg_ablation`` run).
"""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.runtime import ConfigOpt, DsOpt, JsonOpt, RootOpt, StageFailed, main, open_stage, print_summary


def evaluate(
    ds: DsOpt,
    root: RootOpt = None,
    config: ConfigOpt = None,
    ablations: Annotated[
        bool,
        typer.Option(
            "--ablations", help="Also fine-tune and evaluate icg_no_preference and icg_no_aesthetic."
        ),
    ] = False,
    json: JsonOpt = False,
) -> None:
    """Evaluate reference, selection, base and ICG covers on held-out items of DS; exit 2 if a gate fails."""
    from icg_core.runtime import torch_threads
    from icg_core.stages.evaluate import run_evaluation

    cfg, store = open_stage("evaluate", config, root)
    with torch_threads(cfg.models.cpu_threads):
        summary, gate = run_evaluation(store, cfg, ds, ablations=ablations)
    print_summary(summary.to_dict(), json)
    if not gate.passed:
        raise StageFailed(
            f"evaluate gate failed for ds={ds}: {gate.message()} (metrics: {summary.metrics_uri})"
        )


if __name__ == "__main__":
    main(evaluate)
