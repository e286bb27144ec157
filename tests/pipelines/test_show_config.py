"""`icg config show`: every effective value with its source, one field for scripts, JSON for machines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app


def test_each_value_says_where_it_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text("models:\n  device: cuda\noperations:\n  stage_timeout_minutes: {generate: 30}\n")
    monkeypatch.setenv("ICG__GENERATE__GPUS_PER_ACTOR", "1")
    result = CliRunner().invoke(
        app, ["config", "show", "--config", str(config), "--root", "s3://b/icg", "--json"]
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["models.device"] == {"value": "cuda", "source": f"file {config}"}
    assert shown["generate.gpus_per_actor"] == {"value": 1, "source": "env ICG__GENERATE__GPUS_PER_ACTOR"}
    assert shown["storage.root"] == {"value": "s3://b/icg", "source": "--root"}
    assert shown["operations.stage_timeout_minutes.generate"]["value"] == 30
    # naming one stage's timeout keeps the other stages' defaults
    assert shown["operations.stage_timeout_minutes.bootstrap"] == {"value": 240, "source": "default"}
    assert shown["models.dtype"]["source"] == "default"


def test_one_field_alone_for_scripts_and_a_clear_error_for_a_wrong_name() -> None:
    result = CliRunner().invoke(app, ["config", "show", "--field", "operations.gpu_pool"])
    assert result.exit_code == 0 and result.stdout == "icg_gpu\n"
    wrong = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "config", "show", "--field", "operations.gpu_pol"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert wrong.returncode == 2 and "error: no config field 'operations.gpu_pol'" in wrong.stderr


def test_the_table_lists_every_field() -> None:
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert any(line.startswith("storage.root") and line.endswith("# default") for line in lines)
    assert len(lines) > 150
