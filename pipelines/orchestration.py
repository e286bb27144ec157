"""What the ICG DAGs share: default arguments, the operator that runs one stage, and the alerts.

Part of the installed package, so a DAG file needs nothing but the DAGs folder on the path
(``airflow dags list``, the DAG processor and the workers all import it the same way). Kept light
on purpose (every DAG parse imports it): the standard library, Airflow's SDK and the project's
config at module level; the stage itself runs in a child process or as a Ray job
(:mod:`pipelines.launch`).

Operations (``operations`` in the config, see docs/operations.md):

- every stage has an ``execution_timeout`` (``operations.stage_timeout_minutes``); past it, Airflow
  stops the task and :meth:`StageOperator.on_kill` stops its process or Ray job;
- the GPU stages share the Airflow pool ``operations.gpu_pool``, so a manual ablation's fine-tune
  never runs beside the nightly's generate on the same GPUs;
- a task that fails for good, and a nightly not finished by ``operations.publish_deadline_utc``,
  reach on-call through :func:`notify` (the log, and a webhook when ``operations.notify_webhook_url``
  is set).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow.sdk import BaseNotifier, BaseOperator
from airflow.sdk.definitions.callback import SyncCallback
from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

from icg_core.config import GPU_STAGES, OperationsConfig, load_config

log = logging.getLogger(__name__)

# Deployment settings come from the workers' environment (see README "Configuration"), never from
# the DAG file: ICG_CONFIG / ICG__STORAGE__ROOT select the config and object root for every stage.
RAY_JOBS_ADDRESS_ENV = "ICG_RAY_JOBS_ADDRESS"
FAILURE_XCOM_KEY = "failure"  # a failed stage's reason, for the report task
MESSAGE_LINES = 12  # lines of a failure's reason in an alert


def forwarded_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's ICG settings (``ICG_CONFIG``, ``ICG__*``) that a stage's Ray job receives too,
    so a stage sees the same configuration as a Ray job as it does as a local process."""
    return {
        name: value for name, value in environ.items() if name == "ICG_CONFIG" or name.startswith("ICG__")
    }


def warehouse_connection(params: dict) -> dict[str, str]:
    """The extract stage's environment: the warehouse's URI when ``extract.source`` is postgres.

    The connection id (``extract.postgres_conn_id``) is resolved by Airflow, so a connection kept in
    the metadata database or a secrets backend works as well as an ``AIRFLOW_CONN_<ID>`` variable; the
    stage (a local process or a Ray job) receives it as ``AIRFLOW_CONN_<ID>``.
    """
    from icg_core.data.warehouse import connection_env_var

    extract = load_config().extract
    if extract.source != "postgres":
        return {}
    name = connection_env_var(extract.postgres_conn_id)
    if os.environ.get(name):
        return {name: os.environ[name]}
    from airflow.sdk import Connection

    return {name: Connection.get(extract.postgres_conn_id).get_uri()}


def operations() -> OperationsConfig:
    """The ``operations`` section as this process's environment configures it."""
    return load_config().operations


def notify(text: str, ops: OperationsConfig | None = None) -> None:
    """Tell on-call: an error in the log, and a POST of ``{"text": ...}`` to the configured webhook.

    The payload is what Slack, Mattermost and Rocket.Chat incoming webhooks take as it is. A failing
    webhook is logged and never raised: an alert must not turn into another failure.
    """
    ops = ops or operations()
    log.error("ICG ALERT: %s", text)
    if not ops.notify_webhook_url:
        return
    request = urllib.request.Request(
        ops.notify_webhook_url,
        data=json.dumps({"text": text}).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=ops.notify_timeout_s) as response:
            response.read()
    except Exception as exc:  # noqa: BLE001 - see above
        log.error("the alert webhook failed (%s): %s", type(exc).__name__, exc)


class FailureNotifier(BaseNotifier):
    """A task's ``on_failure_callback``: one alert when a task fails for good (not on a retry)."""

    def notify(self, context: Any) -> None:
        ti = context.get("ti") or context.get("task_instance")
        reason = str(context.get("exception") or "no exception recorded").strip().splitlines()
        task = getattr(ti, "task_id", "?")
        text = (
            f"ICG {getattr(ti, 'dag_id', '?')} ds={context.get('ds')}: task {task} failed "
            f"(try {getattr(ti, 'try_number', '?')}).\n" + "\n".join(reason[:MESSAGE_LINES])
        )
        url = getattr(ti, "log_url", None)
        notify(text + (f"\nLog: {url}" if url else ""))


def deadline_missed(context: dict[str, Any], **_: Any) -> None:
    """The nightly's deadline callback: the day is not published by ``operations.publish_deadline_utc``.

    Backfills rerun old days, so their deadline has passed before they start: logged, not alerted.
    """
    run = context.get("dag_run") or {}
    text = (
        f"ICG {run.get('dag_id', '?')} run {run.get('dag_run_id') or run.get('run_id', '?')} "
        f"(logical date {run.get('logical_date')}) has not finished by its deadline "
        f"{(context.get('deadline') or {}).get('deadline_time')}: today's covers are not published."
    )
    if run.get("run_type") == "backfill":
        log.warning("deadline passed for a backfill run, no alert: %s", text)
        return
    notify(text)


def publish_deadline(
    ops: OperationsConfig | None = None, argv: Sequence[str] | None = None
) -> DeadlineAlert | None:
    """Alert when a run has not finished by HH:MM UTC of its logical day; None when switched off.

    Also None inside ``airflow dags test`` (``argv``, default ``sys.argv``): no scheduler watches a
    deadline there, and Airflow 3.3.2 exits 1 after a successful test run of a DAG that has one
    (apache/airflow#73428, fix pending in #73430).
    """
    ops = ops or operations()
    command = list(sys.argv if argv is None else argv)[1:3]
    if ops.publish_deadline_utc is None or command == ["dags", "test"]:
        return None
    at = dt.time.fromisoformat(ops.publish_deadline_utc)
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_LOGICAL_DATE,
        interval=dt.timedelta(hours=at.hour, minutes=at.minute, seconds=at.second),
        callback=SyncCallback(deadline_missed),
    )


def default_args() -> dict[str, Any]:
    """Owner, retries with backoff and the failure alert of every ICG task."""
    return {
        "owner": "icg-ml-platform",
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=30),
        "on_failure_callback": FailureNotifier(),
    }


class StageOperator(BaseOperator):
    """Runs one pipeline stage (``python -m pipelines.<stage> --ds DS``) for the run's ``ds``.

    Locally, or as a Ray job when the run's ``ray_address`` param (or ``$ICG_RAY_JOBS_ADDRESS``) names
    a Ray dashboard. The stage's log streams into the task log while it runs. A stage that refuses
    (bad input, a failed gate: exit 2) fails the task without retries and leaves its reason for the
    report; a crash raises normally so Airflow's retries apply. Killed or timed out, the task stops
    the stage (:meth:`on_kill`).

    Args:
        stage: module under ``pipelines`` (also the task id).
        doc: one line for the task's documentation in the UI.
        args, env: extra stage options / environment, derived from the run's params.
        skip_when: name of a boolean param that skips this stage (downstream tasks then run on
            what the previous runs left: give them ``trigger_rule="none_failed"``).
        kwargs: passed to ``BaseOperator`` (``outlets``, ``trigger_rule``, ...).
    """

    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        stage: str,
        doc: str,
        args: Callable[[dict], list[str]] | None = None,
        env: Callable[[dict], dict[str, str]] | None = None,
        skip_when: str | None = None,
        **kwargs: Any,
    ) -> None:
        ops = operations()
        kwargs.setdefault("task_id", stage)
        kwargs.setdefault("doc_md", doc)
        kwargs.setdefault("execution_timeout", dt.timedelta(minutes=ops.timeout_minutes(stage)))
        if stage in GPU_STAGES:
            kwargs.setdefault("pool", ops.gpu_pool)
        super().__init__(**kwargs)
        self.stage, self.stage_args, self.stage_env, self.skip_when = stage, args, env, skip_when
        self._launched: Any = None  # the running pipelines.launch.LaunchedStage, for on_kill

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from pipelines.launch import StageRefused, check_ray_address, start_stage

        params = context.get("params") or {}
        if self.skip_when and params.get(self.skip_when):
            raise AirflowSkipException(
                f"{self.skip_when}: stage {self.stage} skipped, reusing its latest outputs"
            )
        address = params.get("ray_address") or os.environ.get(RAY_JOBS_ADDRESS_ENV) or None
        try:
            if address:
                check_ray_address(address)
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        env = self.stage_env(params) if self.stage_env else {}
        if address:  # a local stage inherits this environment; a Ray job gets the ICG settings
            env = {**forwarded_settings(os.environ), **env}
        self._launched = start_stage(
            self.stage, ds=context["ds"], args=self.arguments(context), ray_address=address, env=env
        )
        try:
            run = self._launched.wait()
        except StageRefused as exc:
            context["ti"].xcom_push(key=FAILURE_XCOM_KEY, value=str(exc))
            raise AirflowFailException(str(exc)) from exc
        return {"stage": run.stage, "ds": run.ds, "where": run.where, "seconds": round(run.seconds, 1)}

    def arguments(self, context: Any) -> list[str]:
        """The stage's extra options for this run (from the run's params)."""
        return self.stage_args(context.get("params") or {}) if self.stage_args else []

    def on_kill(self) -> None:
        if self._launched is not None:
            self._launched.stop("the Airflow task was killed or timed out")


class ReportOperator(StageOperator):
    """The report stage, run whatever happened upstream (``all_done``): a failed night gets a report
    that opens with what failed and why."""

    def __init__(self, *, upstream_stages: Sequence[str], **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(stage="report", **kwargs)
        self.upstream_stages = list(upstream_stages)

    def arguments(self, context: Any) -> list[str]:
        ti = context["ti"]
        failed: list[str] = []
        for stage in self.upstream_stages:  # a refusal's reason, as the stage gave it
            reason = ti.xcom_pull(task_ids=stage, key=FAILURE_XCOM_KEY)
            if reason:
                failed += ["--failure", f"{stage}: {reason}"]
        states = ti.get_task_states(dag_id=ti.dag_id, task_ids=self.upstream_stages, run_ids=[ti.run_id])
        states = states.get(ti.run_id) or {}
        for stage in self.upstream_stages:  # in the DAG's order
            if any(f.startswith(f"{stage}:") for f in failed):
                continue
            if states.get(stage) == "failed":
                failed += ["--failure", f"{stage}: failed (see the task's log)"]
            elif states.get(stage) == "upstream_failed":
                failed += ["--failure", f"{stage}: did not run (an earlier stage failed)"]
        return super().arguments(context) + failed
