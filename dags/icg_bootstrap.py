"""icg_bootstrap: prepare the generator once (manual trigger), before the first nightly run.

extract -> validate -> bootstrap for the run's logical date: the embedded default builds the tiny base
checkpoints here and trains them; in production ``models.sd_path`` / ``models.vlm_path`` name the
base checkpoints (local paths) and only stage 1 trains. Rerunning reuses what is already trained.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, chain, dag

from pipelines.orchestration import StageOperator, default_args


@dag(
    dag_id="icg_bootstrap",
    schedule=None,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["icg", "bootstrap"],
    doc_md=__doc__,
    params={
        "ray_address": Param(
            None, type=["null", "string"], description="Ray dashboard address; empty = local."
        ),
    },
)
def icg_bootstrap() -> None:
    chain(
        StageOperator(stage="extract", doc="Catalog snapshot and impressions window for ds."),
        StageOperator(
            stage="validate", doc="great-expectations suites; promotes to validated/ only if all pass."
        ),
        StageOperator(
            stage="bootstrap", doc="Base checkpoints (embedded: built and trained here) and stage 1."
        ),
    )


icg_bootstrap()
