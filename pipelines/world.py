"""Generate the embedded world: a seeded simulator writing the raw tables a platform would have.

The simulator's hidden user taste (the oracle) is written apart, under ``oracle/``, for evaluation only.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.runtime import ConfigOpt, JsonOpt, main, open_stage, print_summary


def world(
    out: Annotated[
        str | None, typer.Option("--out", "--root", help="Object root to write the world under.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Simulator seed.")] = None,
    items: Annotated[int | None, typer.Option(help="Catalog size.")] = None,
    users: Annotated[int | None, typer.Option(help="Number of users.")] = None,
    categories: Annotated[int | None, typer.Option(help="Number of categories (visual motifs).")] = None,
    taste_groups: Annotated[int | None, typer.Option(help="Latent taste groups of users.")] = None,
    taste_strength: Annotated[
        float | None, typer.Option(help="How much cover attributes move clicks.")
    ] = None,
    click_noise: Annotated[float | None, typer.Option(help="Share of clicks that ignore the cover.")] = None,
    days: Annotated[int | None, typer.Option(help="Days of impression logs.")] = None,
    impressions_per_day: Annotated[int | None, typer.Option(help="Impressions logged per day.")] = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Generate the embedded world (catalog, covers, impression logs, and the hidden oracle)."""
    from icg_core.world.simulator import generate_world

    cfg, store = open_stage("world", config, out)
    knobs = {
        "seed": seed, "n_items": items, "n_users": users, "n_categories": categories,
        "n_taste_groups": taste_groups, "taste_strength": taste_strength, "click_noise": click_noise,
        "days": days, "impressions_per_day": impressions_per_day,
    }  # fmt: skip
    world_cfg = cfg.world.model_copy(update={k: v for k, v in knobs.items() if v is not None})
    world_cfg = type(world_cfg).model_validate(world_cfg.model_dump())  # re-validate the overrides
    summary = generate_world(store, world_cfg)
    print_summary(summary.to_dict(), json)


if __name__ == "__main__":
    main(world)
