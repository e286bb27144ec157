"""Stage report: `icg report` and `python -m pipelines.report` write the page or refuse without metrics."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from icg_core import layout
from icg_core.storage import ObjectStore
from pipelines.cli import app
from tests.icg_core.report.test_page import DS, write_fixture_run


def test_icg_report_writes_the_page_and_prints_where(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    write_fixture_run(store, segments=2, items=2)
    result = CliRunner().invoke(app, ["report", "--root", str(tmp_path), "--ds", DS, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["key"] == layout.report_page(DS) and summary["uri"] == store.uri(layout.report_page(DS))
    assert summary["bytes"] == store.size(layout.report_page(DS)) > 1000


def test_missing_metrics_is_a_refusal_with_status_2(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.report", "--root", str(tmp_path), "--ds", DS],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "error: no metrics for ds=2026-11-15" in out.stderr and "icg evaluate" in out.stderr
    assert not ObjectStore(str(tmp_path)).exists(layout.report_page(DS))


def test_a_failed_run_gets_a_page_that_opens_with_its_failures(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    failure = "validate: stage validate ds=2026-11-15 refused: validation failed: item_00003 <unreadable>"
    result = CliRunner().invoke(
        app, ["report", "--root", str(tmp_path), "--ds", DS, "--failure", failure, "--json"]
    )
    assert result.exit_code == 0, result.output
    page = store.get_bytes(layout.report_page(DS)).decode()
    assert "This run FAILED" in page and "<b>validate</b>" in page
    assert "item_00003 &lt;unreadable&gt;" in page  # the reason, escaped


def test_failures_come_first_on_a_full_report(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    write_fixture_run(store, segments=2, items=2)
    failure = "publish: stage publish ds=2026-11-15 refused: 3 covers missing"
    result = CliRunner().invoke(app, ["report", "--root", str(tmp_path), "--ds", DS, "--failure", failure])
    assert result.exit_code == 0, result.output
    page = store.get_bytes(layout.report_page(DS)).decode()
    assert "3 covers missing" in page and "Quality gate" in page  # the rest of the report is still there
    assert page.index("This run FAILED") < page.index("Quality gate checks")
