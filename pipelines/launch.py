"""Launch a stage entry point for one ``ds``: as a local process, or as a Ray job on a cluster.

This is what an orchestrator (the Airflow DAGs) calls. Both ways run exactly the same command,
``python -m pipelines.<stage> --ds DS [--root ROOT] [--config FILE] [args...]``:

- locally (no Ray address): a child process, so the orchestrator's own process never imports torch
  or holds a model; its output is streamed into the caller's log;
- on a cluster (``ray_address`` given, e.g. ``http://ray-head:8265``): submitted with the Ray Jobs API
  (``JobSubmissionClient``), its log followed while it runs (``tail_job_logs``).

Either way the stage's log lines reach the caller's log as they are written, at the level the stage
logged them at (the launcher asks the stage for JSON log lines, ``operations.log_format``), and a
launched stage can be stopped from another place (:meth:`LaunchedStage.stop`: an Airflow task's
``on_kill``, a timeout): the local process group is terminated, the Ray job stopped.

Exit status 2 means the stage *refused* (bad input, a failed gate): retrying cannot help, so it is
raised as :class:`StageRefused`; anything else that fails is :class:`StageCrashed` (worth a retry).
A Ray job's exit status is the driver's, as the Jobs API reports it (``JobDetails.driver_exit_code``).

The interpreter: locally, this process's own (``sys.executable``). On a cluster, ``python`` as the
cluster's nodes find it on their PATH (an image's or an activated venv's interpreter, as in Ray's
own examples): the orchestrator's path means nothing on another machine. ``ICG_RAY_JOB_PYTHON`` or
``job_python=`` names another one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

REFUSED_EXIT_CODE = 2
JOB_PYTHON_ENV = "ICG_RAY_JOB_PYTHON"
TAIL_LINES = 60  # output lines kept for the exception message and StageRun.output_tail
STOP_GRACE_S = 20.0  # a stopped local stage gets this long after SIGTERM before SIGKILL
# The stage writes one JSON object per log line, so its levels survive the trip into our log.
CHILD_LOG_ENV = {"ICG__OPERATIONS__LOG_FORMAT": "json"}
# Ray prefixes what its workers print with "(task_or_actor pid=N[, ip=A]) ", often in colour.
RAY_WORKER_PREFIX = re.compile(r"^(?:\x1b\[[0-9;]*m)*\([^)]*pid=\d+[^)]*\)(?:\x1b\[[0-9;]*m)* ")
# Our text log lines ("date time LEVEL logger: message") and Ray's ("date time,ms\tLEVEL file:line -- message").
TEXT_LOG_LINE = re.compile(r"^\S+ \S+\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+?)(?::| --) (.*)$")


class StageCrashed(RuntimeError):
    """The stage failed unexpectedly (a crash, a lost worker, a timeout): a retry may succeed."""


class StageRefused(RuntimeError):
    """The stage refused its input or a gate failed (exit status 2): a retry cannot help."""


@dataclass(frozen=True)
class StageRun:
    stage: str
    ds: str
    where: str  # "local" or the Ray job id
    seconds: float
    output_tail: str


def stage_command(
    stage: str, *, ds: str, root: str | None = None, config: str | None = None, args: Sequence[str] = ()
) -> list[str]:
    """The argv of a stage entry point (without the interpreter)."""
    command = ["-m", f"pipelines.{stage}", "--ds", ds]
    if root:
        command += ["--root", root]
    if config:
        command += ["--config", config]
    return command + list(args)


def check_ray_address(address: str) -> str:
    """``address`` if it is a Ray dashboard URL (``http(s)://host[:port]``), the Jobs API's address.

    Raises:
        ValueError: anything else, with what was expected (``ray://`` and ``host:6379`` are the
            client and GCS addresses, which the Jobs API does not serve).
    """
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(
            f"ray_address must be the Ray dashboard's HTTP address, e.g. http://ray-head:8265, got "
            f"{address!r} (the Jobs API is served by the dashboard, not by ray:// or the GCS port)"
        )
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"ray_address {address!r}: {exc}") from None
    return address


def start_stage(
    stage: str,
    *,
    ds: str,
    root: str | None = None,
    config: str | None = None,
    args: Sequence[str] = (),
    ray_address: str | None = None,
    env: dict[str, str] | None = None,
    job_python: str | None = None,
) -> LaunchedStage:
    """Start ``pipelines.<stage>`` for ``ds``; ``.wait(timeout_s)`` on the result runs it to the end.

    Args:
        stage: module name under ``pipelines`` (``extract``, ``validate``, ...).
        ds: logical date, YYYY-MM-DD.
        root, config: passed through as ``--root`` / ``--config``.
        args: further stage options.
        ray_address: Ray dashboard address; when set the stage runs as a Ray job on that cluster.
        env: extra environment variables for the stage (local process or the job's runtime_env).
        job_python: interpreter of a Ray job's entrypoint (default ``$ICG_RAY_JOB_PYTHON`` or
            ``python``); local runs always use this process's interpreter.

    Returns:
        The running stage: :meth:`LaunchedStage.wait` returns its :class:`StageRun` or raises
        StageRefused (exit status 2, its message in the exception) / StageCrashed (anything else);
        :meth:`LaunchedStage.stop` stops it from elsewhere.
    """
    argv = stage_command(stage, ds=ds, root=root, config=config, args=args)
    env = {**CHILD_LOG_ENV, **(env or {})}
    if ray_address:
        python = job_python or os.environ.get(JOB_PYTHON_ENV) or "python"
        return RayJobStage.submit(stage, ds, [python, *argv], check_ray_address(ray_address), env)
    return LocalStage.start(stage, ds, [sys.executable, *argv], env)


def _json_record(text: str) -> tuple[int, str, str] | None:
    """(level, logger, message) of one of our JSON log lines; None for any other line."""
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
        level = logging.getLevelName(str(record["level"]).upper())
        message = str(record["message"]) + (f"\n{record['exc_info']}" if record.get("exc_info") else "")
        return (level if isinstance(level, int) else logging.INFO), str(record.get("logger", "")), message
    except (ValueError, KeyError, TypeError):
        return None  # JSON-looking output that is not a log record: relayed as text


class LineRelay:
    """Copies a stage's output lines into this process's log at the level the stage gave them.

    JSON lines (the stage's own log records) keep their level and logger; a traceback and an
    ``error: ...`` line are errors; any other line (a summary, a progress bar) is info.
    """

    def __init__(self, stage: str, where: str) -> None:
        self.stage, self.where = stage, where
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._in_traceback = False
        self._partial = ""

    def feed(self, chunk: str) -> None:
        """Relay every complete line of ``chunk`` (a partial last line waits for the next chunk)."""
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.line(line)

    def flush(self) -> None:
        if self._partial:
            self.line(self._partial)
            self._partial = ""

    def line(self, raw: str) -> None:
        text = RAY_WORKER_PREFIX.sub("", raw.rstrip("\r\n"))
        level, name, message = self._parse(text)
        log.log(level, "[%s %s] %s%s", self.stage, self.where, f"{name}: " if name else "", message)
        self.tail.append(message if name else text)

    def _parse(self, text: str) -> tuple[int, str, str]:
        record = _json_record(text)
        if record is not None:
            return record
        matched = TEXT_LOG_LINE.match(text)
        if matched:
            return int(logging.getLevelName(matched.group(1))), matched.group(2), matched.group(3)
        if text.startswith("Traceback (most recent call last)"):
            self._in_traceback = True
        elif self._in_traceback and text and not text.startswith(" "):
            self._in_traceback = False
            return logging.ERROR, "", text  # the exception line closes the traceback
        return (logging.ERROR if self._in_traceback or text.startswith("error:") else logging.INFO), "", text


@dataclass
class LaunchedStage(ABC):
    """A stage started by :func:`start_stage`: wait for it, or stop it from elsewhere."""

    stage: str
    ds: str
    where: str
    started: float = field(default_factory=time.monotonic)
    stopped_because: str | None = None

    def wait(self, timeout_s: float | None = None) -> StageRun:
        """Block until the stage ends (or ``timeout_s`` passes: then stop it and raise StageCrashed)."""
        code, tail = self._wait(timeout_s)
        if code is None:
            self.stop(f"ran past {timeout_s}s")
            raise StageCrashed(
                f"stage {self.stage} ds={self.ds} ({self.where}) ran past {timeout_s}s and was stopped"
            )
        if self.stopped_because:
            raise StageCrashed(
                f"stage {self.stage} ds={self.ds} ({self.where}) stopped: {self.stopped_because}"
            )
        return _finish(self.stage, self.ds, self.where, code, tail, self.started)

    def stop(self, reason: str = "stopped by the caller") -> None:
        """Stop the stage (idempotent); a waiting :meth:`wait` then raises StageCrashed."""
        if self.stopped_because is None:
            self.stopped_because = reason
            log.warning("stage=%s ds=%s stopping %s: %s", self.stage, self.ds, self.where, reason)
            self._stop()

    @abstractmethod
    def _wait(self, timeout_s: float | None) -> tuple[int | None, str]:
        """(exit status, output tail) once the stage ended; (None, "") when ``timeout_s`` passed first."""

    @abstractmethod
    def _stop(self) -> None:
        """Stop the running stage and return once it is stopped (or stopping cannot be done)."""


@dataclass
class LocalStage(LaunchedStage):
    """A stage running as a child process of this one, in its own process group."""

    process: subprocess.Popen | None = None
    relay: LineRelay | None = None
    reader: threading.Thread | None = None

    @classmethod
    def start(cls, stage: str, ds: str, command: list[str], env: dict[str, str]) -> LocalStage:
        log.info("stage=%s ds=%s launching locally: %s", stage, ds, shlex.join(command))
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env},
            start_new_session=True,  # its own process group: stop() reaches local Ray's workers too
        )
        relay = LineRelay(stage, "local")
        launched = cls(stage, ds, "local", process=process, relay=relay)
        # A thread, so the timeout holds even while the stage prints nothing.
        launched.reader = threading.Thread(target=launched._pump, name=f"stage-{stage}-output", daemon=True)
        launched.reader.start()
        return launched

    def _pump(self) -> None:
        assert self.process is not None and self.process.stdout is not None and self.relay is not None
        for line in self.process.stdout:
            self.relay.line(line)

    def _wait(self, timeout_s: float | None) -> tuple[int | None, str]:
        assert self.process is not None and self.relay is not None and self.reader is not None
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None, ""
        self.reader.join(timeout=10)
        return code, "\n".join(self.relay.tail)

    def _stop(self) -> None:
        assert self.process is not None
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass  # already gone


@dataclass
class RayJobStage(LaunchedStage):
    """A stage running as a Ray job, submitted through the cluster's Jobs API."""

    client: Any = None  # ray.job_submission.JobSubmissionClient

    @classmethod
    def submit(
        cls, stage: str, ds: str, command: list[str], address: str, env: dict[str, str]
    ) -> RayJobStage:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(address)
        entrypoint = shlex.join(command)
        job_id = client.submit_job(
            entrypoint=entrypoint,
            submission_id=f"icg-{stage}-{ds}-{uuid.uuid4().hex[:8]}",
            runtime_env={"env_vars": env} if env else None,
            metadata={"stage": stage, "ds": ds},
        )
        log.info("stage=%s ds=%s submitted Ray job %s to %s: %s", stage, ds, job_id, address, entrypoint)
        return cls(stage, ds, job_id, client=client)

    def _wait(self, timeout_s: float | None) -> tuple[int | None, str]:
        relay = LineRelay(self.stage, self.where)
        try:
            asyncio.run(asyncio.wait_for(self._follow(relay.feed), timeout_s))
        except TimeoutError:
            return None, ""
        relay.flush()
        status = self._terminal_status()
        return self._exit_code(status, relay), "\n".join(relay.tail)

    async def _follow(self, feed: Callable[[str], None]) -> None:
        # The stream ends when the job does; a dropped connection is not the job's end, so the
        # status poll in _terminal_status decides.
        try:
            async for chunk in self.client.tail_job_logs(self.where):
                feed(chunk)
        except RuntimeError as exc:
            log.warning("stage=%s Ray job %s: log stream ended early: %s", self.stage, self.where, exc)

    def _terminal_status(self) -> Any:
        while True:
            status = self.client.get_job_status(self.where)
            if status.is_terminal():
                return status
            time.sleep(2.0)

    def _exit_code(self, status: Any, relay: LineRelay) -> int:
        from ray.job_submission import JobStatus

        if status == JobStatus.SUCCEEDED:
            return 0
        info = self.client.get_job_info(self.where)
        if info.driver_exit_code is not None:
            return int(info.driver_exit_code)
        # No driver exit status: the job never ran its entrypoint (runtime env setup failed, the job
        # was stopped, the supervisor died). Not a refusal: report Ray's message as a crash.
        relay.line(f"error: Ray job {self.where} ended {status} without an exit status: {info.message}")
        return 1

    def _stop(self) -> None:
        try:
            self.client.stop_job(self.where)
        except Exception as exc:  # noqa: BLE001 - stopping is best effort; the job's own timeout remains
            log.error("stage=%s could not stop Ray job %s: %s", self.stage, self.where, exc)


def _finish(stage: str, ds: str, where: str, code: int, tail: str, started: float) -> StageRun:
    seconds = time.monotonic() - started
    if code == REFUSED_EXIT_CODE:
        raise StageRefused(f"stage {stage} ds={ds} refused: {_refusal_reason(tail)}")
    if code != 0:
        raise StageCrashed(f"stage {stage} ds={ds} failed with exit status {code}:\n{tail[-4000:]}")
    log.info("stage=%s ds=%s done in %.1fs (%s)", stage, ds, seconds, where)
    return StageRun(stage, ds, where, seconds, tail)


def _refusal_reason(tail: str, context_lines: int = 20) -> str:
    """The stage's ``error: ...`` message, then the output that led to it (e.g. the failed checks).

    The message may span lines (a list of problems); without one, the tail is the reason.
    """
    lines = tail.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    if not starts:
        return tail[-4000:]
    error = "\n".join(lines[starts[-1] :])[len("error:") :].strip()
    before = "\n".join(lines[max(0, starts[-1] - context_lines) : starts[-1]])
    return f"{error}\n--- stage output before the error ---\n{before}"[:6000] if before else error[:6000]
