"""icg_nightly: the nightly ICG run for one ``ds`` (the run's logical date).

extract -> validate  (users, rewards, features, finetune, generate and publish exist as stages and
are wired in next: see the README's status table)

Each task runs the stage entry point ``python -m pipelines.<stage> --ds DS`` (locally, or as a Ray
job when ``ray_address`` / ``ICG_RAY_JOBS_ADDRESS`` is set). A stage that refuses its input (exit
status 2) fails its task without retries, with the reason in the task log; nothing after it runs.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag

from icg_common import DEFAULT_ARGS, stage_task


@dag(
    dag_id="icg_nightly",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["icg", "nightly"],
    doc_md=__doc__,
    params={
        "ray_address": Param(None, type=["null", "string"], description="Ray dashboard address; empty = local."),
    },
)
def icg_nightly() -> None:
    extract = stage_task("extract", "Catalog snapshot and impressions window for ds, by SQL over the raw tables.")
    validate = stage_task("validate", "great-expectations suites; promotes to validated/ only if every suite passes.")
    validate(extract())


icg_nightly()
