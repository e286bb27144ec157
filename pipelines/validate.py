"""Stage validate: great-expectations suites over the extracted tables for ``ds``.

Promotes the tables to ``validated/`` only when every suite passes; otherwise exits non-zero with
the failing expectations and sample rows, and writes nothing to ``validated/``. The GX result JSON
is written under ``reports/ds=<ds>/`` either way.
"""

from __future__ import annotations

import dataclasses

import typer

from pipelines.runtime import ConfigOpt, DsOpt, JsonOpt, RootOpt, StageFailed, main, open_stage, print_summary


def validate(ds: DsOpt, root: RootOpt = None, config: ConfigOpt = None, json: JsonOpt = False) -> None:
    """Validate the extracted tables for DS and promote them to validated/ if every suite passes."""
    from icg_core.stages.validate import format_failures, validate_day

    cfg, store = open_stage("validate", config, root)
    report = validate_day(store, ds, cfg)
    if not report.success:
        typer.echo(format_failures(report), err=True)
        raise StageFailed(
            f"validation failed for ds={ds}; nothing written to validated/ (report: {report.report_uri})"
        )
    print_summary(dataclasses.asdict(report), json)


if __name__ == "__main__":
    main(validate)
