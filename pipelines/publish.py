"""Stage publish: check the day's staged covers manifest and make it the one readers see.

Expected rows are the day's validated catalog items x the day's user segments; a missing table is a
clear error before anything is read or written. The stage is :func:`icg_core.stages.publish.run_publish`.
"""

from __future__ import annotations

import dataclasses

from pipelines.runtime import ConfigOpt, DsOpt, JsonOpt, RootOpt, main, open_stage, print_summary


def publish(ds: DsOpt, root: RootOpt = None, config: ConfigOpt = None, json: JsonOpt = False) -> None:
    """Validate the staged covers manifest for DS and publish it (manifests/covers, _latest)."""
    from icg_core.stages.publish import run_publish

    cfg, store = open_stage("publish", config, root)
    print_summary(dataclasses.asdict(run_publish(store, cfg, ds)), json)


if __name__ == "__main__":
    main(publish)
