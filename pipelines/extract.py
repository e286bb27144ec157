"""Stage extract: catalog snapshot and impressions window for ``ds``, by SQL over the raw tables.

Writes ``staging/extract/<table>/ds=<ds>/``: candidates that only ``validate`` may promote.
"""

from __future__ import annotations

import dataclasses

from pipelines.runtime import ConfigOpt, DsOpt, JsonOpt, RootOpt, main, open_stage, print_summary


def extract(ds: DsOpt, root: RootOpt = None, config: ConfigOpt = None, json: JsonOpt = False) -> None:
    """Extract the catalog snapshot and the impressions window for DS into staging."""
    from icg_core.stages.extract import extract_day

    cfg, store = open_stage("extract", config, root)
    summary = extract_day(store, ds, cfg.extract)
    print_summary(dataclasses.asdict(summary), json)


if __name__ == "__main__":
    main(extract)
