"""icg_ablation: the two reward ablations of a nightly run (manual trigger, for a published ``ds``).

evaluate --ablations for the run's logical date: fine-tunes ICG without the preference reward and
without the aesthetic reward (same steps and seeds as the nightly's stage 2, saved under their own
generator names, never moving the production generator), evaluates both on the nightly's held-out
items, segments and seeds, merges them into ``reports/ds=.../metrics.json``, then rebuilds the report.
Trigger it for a day the nightly already ran; it reads that day's users, rewards and covers.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, chain, dag

from pipelines.orchestration import ReportOperator, StageOperator, default_args


@dag(
    dag_id="icg_ablation",
    schedule=None,
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["icg", "evaluation"],
    doc_md=__doc__,
    params={
        "ray_address": Param(
            None, type=["null", "string"], description="Ray dashboard address; empty = local."
        ),
    },
)
def icg_ablation() -> None:
    evaluate = StageOperator(
        stage="evaluate",
        doc="Fine-tune and evaluate icg_no_preference and icg_no_aesthetic (in the GPU pool).",
        args=lambda _: ["--ablations"],
    )
    report = ReportOperator(
        doc="Rebuild the run's HTML report with the ablation rows.", upstream_stages=["evaluate"]
    )
    chain(evaluate, report)


icg_ablation()
