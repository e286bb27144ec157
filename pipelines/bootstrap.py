"""Stage bootstrap: base checkpoints (embedded: built and trained here) and the stage-1 generator.

``icg bootstrap --root ROOT`` trains on the newest validated day (or ``--ds``) and writes
``models/``, the item-feature cache and ``reports/bootstrap/``; rerunning it with the same data and
config reuses everything already done, and an interrupted run resumes stage 1 from its last state.
``icg generate-sample --root ROOT --items K`` writes a contact sheet of K held-out items' generated
covers next to their reference covers and prints its URI.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.runtime import ConfigOpt, JsonOpt, RootOpt, ds_option, main, open_stage, print_summary

OptionalDsOpt = Annotated[
    str | None,
    typer.Option("--ds", callback=ds_option, help="Validated day to use, YYYY-MM-DD; default the newest."),
]


def bootstrap(
    root: RootOpt = None,
    config: ConfigOpt = None,
    ds: OptionalDsOpt = None,
    stop_after: Annotated[
        int | None, typer.Option(help="Stop stage 1 after this many steps (state saved; rerun to resume).")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Build the embedded base checkpoints, run stage 1, cache item features, write the contact sheet."""
    from icg_core.stages.bootstrap import bootstrap as run_bootstrap

    cfg, store = open_stage("bootstrap", config, root)
    summary = run_bootstrap(store, cfg, ds=ds, stop_after=stop_after).to_dict()
    if not json:  # people get the numbers; the loss curves stay in reports/bootstrap/summary.json
        for section in ("vlm_warmup", "vae", "stage1"):
            summary[section] = {k: v for k, v in summary[section].items() if k != "curve"}
    print_summary(summary, json)


def generate_sample(
    root: RootOpt = None,
    items: Annotated[int, typer.Option("--items", min=1, help="Held-out items on the sheet.")] = 16,
    config: ConfigOpt = None,
    ds: OptionalDsOpt = None,
    version: Annotated[str, typer.Option(help="Generator version, or 'latest'.")] = "latest",
    json: JsonOpt = False,
) -> None:
    """Write a contact sheet: generated covers of ITEMS held-out items next to their reference covers."""
    from icg_core.stages.bootstrap import generate_sample as run_generate_sample

    cfg, store = open_stage("generate-sample", config, root)
    uri = run_generate_sample(store, cfg, items=items, ds=ds, version=version)
    print_summary({"contact_sheet": uri, "items": items}, json)


if __name__ == "__main__":
    # `python -m pipelines.bootstrap --ds ...` is the bootstrap stage (what the icg_bootstrap DAG
    # launches); the contact sheet is `icg generate-sample`.
    main(bootstrap)
