"""What every stage entry point shares: logs as text or JSON lines (operations.log_format)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _stage_stderr(tmp_path: Path, **env: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.report", "--root", str(tmp_path), "--ds", "2026-11-15"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )  # fmt: skip
    assert out.returncode == 2  # no metrics: a refusal, after the stage logged where it runs
    return out.stderr.splitlines()


def test_json_logs_keep_level_logger_and_message(tmp_path: Path) -> None:
    lines = _stage_stderr(tmp_path, ICG__OPERATIONS__LOG_FORMAT="json")
    records = [json.loads(line) for line in lines if line.startswith("{")]
    [opened] = [r for r in records if r["message"].startswith("stage=report root=")]
    assert opened["level"] == "INFO" and opened["logger"] == "icg" and opened["ts"].endswith("Z")
    assert lines[-1].startswith("error: no metrics")  # the refusal stays a plain line for people


def test_text_logs_by_default(tmp_path: Path) -> None:
    lines = _stage_stderr(tmp_path)
    assert any(" INFO icg: stage=report root=" in line for line in lines)
    assert not any(line.startswith("{") for line in lines)
