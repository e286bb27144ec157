"""Import a public dataset (MovieLens, PixelRec) into the same raw tables the simulator writes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.runtime import ConfigOpt, JsonOpt, RootOpt, open_stage, print_summary, run_app

PathArg = Annotated[
    Path, typer.Argument(help="Folder holding the dataset in its public layout.", exists=True)
]

app = typer.Typer(help="Import a public dataset into raw/ (catalog_items, impressions, cover images).")


@app.command("movielens")
def movielens(
    path: PathArg,
    root: RootOpt = None,
    click_threshold: Annotated[
        float, typer.Option(help="A rating at or above this counts as a click.")
    ] = 4.0,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Import MovieLens (movies.csv, ratings.csv, posters/<movieId>.jpg)."""
    from icg_core.data.importers import import_movielens

    cfg, store = open_stage("import-movielens", config, root)
    print_summary(
        import_movielens(path, store, click_threshold=click_threshold, limits=cfg.validation).to_dict(), json
    )


@app.command("pixelrec")
def pixelrec(
    path: PathArg,
    root: RootOpt = None,
    subset: Annotated[
        str | None,
        typer.Option(help="Which subset's CSVs to read (e.g. Pixel200K) when several are present."),
    ] = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Import PixelRec (pixelrec_interaction/, pixelrec_iteminfo/, cover/<item_id>.jpg)."""
    from icg_core.data.importers import import_pixelrec

    cfg, store = open_stage("import-pixelrec", config, root)
    print_summary(import_pixelrec(path, store, subset=subset, limits=cfg.validation).to_dict(), json)


if __name__ == "__main__":
    run_app(app)
