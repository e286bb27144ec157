"""``icg cover``: which cover a user sees for an item, read from the published manifests alone.

The reference lookup behind docs/consumers.md (the same answer as its pandas, pyarrow, DuckDB and
polars queries). It is :func:`icg_core.stages.publish.cover_for`.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from pipelines.runtime import ConfigOpt, JsonOpt, RootOpt, ds_option, main, open_stage, print_summary


def cover(
    user: Annotated[str, typer.Option("--user", help="The user id.")],
    item: Annotated[str, typer.Option("--item", help="The item id.")],
    ds: Annotated[
        str | None,
        typer.Option("--ds", callback=ds_option, help="A published day, YYYY-MM-DD; default the latest."),
    ] = None,
    root: RootOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Print the published cover USER sees for ITEM (segment, cover key and URL, generator, publish id)."""
    from icg_core.stages.publish import cover_for

    _, store = open_stage("cover", config, root)
    print_summary(dataclasses.asdict(cover_for(store, user, item, ds)), json)


if __name__ == "__main__":
    main(cover)
