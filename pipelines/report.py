"""Stage report: the run's self-contained HTML page, ``reports/ds=<ds>/index.html``.

Reads the evaluate stage's ``reports/ds=<ds>/metrics.json``, the fine-tuning log and the sampled
covers; refuses (exit 2) when the metrics are missing. Prints where the page is. The DAGs run it
after a failed stage too, passing ``--failure "stage: reason"``: the page then opens with them (and
is only them when the run failed before evaluate).
"""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.runtime import ConfigOpt, DsOpt, JsonOpt, RootOpt, StageFailed, main, open_stage, print_summary

FailureOpt = Annotated[
    list[str] | None,
    typer.Option("--failure", help='"stage: reason" of a stage that failed in this run (repeatable).'),
]


def report(
    ds: DsOpt,
    root: RootOpt = None,
    config: ConfigOpt = None,
    failure: FailureOpt = None,
    json: JsonOpt = False,
) -> None:
    """Render the report page of DS from its metrics, covers and reward curves."""
    from icg_core.stages.report import MetricsMissing, build_report

    _, store = open_stage("report", config, root)
    try:
        key = build_report(store, ds, failure or [])
    except MetricsMissing as exc:
        raise StageFailed(str(exc)) from exc
    print_summary(
        {
            "ds": ds,
            "failures": len(failure or []),
            "key": key,
            "uri": store.uri(key),
            "bytes": store.size(key),
        },
        json,
    )


if __name__ == "__main__":
    main(report)
