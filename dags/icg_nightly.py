"""icg_nightly: the nightly ICG run for one ``ds`` (the run's logical date).

extract -> validate -> users -> rewards -> features -> finetune -> generate -> evaluate -> publish -> report

Each task runs the stage entry point ``python -m pipelines.<stage> --ds DS`` (locally, or as a Ray
job when ``ray_address`` / ``ICG_RAY_JOBS_ADDRESS`` is set). Gates are stages that refuse (exit 2, no
retries, the reason in the task log): validate (bad input), rewards (preference model below its
held-out AUC floor), finetune (held-out relevance collapse), evaluate (a metric regressed beyond its
threshold versus the last published run), publish (incomplete or unreadable covers). Any refusal
stops the run before publish, and yesterday's published covers stay where readers find them.

Operations: every task has a timeout (``operations.stage_timeout_minutes``); the GPU stages share
the ``operations.gpu_pool`` pool; a task that fails for good, and a run not finished by
``operations.publish_deadline_utc``, alert on-call (log and webhook); the report runs after a failed
gate too and opens with the failure. See docs/operations.md.

Backfills: every stage reads only its ``ds`` data interval and rewrites only its ``ds`` partition, so
``airflow backfill create --dag-id icg_nightly --from-date ... --to-date ...`` (or the UI's backfill
form) recomputes past days; publishing an old day never moves ``latest`` backwards, and a backfill
never changes the production generator.

Champion and challenger: finetune saves the night's generator as the challenger; generate draws the
covers with the champion (production); evaluate measures both and promotes the challenger only when
it wins with intervals (icg_core/evaluation/promotion.py). The next night's covers come from the winner.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, chain, dag

from pipelines.orchestration import (
    ReportOperator,
    StageOperator,
    default_args,
    publish_deadline,
    warehouse_connection,
)

# Downstream DAGs schedule on this: it is updated when publish commits a day's manifest.
COVERS_MANIFEST = Asset(name="icg_covers_manifest", uri="icg://manifests/covers")


def _overrides(params: dict) -> dict[str, str]:
    """Trigger-form values that map onto the stages' config (environment overrides)."""
    return {"ICG__USERS__N_SEGMENTS": str(params["segments"])} if params.get("segments") else {}


def _items_limit(params: dict) -> list[str]:
    return ["--items-limit", str(params["items_limit"])] if params.get("items_limit") else []


def _generate_args(params: dict) -> list[str]:
    return _items_limit(params) + (["--force"] if params.get("force") else [])


def _cover_budget(params: dict) -> dict[str, str]:
    budget = params.get("max_covers_per_night")
    return {"ICG__GENERATE__MAX_COVERS_PER_NIGHT": str(budget)} if budget is not None else {}


@dag(
    dag_id="icg_nightly",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    deadline=publish_deadline(),
    tags=["icg", "nightly"],
    doc_md=__doc__,
    params={
        "segments": Param(None, type=["null", "integer"], minimum=1, maximum=256,
                          description="User segments (k-means K); empty = config users.n_segments."),
        "items_limit": Param(None, type=["null", "integer"], minimum=1,
                             description="Only the first N catalog items (by item_id); empty = all."),
        "skip_training": Param(False, type="boolean",
                               description="Reuse the latest reward models and generator (skip rewards and finetune)."),
        "force": Param(False, type="boolean", description="Regenerate every cover, ignoring covers already written."),
        "max_covers_per_night": Param(None, type=["null", "integer"], minimum=0,
                                      description="Covers drawn tonight at most (new items always); empty = the config's."),
        "ray_address": Param(None, type=["null", "string"],
                             description="Ray dashboard address to submit stages to; empty = run locally."),
    },
)  # fmt: skip
def icg_nightly() -> None:
    stages = [
        StageOperator(
            stage="extract",
            doc="Catalog snapshot and impressions window for ds, by SQL over the raw tables (dumps or warehouse).",
            env=warehouse_connection,
        ),
        StageOperator(
            stage="validate",
            doc="great-expectations suites; promotes to validated/ only if every suite passes.",
        ),
        StageOperator(
            stage="users", doc="User embeddings and segments (ids matched to yesterday's).", env=_overrides
        ),
        StageOperator(
            stage="rewards",
            doc="Reward models; gate: preference held-out AUC floor.",
            env=_overrides,
            skip_when="skip_training",
        ),
        StageOperator(
            stage="features",
            doc="Meta-token features per item (cached by content hash).",
            args=_items_limit,
            trigger_rule="none_failed",
        ),
        StageOperator(
            stage="finetune",
            doc="Stage-2 reward-weighted fine-tuning into tonight's challenger; gate: relevance must not collapse.",
            skip_when="skip_training",
        ),
        StageOperator(
            stage="generate",
            doc="One cover per (item, segment) on Ray with the champion generator, staged for publish.",
            args=_generate_args,
            env=_cover_budget,
            trigger_rule="none_failed",
        ),
        StageOperator(
            stage="evaluate",
            doc="Variants, metrics and intervals; promotes the challenger if it wins; gate: no regression versus the last published run.",
        ),
        StageOperator(
            stage="publish",
            doc="Check the staged manifest, commit it atomically, move the latest pointer.",
            outlets=[COVERS_MANIFEST],
        ),
    ]
    report = ReportOperator(
        doc="The run's HTML report (after a failure too, opening with it): ablation table, contact sheets, curves.",
        upstream_stages=[stage.task_id for stage in stages],
    )
    chain(*stages, report)


icg_nightly()
