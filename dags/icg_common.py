"""What the ICG DAGs share: default arguments and the task that runs one pipeline stage.

Kept light on purpose (the DAG processor imports it on every parse): no torch, Ray, pandas or
project-heavy imports at module level; the stage itself runs in a child process or as a Ray job.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "icg-ml-platform",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=30),
}

# Deployment settings come from the workers' environment (see README "Configuration"), never from
# the DAG file: ICG_CONFIG / ICG__STORAGE__ROOT select the config and object root for every stage.
RAY_JOBS_ADDRESS_ENV = "ICG_RAY_JOBS_ADDRESS"


def run_stage(
    stage: str,
    ds: str,
    params: dict[str, Any] | None = None,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """Run ``pipelines.<stage>`` for ``ds`` (locally, or as a Ray job when a Ray address is set).

    A stage that refuses (bad input, failed gate) fails the task without retries, with the reason
    in the task log; a crash raises normally so Airflow's retries apply.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from pipelines.launch import StageRefused
    from pipelines.launch import run_stage as launch

    params = params or {}
    ray_address = params.get("ray_address") or os.environ.get(RAY_JOBS_ADDRESS_ENV) or None
    try:
        run = launch(stage, ds=ds, args=args or [], ray_address=ray_address, env=env)
    except StageRefused as exc:
        raise AirflowFailException(str(exc)) from exc
    return {"stage": run.stage, "ds": run.ds, "where": run.where, "seconds": round(run.seconds, 1)}


def stage_task(
    stage: str,
    doc: str,
    *,
    args: Callable[[dict], list[str]] | None = None,
    env: Callable[[dict], dict[str, str]] | None = None,
    skip_when: str | None = None,
    **task_kwargs: Any,
) -> Any:
    """An Airflow task that runs one stage for the run's ``ds``.

    Args:
        stage: module under ``pipelines`` (also the task id).
        doc: one line for the task's documentation in the UI.
        args, env: extra stage options / environment, derived from the run's params.
        skip_when: name of a boolean param that skips this stage (downstream tasks then run on
            what the previous runs left: set ``trigger_rule="none_failed"`` on them).
        task_kwargs: passed to ``@task`` (``outlets``, ``trigger_rule``, ...).
    """
    from airflow.sdk import task
    from airflow.sdk.exceptions import AirflowSkipException

    def run(*_upstream: Any, ds: str | None = None, params: dict | None = None) -> dict:
        params = params or {}
        if skip_when and params.get(skip_when):
            raise AirflowSkipException(f"{skip_when}: stage {stage} skipped, reusing its latest outputs")
        return run_stage(stage, ds, params, args(params) if args else None, env(params) if env else None)

    run.__name__ = run.__qualname__ = stage
    run.__doc__ = doc
    return task(task_id=stage, doc_md=doc, **task_kwargs)(run)
