"""``icg champion``: which generator is in production, tonight's challenger, the promotions; and a manual rollback.

The nightly's evaluate stage promotes challengers (:mod:`icg_core.evaluation.promotion`). ``--set
VERSION`` makes an existing version the champion by hand (a rollback, say): recorded and logged
like any promotion, with the reason given.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.runtime import ConfigOpt, JsonOpt, RootOpt, main, open_stage, print_summary


def champion(
    set_version: Annotated[
        str | None, typer.Option("--set", help="Make this existing generator version the champion.")
    ] = None,
    reason: Annotated[
        str, typer.Option("--reason", help="Why (recorded with a manual change).")
    ] = "set by hand",
    root: RootOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Show the champion, the challenger and past promotions; with --set, change the champion."""
    from icg_core import layout
    from icg_core.evaluation.promotion import promotions, set_champion
    from icg_core.models.checkpoint import checkpoint_exists

    cfg, store = open_stage("champion", config, root)
    name = cfg.models.generator_name
    if set_version is not None:
        if not checkpoint_exists(store, name, set_version):
            raise ValueError(f"generator {name!r} has no complete version {set_version!r}")
        set_champion(store, name, set_version, reason)
    print_summary(
        {
            "generator": name,
            "champion": layout.latest_version(store, name),
            "challenger": layout.challenger(store, name),
            "promotions": promotions(store, name),
        },
        json,
    )


if __name__ == "__main__":
    main(champion)
