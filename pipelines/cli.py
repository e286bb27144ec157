"""The ``icg`` command line: one subcommand per stage, each the twin of ``python -m pipelines.<stage>``.

Nothing imports this module; it only wires the stage commands together.
"""

from __future__ import annotations

import typer

from pipelines import (
    bootstrap,
    champion,
    cover,
    evaluate,
    extract,
    features,
    finetune,
    generate,
    imports,
    migrate,
    publish,
    report,
    rewards,
    show_config,
    users,
    validate,
    world,
)
from pipelines.runtime import run_app

app = typer.Typer(
    help="ICG: personalized cover images at catalog scale. Each command is one pipeline stage.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("world")(world.world)
app.add_typer(imports.app, name="import")
app.add_typer(show_config.app, name="config")
app.command("extract")(extract.extract)
app.command("validate")(validate.validate)
app.command("features")(features.features)
app.command("generate")(generate.generate)
app.command("publish")(publish.publish)
app.command("bootstrap")(bootstrap.bootstrap)
app.command("generate-sample")(bootstrap.generate_sample)
app.command("train-users")(users.train_users)
app.command("train-rewards")(rewards.train_rewards)
app.command("finetune")(finetune.finetune)
app.command("evaluate")(evaluate.evaluate)
app.command("report")(report.report)
app.command("migrate-keys")(migrate.migrate_keys)
app.command("cover")(cover.cover)
app.command("champion")(champion.champion)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
