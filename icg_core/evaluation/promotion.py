"""Champion and challenger: the nightly fine-tune proposes a generator, the evaluation decides.

The *champion* is the production generator, the version ``models/<generator>/_latest`` names: the
generate stage draws every published cover with it. The finetune stage no longer moves ``_latest``;
it saves the day's run as the *challenger* (``models/<generator>/_challenger``, with its ``ds``). The
evaluate stage draws the challenger's covers on the same held-out items, segments and seeds as the
champion's and promotes it only when it wins on the primary metric with a paired bootstrap interval
above zero (oracle CTR in the embedded world, the preference model's score on real data) without
losing more relevance than the gate allows. A promotion is an explicit event: logged, written to
``models/<generator>/_promotions/``, and shown in the metrics and the report. The covers the new
champion draws from the next night carry its version in the manifest's ``generator_version``.

A backfill (a run for a day before the champion's own training day) never promotes: replaying an
old day must not turn production back to an older model.

One exception, at the start: while the champion is the untuned stage-1 generator the bootstrap made,
the first completed fine-tune replaces it at once (:func:`promote_over_untuned`, recorded like any
promotion). Otherwise the first night would publish untuned covers; the evaluation still measures
that generator against the stage-1 one, with intervals, and its gate still guards publishing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from icg_core import layout
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionDecision:
    """Whether the day's challenger replaces the champion, and why."""

    champion: str
    challenger: str | None
    metric: str | None  # the metric the decision was made on
    uplift: float | None  # relative change of challenger over champion on ``metric``
    uplift_ci: list[float] | None  # its paired 95% bootstrap interval
    promoted: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def primary_metric(has_oracle: bool) -> str:
    """What a challenger must win on: oracle CTR where the truth is known, else the preference score."""
    return "oracle_ctr" if has_oracle else "preference"


def decide_promotion(
    champion: str,
    challenger: str | None,
    uplift_vs_champion: Mapping[str, Any] | None,
    *,
    metric: str,
    max_relevance_drop: float,
    backfill: bool,
) -> PromotionDecision:
    """The promotion rule (module docstring) on the challenger's paired uplifts over the champion.

    Args:
        champion, challenger: generator versions (challenger None: nothing to decide).
        uplift_vs_champion: ``{metric: change, metric_ci: [lo, hi]}`` from :func:`icg_core.evaluation.measures.uplift`.
        metric: the primary metric.
        max_relevance_drop: the largest relative relevance loss a winner may have.
        backfill: the run is for a day before the champion's training day.
    """

    def decision(promoted: bool, reason: str) -> PromotionDecision:
        change = (uplift_vs_champion or {}).get(metric)
        interval = (uplift_vs_champion or {}).get(f"{metric}_ci")
        return PromotionDecision(champion, challenger, metric, change, interval, promoted, reason)

    if challenger is None or challenger == champion:
        return decision(False, "no challenger this run (fine-tuning skipped or reused the champion)")
    if backfill:
        return decision(False, "backfill: a run for an earlier day never changes the champion")
    interval = (uplift_vs_champion or {}).get(f"{metric}_ci")
    if interval is None:
        return decision(False, f"{metric} not measured for both generators")
    if interval[0] <= 0:
        return decision(False, f"{metric} uplift interval {interval} does not exclude zero")
    relevance = (uplift_vs_champion or {}).get("relevance")
    if relevance is not None and relevance < -max_relevance_drop:
        return decision(False, f"relevance falls {-relevance:.1%} (limit {max_relevance_drop:.0%})")
    return decision(True, f"{metric} uplift {interval[0]:+.1%}..{interval[1]:+.1%} over the champion")


def promote(store: ObjectStore, name: str, ds: str, decision: PromotionDecision) -> None:
    """Make the challenger the champion: move ``_latest`` and record the event."""
    assert decision.promoted and decision.challenger is not None
    layout.set_latest(store, name, decision.challenger)
    event = {**decision.to_dict(), "ds": ds, "promoted_at": dt.datetime.now(dt.UTC).isoformat()}
    store.put_json(layout.promotion_record(name, ds, decision.challenger), event)
    log.warning(
        "ds=%s PROMOTED generator %s: %s -> %s (%s)",
        ds,
        name,
        decision.champion,
        decision.challenger,
        decision.reason,
    )


def promotions(store: ObjectStore, name: str) -> list[dict[str, Any]]:
    """Every recorded promotion of generator ``name``, oldest first."""
    return [store.get_json(key) for key in sorted(store.list(layout.promotion_records(name)))]


def promote_over_untuned(store: ObjectStore, name: str, version: str, ds: str) -> bool:
    """Make ``version`` the champion if the champion was never fine-tuned; returns whether it did."""
    from icg_core.models.checkpoint import checkpoint_config

    champion = layout.latest_version(store, name)
    if champion is not None and "stage2" in checkpoint_config(store, name, champion):
        return False
    reason = "first fine-tuned generator: the champion was the untuned stage-1 model"
    promote(store, name, ds, PromotionDecision(str(champion), version, None, None, None, True, reason))
    return True


def set_champion(store: ObjectStore, name: str, version: str, reason: str) -> None:
    """Make ``version`` the champion by hand (a rollback, say), recorded and logged like a promotion."""
    champion = layout.latest_version(store, name)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    promote(
        store,
        name,
        today,
        PromotionDecision(str(champion), version, None, None, None, True, f"manual: {reason}"),
    )
