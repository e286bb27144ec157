"""The `icg` command line: every stage has help, and `python -m pipelines.<stage>` is the same command."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pipelines.cli import app

STAGES = [["world"], ["extract"], ["validate"], ["publish"], ["import", "movielens"], ["import", "pixelrec"]]
STAGES += [["bootstrap"], ["generate-sample"], ["train-users"], ["train-rewards"], ["finetune"]]
STAGES += [["features"], ["generate"], ["evaluate"], ["report"], ["migrate-keys"]]


def test_top_level_help_lists_every_stage() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in ("world", "extract", "validate", "import"):
        assert stage in result.output


@pytest.mark.parametrize("words", STAGES, ids=lambda w: "-".join(w))
def test_every_command_has_help(words: list[str]) -> None:
    result = CliRunner().invoke(app, [*words, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


MODULES = ["extract", "validate", "publish", "world", "imports"]
MODULES += ["users", "rewards", "finetune"]
MODULES += ["features", "generate", "evaluate", "report", "migrate"]


@pytest.mark.parametrize("module", MODULES)
def test_python_m_twin_has_the_same_options(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", f"pipelines.{module}", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "--root" in out.stdout or "movielens" in out.stdout


def test_bad_ds_is_a_clear_error_with_status_2(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.extract", "--root", str(tmp_path), "--ds", "26-11-2026"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "YYYY-MM-DD" in out.stderr and "26-11-2026" in out.stderr
