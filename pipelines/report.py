"""Stage report: the run's self-contained HTML page, ``reports/ds=<ds>/index.html``.

Reads the evaluate stage's ``reports/ds=<ds>/metrics.json``, the fine-tuning log and the sampled
covers; refuses (exit 2) when the metrics are missing. Prints where the page is.
"""

from __future__ import annotations

from pipelines.runtime import ConfigOpt, DsOpt, JsonOpt, RootOpt, StageFailed, main, open_stage, print_summary


def report(ds: DsOpt, root: RootOpt = None, config: ConfigOpt = None, json: JsonOpt = False) -> None:
    """Render the report page of DS from its metrics, covers and reward curves."""
    from icg_core.stages.report import MetricsMissing, build_report

    _, store = open_stage("report", config, root)
    try:
        key = build_report(store, ds)
    except MetricsMissing as exc:
        raise StageFailed(str(exc)) from exc
    print_summary({"ds": ds, "key": key, "uri": store.uri(key), "bytes": store.size(key)}, json)


if __name__ == "__main__":
    main(report)
