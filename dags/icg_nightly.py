"""icg_nightly: the nightly ICG run for one ``ds``.

extract -> validate -> ... (each task runs the stage entry point ``python -m pipelines.<stage>`` for
the run's logical date, locally or on a Ray cluster). A stage that refuses its input fails the run
before anything is published, with the reason in the task log.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from icg_common import DEFAULT_ARGS, run_stage


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
        "ray_address": Param(
            None, type=["null", "string"], description="Ray dashboard address to submit stages to; empty = local."
        ),
    },
)
def icg_nightly() -> None:
    @task
    def extract(ds: str | None = None, params: dict | None = None) -> dict:
        """Catalog snapshot and impressions window for ds, by SQL over the raw tables."""
        return run_stage("extract", ds, params)

    @task
    def validate(extracted: dict, ds: str | None = None, params: dict | None = None) -> dict:
        """great-expectations suites; promotes to validated/ only when every suite passes."""
        return run_stage("validate", ds, params)

    validate(extract())


icg_nightly()
