"""Progress lines for long loops: "N of M <unit> (P%), R <unit>/s, ETA ..." at most every few seconds.

Every stage that can run longer than a minute logs one of these at least every ``PROGRESS_EVERY_S``
seconds (training steps, covers, items), so a task log under Airflow never goes quiet for minutes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 20.0  # least seconds between two progress lines of a stage ("N of M covers, ETA")


def format_duration(seconds: float) -> str:
    """``45s``, ``10m19s`` or ``2h05m``."""
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def progress_line(label: str, done: int, total: int, elapsed_s: float, unit: str, initial: int = 0) -> str:
    """``"<label>: 480 of 2400 covers (20%), 3.1 covers/s, ETA 10m19s"`` (``done in ...`` once all are done).

    The rate is the ``done - initial`` units of this run (``initial``: done before, e.g. a resumed
    training run) over ``elapsed_s`` (start-up included), the ETA the rest at that rate.
    """
    rate = (done - initial) / elapsed_s if elapsed_s > 0 else 0.0
    percent = 100 * done // total if total > 0 else 100
    line = f"{label}: {done} of {total} {unit} ({percent}%), {rate:.1f} {unit}/s"
    if done >= total:
        return f"{line}, done in {format_duration(elapsed_s)}"
    return f"{line}, ETA {format_duration((total - done) / rate) if rate > 0 else 'unknown'}"


@dataclass
class Progress:
    """Logs how far a stage is while its rows stream in: at most one line every ``every_s`` seconds, then a last one.

    Call :meth:`add` as work is done (a Ray stage passes it to ``collect``), :meth:`finish` at the end.
    """

    label: str  # what runs, e.g. "generate ds=2026-11-15"
    total: int  # rows expected
    unit: str = "covers"  # what a row is
    every_s: float = PROGRESS_EVERY_S  # least seconds between two lines
    clock: Callable[[], float] = time.monotonic  # seconds; tests pass a fake clock
    initial: int = 0  # units already done when this run started (a resumed training run)
    done: int = field(init=False)
    started: float = field(init=False)
    logged_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.logged_at = self.clock()
        self.done = self.initial

    def add(self, rows: int) -> str | None:
        """Count ``rows`` more; log and return a line when ``every_s`` passed since the last one."""
        self.done += rows
        now = self.clock()
        if now - self.logged_at < self.every_s:
            return None
        self.logged_at = now
        return self._log(now)

    def finish(self) -> str:
        """Log and return the last line."""
        return self._log(self.clock())

    def _log(self, now: float) -> str:
        line = progress_line(self.label, self.done, self.total, now - self.started, self.unit, self.initial)
        log.info("%s", line)
        return line
