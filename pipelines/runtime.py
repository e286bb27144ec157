"""What every stage entry point shares: options, logging, config + store, and clean failures.

Each stage module exposes one typer command function. The same function is the stage's
``python -m pipelines.<stage>`` entry point and its ``icg <stage>`` subcommand (one implementation,
two doors). Heavy libraries are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from icg_core.config import ICGConfig, load_config
from icg_core.data.schemas import SchemaError
from icg_core.storage import ObjectStore, StorageError, StorageUnavailable

log = logging.getLogger("icg")

RootOpt = Annotated[
    str | None,
    typer.Option("--root", help="Object root (path, file:// or s3://bucket/prefix); default from config."),
]


def ds_option(value: str | None) -> str | None:
    """Accept exactly YYYY-MM-DD (None passes through for optional --ds options)."""
    import datetime as dt

    if value is None:
        return None
    with contextlib.suppress(ValueError):  # not a date at all: the same message as a non-canonical one
        if dt.date.fromisoformat(value).isoformat() == value:
            return value
    raise typer.BadParameter(f"expected a date as YYYY-MM-DD, got {value!r}")


DsOpt = Annotated[
    str,
    typer.Option(
        "--ds", callback=ds_option, help="Logical date of the run, YYYY-MM-DD (the data interval ends here)."
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="YAML config; default $ICG_CONFIG or configs/embedded.yaml values."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the stage summary as JSON only.")]


class StageFailed(RuntimeError):
    """A stage refused to go on (bad input, failed gate). Its message says why."""


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message`` (+ ``exc_info``).

    For log collectors, and for the launcher, which relays each line at its own level.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """Log to stderr as text lines or JSON lines (``operations.log_format``); once per process."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        formatter: logging.Formatter = JsonLogFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)


def open_stage(stage: str, config: Path | None, root: str | None) -> tuple[ICGConfig, ObjectStore]:
    """Load the config and open the object store for a stage, logging where it runs."""
    cfg = load_config(config, root=root)
    setup_logging(cfg.operations.log_format)
    store = ObjectStore.from_config(cfg.storage)
    log.info("stage=%s root=%s", stage, store.root)
    return cfg, store


def print_summary(summary: dict[str, Any], as_json: bool) -> None:
    """Print a stage's summary: JSON for machines (``--json``), ``key: value`` lines for people."""
    if as_json:
        typer.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return
    for key, value in summary.items():
        typer.echo(f"{key}: {_brief(value)}")


def _brief(value: Any) -> str:
    """One line per summary field; long lists (file names) are counted, not printed."""
    if isinstance(value, (list, tuple)) and len(value) > 5:
        return f"[{len(value)} items]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_brief(v)}" for k, v in value.items()) + "}"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def main(command: Callable[..., Any]) -> None:
    """Run one stage command as a script, turning expected failures into a message and exit status 2."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    run_app(app)


REFUSED = 2  # bad input or a failed gate: a retry gives the same answer (Airflow does not retry)
UNAVAILABLE = 1  # the store could not answer: a crash like any other (Airflow retries)


def run_app(app: typer.Typer) -> None:
    """Run a typer app with the exit-code contract of docs/operations.md ("Exit codes").

    Refusals (bad data, failed gates, missing inputs) print ``error: ...`` and exit 2; an unavailable
    store prints one ``error: ...`` line and exits 1; anything else is a crash with its traceback.
    """
    try:
        app()
    except StorageUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(UNAVAILABLE) from None
    except (StageFailed, StorageError, SchemaError, FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(REFUSED) from None
