"""Launch a stage entry point for one ``ds``: as a local process, or as a Ray job on a cluster.

This is what an orchestrator (the Airflow DAGs) calls. Both ways run exactly the same command,
``python -m pipelines.<stage> --ds DS [--root ROOT] [--config FILE] [args...]``:

- locally (no Ray address): a child process, so the orchestrator's own process never imports torch
  or holds a model; its output is streamed into the caller's log;
- on a cluster (``ray_address`` given, e.g. ``http://ray-head:8265``): submitted with the Ray Jobs API
  (``JobSubmissionClient``), followed until it ends, its logs copied into the caller's log.

Exit status 2 means the stage *refused* (bad input, a failed gate): retrying cannot help, so it is
raised as :class:`StageRefused`; anything else that fails is :class:`StageCrashed` (worth a retry).
A Ray job's exit status is the driver's, as the Jobs API reports it (``JobDetails.driver_exit_code``).

The interpreter: locally, this process's own (``sys.executable``). On a cluster, ``python`` as the
cluster's nodes find it on their PATH (an image's or an activated venv's interpreter, as in Ray's
own examples): the orchestrator's path means nothing on another machine. ``ICG_RAY_JOB_PYTHON`` or
``job_python=`` names another one.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

REFUSED_EXIT_CODE = 2
JOB_PYTHON_ENV = "ICG_RAY_JOB_PYTHON"
TAIL_LINES = 60  # output lines kept for the exception message and StageRun.output_tail


class StageCrashed(RuntimeError):
    """The stage failed unexpectedly (a crash, a lost worker): a retry may succeed."""


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


def run_stage(
    stage: str,
    *,
    ds: str,
    root: str | None = None,
    config: str | None = None,
    args: Sequence[str] = (),
    ray_address: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
    job_python: str | None = None,
) -> StageRun:
    """Run ``pipelines.<stage>`` for ``ds`` and wait for it.

    Args:
        stage: module name under ``pipelines`` (``extract``, ``validate``, ...).
        ds: logical date, YYYY-MM-DD.
        root, config: passed through as ``--root`` / ``--config``.
        args: further stage options.
        ray_address: Ray dashboard address; when set the stage runs as a Ray job on that cluster.
        env: extra environment variables for the stage (local process or the job's runtime_env).
        timeout_s: give up (and stop the stage) after this many seconds.
        job_python: interpreter of a Ray job's entrypoint (default ``$ICG_RAY_JOB_PYTHON`` or
            ``python``); local runs always use this process's interpreter.

    Raises:
        StageRefused: the stage exited with status 2 (its message is in the exception).
        StageCrashed: any other failure.
    """
    argv = stage_command(stage, ds=ds, root=root, config=config, args=args)
    if ray_address:
        python = job_python or os.environ.get(JOB_PYTHON_ENV) or "python"
        return _run_ray_job(stage, ds, [python, *argv], ray_address, env or {}, timeout_s)
    return _run_local(stage, ds, argv, env, timeout_s)


def _run_local(
    stage: str, ds: str, argv: list[str], env: dict[str, str] | None, timeout_s: float | None
) -> StageRun:
    started = time.monotonic()
    command = [sys.executable, *argv]
    log.info("stage=%s ds=%s launching locally: %s", stage, ds, shlex.join(command))
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    tail: deque[str] = deque(maxlen=TAIL_LINES)

    def pump() -> None:
        # A thread, so the timeout holds even while the stage prints nothing.
        assert process.stdout is not None
        for line in process.stdout:
            log.info("[%s] %s", stage, line.rstrip())
            tail.append(line.rstrip("\n"))

    reader = threading.Thread(target=pump, name=f"stage-{stage}-output", daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise StageCrashed(f"stage {stage} ds={ds} ran past {timeout_s}s and was stopped") from None
    finally:
        reader.join(timeout=10)
    return _finish(stage, ds, "local", code, "\n".join(tail), started)


def _run_ray_job(
    stage: str, ds: str, command: list[str], address: str, env: dict[str, str], timeout_s: float | None
) -> StageRun:
    from ray.job_submission import JobStatus, JobSubmissionClient

    started = time.monotonic()
    client = JobSubmissionClient(address)
    entrypoint = shlex.join(command)
    submission_id = f"icg-{stage}-{ds}-{uuid.uuid4().hex[:8]}"
    job_id = client.submit_job(
        entrypoint=entrypoint,
        submission_id=submission_id,
        runtime_env={"env_vars": env} if env else None,
        metadata={"stage": stage, "ds": ds},
    )
    log.info("stage=%s ds=%s submitted Ray job %s to %s: %s", stage, ds, job_id, address, entrypoint)
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            break
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            client.stop_job(job_id)
            raise StageCrashed(
                f"Ray job {job_id} (stage {stage} ds={ds}) ran past {timeout_s}s and was stopped"
            )
        time.sleep(1.0)
    logs = client.get_job_logs(job_id)
    for line in logs.splitlines():
        log.info("[%s %s] %s", stage, job_id, line)
    info = client.get_job_info(job_id)
    if status == JobStatus.SUCCEEDED:
        code = 0
    elif info.driver_exit_code is not None:
        code = info.driver_exit_code
    else:
        # No driver exit status: the job never ran its entrypoint (runtime env setup failed, the job
        # was stopped, the supervisor died). Not a refusal: report Ray's message as a crash.
        log.warning(
            "stage=%s ds=%s Ray job %s ended %s without an exit status: %s",
            stage,
            ds,
            job_id,
            status,
            info.message,
        )
        logs = f"{logs}\nRay job {job_id} {status}: {info.message}"
        code = 1
    return _finish(stage, ds, job_id, code, "\n".join(logs.splitlines()[-TAIL_LINES:]), started)


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
