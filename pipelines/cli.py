"""The ``icg`` command line: one subcommand per stage, each the twin of ``python -m pipelines.<stage>``.

Nothing imports this module; it only wires the stage commands together.
"""

from __future__ import annotations

import typer

from pipelines import extract, imports, publish, validate, world
from pipelines.runtime import run_app

app = typer.Typer(
    help="ICG: personalized cover images at catalog scale. Each command is one pipeline stage.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("world")(world.world)
app.add_typer(imports.app, name="import")
app.command("extract")(extract.extract)
app.command("validate")(validate.validate)
app.command("publish")(publish.publish)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
