"""``icg config show``: the effective configuration, and where each value came from.

Resolves exactly as every stage does (defaults, ``--config`` / ``$ICG_CONFIG``, ``ICG__*`` variables,
``--root``), so it answers "which root, which device, which timeout will tonight's run use?".
``--field operations.gpu_pool`` prints one value alone, for scripts.
"""

from __future__ import annotations

import json as jsonlib
from typing import Annotated

import typer

from pipelines.runtime import ConfigOpt, JsonOpt, RootOpt

app = typer.Typer(help="The effective configuration.", add_completion=False, no_args_is_help=True)

FieldOpt = Annotated[
    str | None, typer.Option("--field", help="Print only this field's value (section.field), for scripts.")
]


@app.command("show")
def show(
    config: ConfigOpt = None, root: RootOpt = None, field: FieldOpt = None, json: JsonOpt = False
) -> None:
    """Print every field's effective value with its source (default, file, env variable, --root)."""
    from icg_core.config import explain_config

    rows = explain_config(config, root=root)
    if field is not None:
        values = {name: value for name, value, _ in rows}
        if field not in values:
            raise ValueError(f"no config field {field!r} (see `icg config show` for the names)")
        value = values[field]
        typer.echo(value if isinstance(value, str) else jsonlib.dumps(value))
        return
    if json:
        typer.echo(
            jsonlib.dumps(
                {name: {"value": value, "source": source} for name, value, source in rows}, indent=2
            )
        )
        return
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        typer.echo(f"{name:<{width}}  {jsonlib.dumps(value):<30}  # {source}")
