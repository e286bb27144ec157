"""icg_nightly: the nightly ICG run for one ``ds`` (the run's logical date).

extract -> validate -> users -> rewards -> features -> finetune -> generate -> evaluate -> publish -> report

Each task runs the stage entry point ``python -m pipelines.<stage> --ds DS`` (locally, or as a Ray
job when ``ray_address`` / ``ICG_RAY_JOBS_ADDRESS`` is set). Gates are stages that refuse (exit 2, no
retries, the reason in the task log): validate (bad input), rewards (preference model below its
held-out AUC floor), finetune (held-out relevance collapse), evaluate (a metric regressed beyond its
threshold versus the last published run), publish (incomplete or unreadable covers). Any refusal
stops the run before publish, and yesterday's published covers stay where readers find them.

Backfills: every stage reads only its ``ds`` data interval and rewrites only its ``ds`` partition, so
``airflow backfill create --dag-id icg_nightly --from-date ... --to-date ...`` (or the UI's backfill
form) recomputes past days; publishing an old day never moves ``latest`` backwards.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, dag

from icg_common import DEFAULT_ARGS, stage_task

# Downstream DAGs schedule on this: it is updated when publish commits a day's manifest.
COVERS_MANIFEST = Asset(name="icg_covers_manifest", uri="icg://manifests/covers")


def _overrides(params: dict) -> dict[str, str]:
    """Trigger-form values that map onto the stages' config (environment overrides)."""
    return {"ICG__USERS__N_SEGMENTS": str(params["segments"])} if params.get("segments") else {}


def _items_limit(params: dict) -> list[str]:
    return ["--items-limit", str(params["items_limit"])] if params.get("items_limit") else []


def _generate_args(params: dict) -> list[str]:
    return _items_limit(params) + (["--force"] if params.get("force") else [])


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
        "segments": Param(None, type=["null", "integer"], minimum=1, maximum=256,
                          description="User segments (k-means K); empty = config users.n_segments."),
        "items_limit": Param(None, type=["null", "integer"], minimum=1,
                             description="Only the first N catalog items (by item_id); empty = all."),
        "skip_training": Param(False, type="boolean",
                               description="Reuse the latest reward models and generator (skip rewards and finetune)."),
        "force": Param(False, type="boolean", description="Regenerate every cover, ignoring covers already written."),
        "ray_address": Param(None, type=["null", "string"],
                             description="Ray dashboard address to submit stages to; empty = run locally."),
    },
)  # fmt: skip
def icg_nightly() -> None:
    extract = stage_task(
        "extract", "Catalog snapshot and impressions window for ds, by SQL over the raw tables."
    )
    validate = stage_task(
        "validate", "great-expectations suites; promotes to validated/ only if every suite passes."
    )
    users = stage_task("users", "User embeddings and segments (ids matched to yesterday's).", env=_overrides)
    rewards = stage_task(
        "rewards",
        "Reward models; gate: preference held-out AUC floor.",
        env=_overrides,
        skip_when="skip_training",
    )
    features = stage_task(
        "features",
        "Meta-token features per item (cached by content hash).",
        args=_items_limit,
        trigger_rule="none_failed",
    )
    finetune = stage_task(
        "finetune",
        "Stage-2 reward-weighted fine-tuning; gate: relevance must not collapse.",
        skip_when="skip_training",
    )
    generate = stage_task(
        "generate", "One cover per (item, segment) on Ray, staged for publish.", args=_generate_args,
        trigger_rule="none_failed",
    )  # fmt: skip
    evaluate = stage_task(
        "evaluate", "Variants, metrics and intervals; gate: no regression versus the last published run."
    )
    publish = stage_task(
        "publish",
        "Check the staged manifest, commit it atomically, move the latest pointer.",
        outlets=[COVERS_MANIFEST],
    )
    report = stage_task("report", "The run's HTML report: ablation table, contact sheets, curves.")
    report(publish(evaluate(generate(finetune(features(rewards(users(validate(extract())))))))))


icg_nightly()
