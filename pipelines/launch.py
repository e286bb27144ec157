"""Launch a stage entry point for one ``ds``: as a local process, or as a Ray job on a cluster.

This is what an orchestrator (the Airflow DAGs) calls. Both ways run exactly the same command,
``python -m pipelines.<stage> --ds DS [--root ROOT] [--config FILE] [args...]``:

- locally (no Ray address): a child process, so the orchestrator's own process never imports torch
  or holds a model; its output is streamed into the caller's log;
- on a cluster (``ray_address`` given, e.g. ``http://ray-head:8265``): submitted with the Ray Jobs API
  (``JobSubmissionClient``), followed until it ends, its logs copied into the caller's log.

Exit status 2 means the stage *refused* (bad input, a failed gate): retrying cannot help, so it is
raised as :class:`StageRefused`; anything else that fails is :class:`StageCrashed` (worth a retry).
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

REFUSED_EXIT_CODE = 2


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

    Raises:
        StageRefused: the stage exited with status 2 (its message is in the exception).
        StageCrashed: any other failure.
    """
    argv = stage_command(stage, ds=ds, root=root, config=config, args=args)
    if ray_address:
        return _run_ray_job(stage, ds, argv, ray_address, env or {}, timeout_s)
    return _run_local(stage, ds, argv, env, timeout_s)


def _run_local(
    stage: str, ds: str, argv: list[str], env: dict[str, str] | None, timeout_s: float | None
) -> StageRun:
    import os

    started = time.monotonic()
    full_env = {**os.environ, **(env or {})}
    log.info("stage=%s ds=%s launching locally: %s", stage, ds, shlex.join([sys.executable, *argv]))
    process = subprocess.Popen(
        [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env
    )
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        log.info("[%s] %s", stage, line.rstrip())
        tail = (tail + [line])[-60:]
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            process.kill()
            raise StageCrashed(f"stage {stage} ds={ds} ran past {timeout_s}s and was stopped")
    code = process.wait()
    return _finish(stage, ds, "local", code, "".join(tail), started)


def _run_ray_job(
    stage: str, ds: str, argv: list[str], address: str, env: dict[str, str], timeout_s: float | None
) -> StageRun:
    from ray.job_submission import JobStatus, JobSubmissionClient

    started = time.monotonic()
    client = JobSubmissionClient(address)
    entrypoint = shlex.join(["python", *argv])
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": env} if env else None)
    log.info("stage=%s ds=%s submitted Ray job %s to %s: %s", stage, ds, job_id, address, entrypoint)
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            break
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            client.stop_job(job_id)
            raise StageCrashed(f"Ray job {job_id} (stage {stage} ds={ds}) ran past {timeout_s}s and was stopped")
        time.sleep(1.0)
    logs = client.get_job_logs(job_id)
    for line in logs.splitlines():
        log.info("[%s %s] %s", stage, job_id, line)
    info = client.get_job_info(job_id)
    if status == JobStatus.SUCCEEDED:
        code = 0
    else:
        # The driver's exit status is only in the job message ("...exit code 2...") on failure.
        message = info.message or ""
        code = REFUSED_EXIT_CODE if f"exit code {REFUSED_EXIT_CODE}" in message else 1
    return _finish(stage, ds, job_id, code, "\n".join(logs.splitlines()[-60:]), started)


def _finish(stage: str, ds: str, where: str, code: int, tail: str, started: float) -> StageRun:
    seconds = time.monotonic() - started
    if code == REFUSED_EXIT_CODE:
        reason = next((ln for ln in reversed(tail.splitlines()) if ln.startswith("error:")), tail[-2000:])
        raise StageRefused(f"stage {stage} ds={ds} refused: {reason}")
    if code != 0:
        raise StageCrashed(f"stage {stage} ds={ds} failed with exit status {code}:\n{tail[-4000:]}")
    log.info("stage=%s ds=%s done in %.1fs (%s)", stage, ds, seconds, where)
    return StageRun(stage, ds, where, seconds, tail)
