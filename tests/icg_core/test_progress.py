"""Progress lines: done of total, rate and ETA, at most one line per interval and a last one."""

from __future__ import annotations

import logging

import pytest

from icg_core.progress import Progress, format_duration, progress_line


def test_progress_lines_say_done_of_total_rate_and_eta() -> None:
    label = "generate ds=2026-11-15"
    assert progress_line(label, 480, 2400, 480 / 3.1, "covers") == (
        "generate ds=2026-11-15: 480 of 2400 covers (20%), 3.1 covers/s, ETA 10m19s"
    )
    assert progress_line(label, 0, 10, 5.0, "covers").endswith("(0%), 0.0 covers/s, ETA unknown")
    assert progress_line(label, 10, 10, 4.0, "items") == (
        "generate ds=2026-11-15: 10 of 10 items (100%), 2.5 items/s, done in 4s"
    )
    assert [format_duration(s) for s in (0, 59.4, 60, 619, 3600, 7500)] == [
        "0s", "59s", "1m00s", "10m19s", "1h00m", "2h05m",
    ]  # fmt: skip


def test_progress_logs_at_most_every_interval_and_a_last_line(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    progress = Progress("features ds=2026-11-15", total=100, unit="items", every_s=20, clock=lambda: now[0])
    logged = []
    with caplog.at_level(logging.INFO, logger="icg_core.progress"):
        for seconds, rows in [(5, 10), (19.9, 10), (20, 10), (30, 10), (41, 10), (61, 50)]:
            now[0] = 100.0 + seconds
            logged.append(progress.add(rows))
        now[0] = 170.0
        last = progress.finish()
    assert [line is not None for line in logged] == [False, False, True, False, True, True]
    assert logged[2] == "features ds=2026-11-15: 30 of 100 items (30%), 1.5 items/s, ETA 47s"
    assert last == "features ds=2026-11-15: 100 of 100 items (100%), 1.4 items/s, done in 1m10s"
    assert [r.getMessage() for r in caplog.records] == [*filter(None, logged), last]
