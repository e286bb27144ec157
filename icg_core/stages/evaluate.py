"""The evaluate stage: every variant on the same held-out items, segments and seeds -> ``reports/ds=<ds>/metrics.json``.

Variants (see :mod:`icg_core.evaluation.variants`): ``reference``, ``selection``, ``base`` (the
stage-1 generator the production generator was fine-tuned from, null user), ``icg`` (the
production generator through the cover policy, segment centroids; the generate stage's staged
covers of ``ds`` are read when they come from the same generator version), ``icg_unguided`` (the
same generator sampled plainly: what fine-tuning alone gives), ``oracle_best`` (in the embedded
world: the evaluation-only ceiling, :mod:`icg_core.evaluation.ceiling`) and, with ``ablations``,
``icg_no_preference`` and ``icg_no_aesthetic`` (real fine-tuning runs, made by the same policy,
:mod:`icg_core.stages.ablations`). Held-out items are the stage-1 split
(``stage1.holdout_fraction``): all of them, or the first ``evaluate.items`` by item_id.

metrics.json keys::

    ds, variants {name: M}, preference_model {auc, oracle_auc, log_loss, auc_reproduced, n_eval, roc {fpr, tpr}},
    segments {k, ari_vs_taste_groups, sizes {segment_id: n_users}, taste {segment_id: {attribute: mean hidden taste}}},
    downstream {auc_without_covers, auc_with_covers, n_train, n_eval, judged_by},
    finetune_curve [{step, preference, oracle_ctr}] (the stage-2 snapshots of the challenger, else of the champion),
    run {data_interval {start, end}, items, item_ids, bootstrap_samples, model_versions {...},
         timings {evaluate phase: seconds}, stage_seconds {finetune..., evaluate}, finished_at},
    samples [{item_id, title, segment_id, variant, image_key}], gate {passed, baseline_ds, checks},
    promotion {champion, challenger, metric, uplift, uplift_ci, promoted, reason} (icg_core.evaluation.promotion),
    not_measured {metric: why} (empty in the embedded world; on real data, what needs the oracle)
    verdict {outcome, metric, baseline, icg, icg_ci, baseline_value, baseline_ci, ceiling, reason} (icg_core.evaluation.verdict),
    M = {aesthetic, aesthetic_heldout, relevance, item_recall_1, item_recall_10, category_top1, preference,
         oracle_ctr, diversity (each with
         <metric>_ci [lo, hi]), oracle_ctr_by_segment, preference_by_segment, seconds_per_cover, n_covers,
         generator_version, source, fallback_rate, reference_rate,
         uplift_vs_reference {<metric>, <metric>_ci}, uplift_vs_base {...}, and for the challenger uplift_vs_icg}
    variants: reference, selection, base, icg (the champion, as published), icg_unguided, challenger (the
    day's fine-tuned generator, when it is not the champion), oracle_best (embedded world), ablations

A rerun for the same ``ds`` keeps the variants it did not recompute (the nightly run keeps the
ablations of an earlier ``--ablations`` run). Oracle fields are null when the root has no oracle.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from icg_core import layout
from icg_core.config import EvaluateConfig, ICGConfig
from icg_core.evaluation.ceiling import oracle_best_covers
from icg_core.evaluation.curve import finetune_curve
from icg_core.evaluation.downstream import downstream_auc, load_click_window, preference_model_report
from icg_core.evaluation.gates import GateResult, check_gates, published_baseline
from icg_core.evaluation.measures import (
    HEADLINE,
    NOT_MEASURED_WITHOUT_ORACLE,
    Judges,
    by_segment,
    measure_covers,
    per_item_measures,
    uplift,
    variant_metrics,
)
from icg_core.evaluation.promotion import PromotionDecision, decide_promotion, primary_metric, promote
from icg_core.evaluation.stats import resample_indices, rounded
from icg_core.evaluation.variants import (
    EvalItems,
    EvalSegments,
    VariantCovers,
    generate_covers,
    held_out_item_ids,
    load_eval_items,
    pair_seeds,
    reference_covers,
    select_covers,
    staged_covers,
    staged_segment_covers,
)
from icg_core.evaluation.verdict import decide_verdict
from icg_core.models.bundle import load_bundle
from icg_core.models.checkpoint import checkpoint_config, resolve_version
from icg_core.models.users import load_segments
from icg_core.rewards.common import model_name
from icg_core.rewards.content import ContentIndex, load_content_index
from icg_core.rewards.preference import PreferenceModel
from icg_core.serving.policy import BASE, REFERENCE, REWARD_KINDS, CoverRewards, Sampling, load_cover_rewards
from icg_core.stages.ablations import ABLATIONS, run_ablation
from icg_core.stages.generate import encode_png
from icg_core.storage import ObjectStore
from icg_core.training.data import read_catalog
from icg_core.world.oracle import Oracle

log = logging.getLogger(__name__)

HEADLINE_KEYS = ("oracle_ctr", "relevance", "aesthetic_heldout", "preference", "diversity")  # in the summary

NIGHTLY_VARIANTS = ("reference", "selection", "base", "icg", "icg_unguided", "oracle_best")
SHEET_VARIANTS = ("reference", "selection", "base", "icg", "oracle_best")


@dataclass
class EvaluationSummary:
    """What :func:`run_evaluation` did; the stage prints it and fails on ``gate.passed`` False."""

    ds: str
    metrics_uri: str
    variants: dict[str, dict[str, Any]]  # headline metrics of each variant evaluated now
    gate: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Clock:
    """Wall time of named phases."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 2)
        self._last = now

    def total(self) -> dict[str, float]:
        return self.seconds | {"total": round(time.perf_counter() - self._start, 2)}


def load_oracle(store: ObjectStore) -> Oracle | None:
    """The embedded world's oracle, or None on a root without one (real data)."""
    return Oracle.load(store) if Oracle.exists(store) else None


def load_eval_segments(store: ObjectStore, ds: str) -> EvalSegments:
    """The users stage's segments of ``ds``: ids, centroids, sizes and member users."""
    segments = load_segments(store, ds)
    ids, centroids = segments.centroid_matrix()
    members = {int(s): segments.user_ids[segments.segment_ids == s].tolist() for s in ids.tolist()}
    return EvalSegments(ids, centroids, np.array([len(members[int(s)]) for s in ids]), members)


def time_sampling(
    bundle: Any,
    items: EvalItems,
    segments: EvalSegments,
    seeds: list[int],
    sampling: Sampling,
    count: int,
    rewards: CoverRewards,
) -> tuple[float, int]:
    """(seconds, covers) of sampling the first ``count`` (item, segment) covers again, to price covers read from generate."""
    n_items = min(len(items), max(1, math.ceil(count / len(segments))))
    timed = generate_covers(bundle, items.head(n_items), segments, seeds[: n_items * len(segments)], sampling,
                            personalized=True, batch_size=n_items * len(segments), rewards=rewards)  # fmt: skip
    return timed.seconds, timed.timed_covers


def _icg_covers(
    store: ObjectStore,
    cfg: ICGConfig,
    ds: str,
    bundle: Any,
    items: EvalItems,
    segments: EvalSegments,
    seeds: list[int],
    rewards: CoverRewards,
) -> VariantCovers:
    sampling = Sampling.from_config(cfg)
    staged = staged_covers(
        store, ds, bundle.version, items.item_ids, segments.segment_ids.tolist(), bundle.covers.image_size
    )
    if staged is None:
        return generate_covers(bundle, items, segments, seeds, sampling, personalized=True,
                               batch_size=cfg.evaluate.batch_size, rewards=rewards)  # fmt: skip
    seconds, timed = time_sampling(
        bundle, items, segments, seeds, sampling, cfg.evaluate.timing_covers, rewards
    )
    sources = [
        store.get_json(layout.cover_sidecar(ds, int(s), item)).get("source")
        for item in items.item_ids
        for s in segments.segment_ids.tolist()
    ]
    log.info("stage=evaluate ds=%s icg covers read from the generate stage (%d)", ds, len(staged))
    return VariantCovers(
        staged,
        seconds,
        timed,
        len(staged),
        bundle.version,
        "staged",
        sources.count(BASE),
        sources.count(REFERENCE),
    )


def _write_samples(
    store: ObjectStore,
    ds: str,
    items: EvalItems,
    segments: EvalSegments,
    covers: dict[str, VariantCovers],
    count: int,
) -> list[dict[str, Any]]:
    """PNGs of the first ``count`` items for the contact sheets, and their index (``samples``)."""
    samples = []
    n_segments = len(segments)
    for i in range(min(count, len(items))):
        for variant in SHEET_VARIANTS:
            if variant not in covers:
                continue
            targets = (
                [(None, i * n_segments)]
                if variant == "reference"
                else [(int(s), i * n_segments + j) for j, s in enumerate(segments.segment_ids.tolist())]
            )
            for segment, row in targets:
                where = "" if segment is None else f"segment={segment}/"
                key = layout.evaluation_cover(ds, variant, f"{where}{items.item_ids[i]}.png")
                store.put_bytes(key, encode_png(covers[variant].images[row]))
                samples.append({"item_id": items.item_ids[i], "title": items.titles[i], "segment_id": segment,
                                "variant": variant, "image_key": key})  # fmt: skip
    return samples


def _segments_report(segments: EvalSegments, oracle: Oracle | None) -> dict[str, Any]:
    """Segment sizes and, in the embedded world, how segments match taste groups and their users' mean taste."""
    ari, taste = None, None
    if oracle is not None:
        from sklearn.metrics import adjusted_rand_score

        from icg_core.world.drawing import ATTRIBUTES

        users = [u for s in segments.segment_ids.tolist() for u in segments.user_ids[int(s)]]
        labels = [int(s) for s in segments.segment_ids.tolist() for _ in segments.user_ids[int(s)]]
        ari = rounded(float(adjusted_rand_score(oracle.taste_group(users), labels)), 4)
        taste = {
            str(int(s)): dict(
                zip(
                    ATTRIBUTES,
                    (rounded(float(v), 3) for v in oracle.taste_vectors(members).mean(axis=0)),
                    strict=True,
                )
            )
            for s, members in ((s, segments.user_ids[int(s)]) for s in segments.segment_ids.tolist())
            if members
        }
    sizes = {str(int(s)): int(n) for s, n in zip(segments.segment_ids, segments.sizes, strict=True)}
    return {"k": len(segments), "ari_vs_taste_groups": ari, "sizes": sizes, "taste": taste}


def day_challenger(store: ObjectStore, cfg: ICGConfig, ds: str, champion: str) -> str | None:
    """The generator fine-tuned for ``ds`` when it is not already the champion (None: nothing to decide)."""
    found = layout.challenger(store, cfg.models.generator_name)
    if found is None or found.get("ds") != ds or found.get("version") == champion:
        return None
    return str(found["version"])


def is_backfill(store: ObjectStore, cfg: ICGConfig, ds: str, champion: str) -> bool:
    """Whether ``ds`` lies before the champion's training day or the newest published day."""
    trained = checkpoint_config(store, cfg.models.generator_name, champion).get("stage2", {}).get("ds")
    published = layout.PUBLISHED_COVERS.latest(store)
    return any(day is not None and ds < day for day in (trained, published))


def generator_versions(store: ObjectStore, cfg: ICGConfig) -> tuple[str, str]:
    """(production generator version, the stage-1 version it was fine-tuned from; itself for a stage-1 one)."""
    name = cfg.models.generator_name
    version = resolve_version(store, name, cfg.generate.generator_version)
    saved = checkpoint_config(store, name, version)
    return version, str(saved.get("stage2", {}).get("base_version", version))


def load_judges(
    store: ObjectStore,
    cfg: ICGConfig,
    segments: EvalSegments,
    oracle: Oracle | None,
    content: ContentIndex,
) -> tuple[Judges, dict[str, str], PreferenceModel, CoverRewards]:
    """The judges, the reward versions, the preference model (for its report) and the policy's rewards."""
    versions = {
        kind: resolve_version(store, model_name(kind), cfg.generate.reward_version) for kind in REWARD_KINDS
    }
    centroids = {int(s): c for s, c in zip(segments.segment_ids, segments.centroids, strict=True)}
    rewards = load_cover_rewards(
        store, versions, centroids, cfg.rewards.weights, guidance=cfg.guidance.steps > 0, content=content
    )
    judges = Judges(rewards.aesthetic, rewards.relevance, rewards.preference, content, oracle)
    return judges, versions, PreferenceModel.load(store, versions["preference"]), rewards


def _stage_seconds(store: ObjectStore, ds: str, versions: dict[str, str]) -> dict[str, float]:
    """Wall time of the fine-tuning runs behind the evaluated generators, from their reports of ``ds``."""
    out = {}
    for key, version in versions.items():
        if key.startswith("generator"):
            report = layout.finetune_log(ds, version)
            if store.exists(report):
                out[key.replace("generator", "finetune", 1)] = store.get_json(report)["seconds"].get("total")
    return out


def _failed_variant(message: str) -> dict[str, Any]:
    return (
        {name: None for name in HEADLINE} | {f"{name}_ci": None for name in HEADLINE} | {"failure": message}
    )


@dataclass
class EvalSetup:
    """Everything the variants are made and judged with, loaded once (:func:`load_setup`)."""

    oracle: Oracle | None
    segments: EvalSegments
    judges: Judges
    reward_versions: dict[str, str]
    preference: PreferenceModel
    rewards: CoverRewards
    icg_version: str  # the champion: the production generator the generate stage used
    base_version: str
    bundle: Any  # the production generator (ICGBundle)
    items: EvalItems
    seeds: list[int]  # item-major seeds of every (item, segment) pair
    challenger: str | None = None  # the day's fine-tuned generator, when it is not the champion


def load_setup(store: ObjectStore, cfg: ICGConfig, ds: str, items_limit: int | None) -> EvalSetup:
    """The oracle (if any), segments, judges, generators, held-out items (first ``items_limit``) and seeds of ``ds``."""
    oracle = load_oracle(store)
    segments = load_eval_segments(store, ds)
    icg_version, base_version = generator_versions(store, cfg)
    bundle = load_bundle(store, cfg.models, icg_version)
    content = load_content_index(store, read_catalog(store, ds), bundle.covers.image_size)
    judges, reward_versions, preference, rewards = load_judges(store, cfg, segments, oracle, content)
    items = load_eval_items(
        store, ds, held_out_item_ids(store, ds, cfg.stage1.holdout_fraction, items_limit), bundle
    )
    seeds = pair_seeds(items.item_ids, segments.segment_ids.tolist(), icg_version)
    return EvalSetup(oracle, segments, judges, reward_versions, preference, rewards, icg_version, base_version,
                     bundle, items, seeds, day_challenger(store, cfg, ds, icg_version))  # fmt: skip


def run_evaluation(
    store: ObjectStore, cfg: ICGConfig, ds: str, *, ablations: bool = False
) -> tuple[EvaluationSummary, GateResult]:
    """Evaluate the variants on ``ds``, write ``reports/ds=<ds>/metrics.json`` and run the gates.

    Args:
        store: the object store with the day's validated tables, segments, reward models and generators.
        cfg: the configuration (``evaluate`` above all; ``models`` sampling; ``stage1.holdout_fraction``).
        ds: the run's date.
        ablations: also fine-tune and evaluate ``icg_no_preference`` and ``icg_no_aesthetic``.

    Returns:
        (the summary, the gate result). The metrics file is written whether or not the gates pass.
    """
    clock = _Clock()
    # 1. Load the held-out items, segments, judges and generators.
    setup = load_setup(store, cfg, ds, cfg.evaluate.items)
    log.info("stage=evaluate ds=%s items=%d segments=%d icg=%s base=%s oracle=%s", ds, len(setup.items),
             len(setup.segments), setup.icg_version, setup.base_version, setup.oracle is not None)  # fmt: skip
    clock.lap("load")
    versions = {"generator": setup.icg_version, "base": setup.base_version} | {
        f"reward_{k}": v for k, v in setup.reward_versions.items()
    }
    if setup.challenger is not None:
        versions["generator_challenger"] = setup.challenger
    # 2. Every variant's covers on the same items, segments and seeds; the fine-tuning curve.
    covers, curve = _variant_covers(store, cfg, ds, setup, clock)
    failed = _ablation_covers(store, cfg, ds, setup, covers, versions, clock) if ablations else {}
    # 3. Measure them, with bootstrap intervals over items and uplifts over the baselines.
    variants = _measure(covers, setup, cfg.evaluate)
    variants |= {name: _failed_variant(message) for name, message in failed.items()}
    clock.lap("measure")
    # 4. The preference model and the downstream recommender, on held-out logs.
    window = load_click_window(store, ds, cfg)
    preference_report = preference_model_report(store, window, cfg, setup.preference.metrics, setup.oracle)
    downstream = _downstream(store, ds, setup, covers["icg"], window, cfg.evaluate.seed)
    clock.lap("downstream")
    samples = _write_samples(store, ds, setup.items, setup.segments, covers, cfg.evaluate.sheet_items)
    clock.lap("samples")
    # 5. Merge into the day's metrics (ablations run later add their variants), gate, write.
    metrics: dict[str, Any] = store.get_json(layout.metrics(ds)) if store.exists(layout.metrics(ds)) else {}
    metrics |= {
        "ds": ds,
        # a rerun keeps earlier ablations; a challenger is this run's or none
        "variants": {k: v for k, v in metrics.get("variants", {}).items() if k != "challenger"} | variants,
        "preference_model": preference_report,
        "segments": _segments_report(setup.segments, setup.oracle),
        "downstream": downstream,
        "finetune_curve": curve,
        "samples": samples,
        "not_measured": {} if setup.oracle is not None else dict(NOT_MEASURED_WITHOUT_ORACLE),
    }
    metrics["verdict"] = decide_verdict(metrics["variants"], cfg.evaluate.min_item_recall_ratio)
    baseline_ds, baseline = published_baseline(store, ds)
    gate = check_gates(metrics, baseline, baseline_ds, cfg.evaluate)
    decision = _promotion(store, cfg, ds, setup, variants, gate)
    seconds = clock.total()
    metrics["gate"] = gate.to_dict()
    metrics["promotion"] = decision.to_dict()
    metrics["run"] = _run_section(store, cfg, ds, setup, metrics, versions, seconds)
    uri = store.uri(store.put_json(layout.metrics(ds), metrics))
    if decision.promoted:  # after the metrics are written: the event points at them
        promote(store, cfg.models.generator_name, ds, decision)
    log.info("stage=evaluate ds=%s metrics=%s gate=%s seconds=%s", ds, uri, gate.passed, seconds)
    headline = {name: {k: variants[name].get(k) for k in HEADLINE_KEYS} for name in variants}
    return EvaluationSummary(ds, uri, headline, gate.to_dict(), seconds), gate


def _promotion(
    store: ObjectStore, cfg: ICGConfig, ds: str, setup: EvalSetup, variants: dict[str, Any], gate: GateResult
) -> PromotionDecision:
    """Whether the day's challenger replaces the champion (never on a failed gate)."""
    decision = decide_promotion(
        setup.icg_version, setup.challenger, (variants.get("challenger") or {}).get("uplift_vs_icg"),
        metric=primary_metric(setup.oracle is not None), max_relevance_drop=cfg.evaluate.max_relevance_drop_vs_reference,
        backfill=is_backfill(store, cfg, ds, setup.icg_version),
    )  # fmt: skip
    if decision.promoted and not gate.passed:
        return replace(decision, promoted=False, reason=f"{decision.reason}, but the quality gate failed")
    log.info("stage=evaluate ds=%s champion=%s challenger=%s promoted=%s: %s",
             ds, decision.champion, decision.challenger, decision.promoted, decision.reason)  # fmt: skip
    return decision


def _variant_covers(
    store: ObjectStore, cfg: ICGConfig, ds: str, setup: EvalSetup, clock: _Clock
) -> tuple[dict[str, VariantCovers], list[dict[str, Any]]]:
    """Covers of the baselines, ICG (as published, and unguided), the base generator and the ceiling."""
    items, segments, seeds, batch = setup.items, setup.segments, setup.seeds, cfg.evaluate.batch_size
    covers: dict[str, VariantCovers] = {
        "reference": reference_covers(items, len(segments)),
        "selection": select_covers(items, segments, setup.judges.preference),
    }
    clock.lap("selection")
    covers["icg"] = _icg_covers(store, cfg, ds, setup.bundle, items, segments, seeds, setup.rewards)
    clock.lap("icg")
    tuned = setup.bundle  # whose fine-tuning curve is drawn: tonight's run when there is one
    if setup.challenger is not None:  # the same policy, items, segments and seeds as the champion's
        tuned = load_bundle(store, cfg.models, setup.challenger)
        covers["challenger"] = _icg_covers(store, cfg, ds, tuned, items, segments, seeds, setup.rewards)
        clock.lap("challenger")
    sampling = Sampling.from_config(cfg)
    plain = Sampling(sampling.steps, sampling.guidance_scale, sampling.scheduler)
    covers["icg_unguided"] = generate_covers(
        setup.bundle, items, segments, seeds, plain, personalized=True, batch_size=batch
    )
    clock.lap("icg_unguided")
    same = setup.base_version == setup.icg_version
    base_bundle = setup.bundle if same else load_bundle(store, cfg.models, setup.base_version)
    covers["base"] = generate_covers(
        base_bundle, items, segments, seeds, plain, personalized=False, batch_size=batch
    )
    del base_bundle
    clock.lap("base")
    curve_items = items.head(cfg.evaluate.curve_items)
    n_curve = len(curve_items) * len(segments)
    curve = finetune_curve(store, cfg.models.generator_name, tuned, curve_items, segments, setup.judges,
                           seeds[:n_curve], plain, covers["base"].images[:n_curve], batch_size=batch)  # fmt: skip
    clock.lap("finetune_curve")
    if setup.oracle is not None:
        covers["oracle_best"] = oracle_best_covers(items, segments, setup.oracle, seed=cfg.evaluate.seed)
        clock.lap("oracle_best")
    return covers, curve


def _ablation_covers(
    store: ObjectStore,
    cfg: ICGConfig,
    ds: str,
    setup: EvalSetup,
    covers: dict[str, VariantCovers],
    versions: dict[str, str],
    clock: _Clock,
) -> dict[str, str]:
    """Fine-tune and generate each ablation into ``covers``; returns the variants that failed, with why."""
    from icg_core.training.stage2 import RelevanceCollapse

    failed: dict[str, str] = {}
    for variant in ABLATIONS:
        try:
            ablated_cfg, summary = run_ablation(store, cfg, ds, variant, setup.base_version)
        except RelevanceCollapse as exc:
            failed[variant] = str(exc)
            clock.lap(f"{variant}_finetune")
            continue
        clock.lap(f"{variant}_finetune")
        bundle = load_bundle(store, ablated_cfg.models, summary.generator_version)
        covers[variant] = generate_covers(
            bundle, setup.items, setup.segments, setup.seeds, Sampling.from_config(cfg), personalized=True,
            batch_size=cfg.evaluate.batch_size, rewards=setup.rewards.with_weights(ablated_cfg.rewards.weights),
        )  # fmt: skip
        versions[f"generator_{variant}"] = summary.generator_version
        clock.lap(variant)
    return failed


def _measure(covers: dict[str, VariantCovers], setup: EvalSetup, ecfg: EvaluateConfig) -> dict[str, Any]:
    """Each variant's metrics with intervals (same resampled items for all) and uplifts over the baselines."""
    items, segments = setup.items, setup.segments
    indices = resample_indices(len(items), ecfg.bootstrap_samples, ecfg.seed)
    per_item, variants = {}, {}
    for name, variant_covers in covers.items():
        measures = measure_covers(variant_covers.images, items, segments, setup.judges)
        per_item[name] = per_item_measures(measures, variant_covers.images, len(items), segments.sizes)
        variants[name] = variant_metrics(
            per_item[name], variant_covers, indices, by_segment(measures, segments, len(items))
        )
    for name in variants:
        for baseline in ("reference", "base"):
            if name != baseline:
                variants[name][f"uplift_vs_{baseline}"] = uplift(per_item[name], per_item[baseline], indices)
    if "challenger" in variants:
        variants["challenger"]["uplift_vs_icg"] = uplift(per_item["challenger"], per_item["icg"], indices)
    return variants


def _downstream(
    store: ObjectStore, ds: str, setup: EvalSetup, icg: VariantCovers, window: Any, seed: int
) -> dict[str, Any]:
    """The downstream recommender's held-out AUC with and without the published covers' features."""
    segments = setup.segments
    segment_of_user = {u: int(s) for s in segments.segment_ids.tolist() for u in segments.user_ids[int(s)]}
    in_memory = {
        (item, int(s)): icg.images[i * len(segments) + j]
        for i, item in enumerate(setup.items.item_ids)
        for j, s in enumerate(segments.segment_ids.tolist())
    }
    return downstream_auc(
        store, window, seed=seed, oracle=setup.oracle, segment_of_user=segment_of_user,
        cover_uris=staged_segment_covers(store, ds, setup.icg_version), covers=in_memory,
    )  # fmt: skip


def _run_section(
    store: ObjectStore,
    cfg: ICGConfig,
    ds: str,
    setup: EvalSetup,
    metrics: dict[str, Any],
    versions: dict[str, str],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """What was evaluated: the data interval, items, models and timings."""
    start = dt.date.fromisoformat(ds) - dt.timedelta(days=cfg.extract.lookback_days)
    return {
        "data_interval": {"start": start.isoformat(), "end": ds},
        "items": len(setup.items),
        "item_ids": setup.items.item_ids,
        "bootstrap_samples": cfg.evaluate.bootstrap_samples,
        "model_versions": metrics.get("run", {}).get("model_versions", {}) | versions,
        "timings": seconds,
        "stage_seconds": _stage_seconds(store, ds, versions) | {"evaluate": seconds["total"]},
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
    }
