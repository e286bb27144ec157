"""``icg migrate-keys``: make a root's tables name objects by keys relative to the root (once, after moving it)."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from pipelines.runtime import ConfigOpt, JsonOpt, RootOpt, main, open_stage, print_summary


def migrate_keys(
    root: RootOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would change.")] = False,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Rewrite absolute object URIs in every table under the root as keys relative to it."""
    from icg_core.stages.migrate import migrate_keys as migrate

    _, store = open_stage("migrate-keys", config, root)
    print_summary(dataclasses.asdict(migrate(store, dry_run=dry_run)), json)


if __name__ == "__main__":
    main(migrate_keys)
