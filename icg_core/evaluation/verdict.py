"""The run's verdict: does ICG beat what platforms do today, on evidence the covers were not optimized for?

1. **The item first.** ICG's covers must still show their item: item recall@1 (the frozen content
   encoder, :mod:`icg_core.rewards.content`) at least ``min_item_recall_ratio`` of the reference
   covers'. Below that the verdict is "not shown", whatever any click score says: a cover that lost
   its item is not a better cover of it.
2. **Clicks, held out.** In the embedded world, the oracle CTR of each segment's users: "wins" when
   ICG's interval lies wholly above the best baseline's (reference, selection, base), "loses" when
   wholly below, else "no clear winner".
3. **No evidence, no claim.** Without an oracle, the only click score is the preference model's, the
   reward the covers were steered and chosen by: it is never evidence, so the verdict is "not shown".

The evaluate stage writes the verdict into ``metrics.json`` (``verdict``); the report opens with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

BASELINES = ("reference", "selection", "base")  # what ICG must beat: the verdict names the best of them
WINS, LOSES, UNCLEAR, NOT_SHOWN = "wins", "loses", "no clear winner", "not shown"


def _value(variant: Mapping[str, Any], key: str) -> float | None:
    value = variant.get(key)
    return None if value is None else float(value)


def decide_verdict(variants: Mapping[str, Mapping[str, Any]], min_item_recall_ratio: float) -> dict[str, Any]:
    """The verdict of the module docstring from metrics.json's ``variants``.

    Returns:
        ``{outcome, metric, baseline, icg, icg_ci, baseline_value, baseline_ci, ceiling, reason}``;
        ``outcome`` is one of "wins", "loses", "no clear winner", "not shown".
    """
    icg = variants.get("icg") or {}
    out: dict[str, Any] = {"outcome": NOT_SHOWN, "metric": None, "baseline": None, "reason": ""}
    recall, reference_recall = (
        _value(icg, "item_recall_1"),
        _value(variants.get("reference") or {}, "item_recall_1"),
    )
    if (
        recall is not None
        and reference_recall is not None
        and recall < min_item_recall_ratio * reference_recall
    ):
        out["reason"] = (
            f"ICG's covers lost their item: item recall@1 {recall:.3f} against the reference covers' "
            f"{reference_recall:.3f} (at least {min_item_recall_ratio:.0%} of it is required)"
        )
        return out
    if _value(icg, "oracle_ctr") is None:
        out["reason"] = (
            "no held-out click evidence on this data: the preference score is the reward the covers were "
            "optimized for, so it cannot show a win"
        )
        return out
    metric = "oracle_ctr"
    scored = {b: variants[b] for b in BASELINES if _value(variants.get(b) or {}, metric) is not None}
    if not scored:
        out["reason"] = "no baseline was measured"
        return out
    best = max(scored, key=lambda b: float(scored[b][metric]))
    icg_ci, best_ci = (
        icg.get(f"{metric}_ci") or [None, None],
        scored[best].get(f"{metric}_ci") or [None, None],
    )
    outcome = UNCLEAR
    if None not in (icg_ci[0], best_ci[1]) and icg_ci[0] > best_ci[1]:
        outcome = WINS
    elif None not in (icg_ci[1], best_ci[0]) and icg_ci[1] < best_ci[0]:
        outcome = LOSES
    return out | {
        "outcome": outcome,
        "metric": metric,
        "baseline": best,
        "icg": icg.get(metric),
        "icg_ci": icg_ci,
        "baseline_value": scored[best].get(metric),
        "baseline_ci": best_ci,
        "ceiling": (variants.get("oracle_best") or {}).get(metric),
        "reason": "oracle CTR of each segment's users on held-out items",
    }
