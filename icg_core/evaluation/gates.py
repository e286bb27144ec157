"""The evaluate stage's gates: full ICG must not regress, must keep its items, and must not trade relevance away.

1. Regression: for each metric in ``evaluate.gate_metrics``, the ``icg`` variant's value must not
   fall more than ``max_regression`` (relative) below the same metric of the last *published* run
   (the day the covers manifest's ``_latest`` pointer names, or the newest published day before
   ``ds`` when ``_latest`` is ``ds`` itself or later). No published run yet, or a metric that is null
   on either side (an oracle metric on real data): that check is skipped and says so.
2. The item kept: ``icg`` item recall@1 (:mod:`icg_core.rewards.content`) must be at least
   ``min_item_recall_ratio`` of the reference covers', and the cover policy may have fallen back to
   the item's reference on at most ``max_reference_share`` of the pairs: a generator whose covers
   lose their item is refused, even where the policy would publish references in their place.
3. Relevance versus the reference covers: ``icg`` relevance must not fall more than
   ``max_relevance_drop_vs_reference`` (relative) below the reference covers' on the same items.

Content is compared with the item's reference, never with the base generator: a base that loses the
item too would make every loss look small. Setting ``max_relevance_drop_vs_reference`` (env
``ICG__EVALUATE__MAX_RELEVANCE_DROP_VS_REFERENCE``) to a large negative number, e.g. -10, makes check
3 fail on any run: the knob tests use to force a failure.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from icg_core import layout
from icg_core.config import EvaluateConfig
from icg_core.evaluation.measures import HEADLINE
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)


def last_published_day(store: ObjectStore, ds: str) -> str | None:
    """The published day the gate compares ``ds`` with: ``_latest`` if before ``ds``, else the newest before it."""
    latest = layout.PUBLISHED_COVERS.latest(store)
    if latest is not None and latest < ds:
        return latest
    earlier = [day for day in layout.PUBLISHED_COVERS.days(store) if day < ds]
    return earlier[-1] if earlier else None


@dataclass
class GateCheck:
    name: (
        str  # "regression:<metric>", "item_recall_vs_reference", "reference_share", "relevance_vs_reference"
    )
    passed: bool
    value: float | None  # what was measured: a relative drop (positive = worse), a ratio or a share
    threshold: float
    detail: str


@dataclass
class GateResult:
    passed: bool
    baseline_ds: str | None  # the published run compared with
    checks: list[GateCheck] = field(default_factory=list)

    def failures(self) -> list[GateCheck]:
        return [check for check in self.checks if not check.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "baseline_ds": self.baseline_ds,
            "checks": [asdict(c) for c in self.checks],
        }

    def message(self) -> str:
        return "; ".join(check.detail for check in self.failures())


def _drop(new: float, old: float) -> float:
    return (old - new) / max(abs(old), 1e-8)


def check_gates(
    metrics: dict[str, Any], baseline: dict[str, Any] | None, baseline_ds: str | None, cfg: EvaluateConfig
) -> GateResult:
    """Run the gates on ``metrics`` (this run's metrics.json) against ``baseline`` (a published run's, or None).

    Raises:
        ValueError: ``cfg.gate_metrics`` names a metric the metrics file does not have.
    """
    unknown = sorted(set(cfg.gate_metrics) - set(HEADLINE))
    if unknown:
        raise ValueError(f"evaluate.gate_metrics names unknown metrics {unknown}; known: {list(HEADLINE)}")
    icg = metrics["variants"]["icg"]
    checks = []
    previous = (baseline or {}).get("variants", {}).get("icg")
    for name in cfg.gate_metrics:
        new, old = icg.get(name), (previous or {}).get(name)
        if previous is None or new is None or old is None:
            why = "no published run to compare with" if previous is None else "metric is null on one side"
            checks.append(
                GateCheck(f"regression:{name}", True, None, cfg.max_regression, f"{name}: skipped ({why})")
            )
            continue
        drop = _drop(new, old)
        passed = drop <= cfg.max_regression
        detail = f"icg {name} {new:.4f} vs {old:.4f} published on {baseline_ds}: {drop:+.1%} drop (limit {cfg.max_regression:.0%})"
        checks.append(GateCheck(f"regression:{name}", passed, round(drop, 5), cfg.max_regression, detail))
    reference = metrics["variants"].get("reference", {})
    checks += _item_checks(icg, reference, cfg)
    checks.append(_relevance_check(icg, reference, cfg))
    result = GateResult(all(c.passed for c in checks), baseline_ds, checks)
    log.info(
        "stage=evaluate gates passed=%s baseline_ds=%s failures=%s",
        result.passed,
        baseline_ds,
        result.message(),
    )
    return result


def _item_checks(icg: dict[str, Any], reference: dict[str, Any], cfg: EvaluateConfig) -> list[GateCheck]:
    """Check 2: ICG's covers still show their item, and the policy rarely had to publish the reference."""
    checks = []
    recall, floor = icg.get("item_recall_1"), reference.get("item_recall_1")
    if recall is None or floor is None:
        checks.append(
            GateCheck(
                "item_recall_vs_reference",
                True,
                None,
                cfg.min_item_recall_ratio,
                "item recall vs reference: skipped (not measured)",
            )
        )
    else:
        ratio = recall / max(floor, 1e-8)
        detail = (
            f"icg item recall@1 {recall:.4f} vs reference {floor:.4f}: {ratio:.1%} of it "
            f"(at least {cfg.min_item_recall_ratio:.0%})"
        )
        checks.append(
            GateCheck(
                "item_recall_vs_reference",
                ratio >= cfg.min_item_recall_ratio,
                round(ratio, 5),
                cfg.min_item_recall_ratio,
                detail,
            )
        )
    share = icg.get("reference_rate")
    if share is not None:
        detail = (
            f"icg fell back to the reference cover on {share:.1%} of pairs "
            f"(at most {cfg.max_reference_share:.0%}): its candidates lost the item"
        )
        checks.append(
            GateCheck(
                "reference_share",
                share <= cfg.max_reference_share,
                round(share, 5),
                cfg.max_reference_share,
                detail,
            )
        )
    return checks


def _relevance_check(icg: dict[str, Any], reference: dict[str, Any], cfg: EvaluateConfig) -> GateCheck:
    """Check 3: relevance against the reference covers."""
    limit = cfg.max_relevance_drop_vs_reference
    if icg.get("relevance") is None or reference.get("relevance") is None:
        return GateCheck("relevance_vs_reference", True, None, limit, "relevance vs reference: skipped")
    drop = _drop(icg["relevance"], reference["relevance"])
    detail = (
        f"icg relevance {icg['relevance']:.4f} vs reference {reference['relevance']:.4f}: {drop:+.1%} drop "
        f"(limit {limit:.0%})"
    )
    return GateCheck("relevance_vs_reference", drop <= limit, round(drop, 5), limit, detail)


def published_baseline(store: ObjectStore, ds: str) -> tuple[str | None, dict[str, Any] | None]:
    """(day, metrics.json) of the last published run before ``ds`` that has metrics; (None, None) if none."""
    day = last_published_day(store, ds)
    if day is None or not store.exists(layout.metrics(day)):
        return day, None
    return day, store.get_json(layout.metrics(day))
