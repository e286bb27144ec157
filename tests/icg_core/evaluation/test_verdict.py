"""The verdict: never on the reward the covers were optimized for, never for covers that lost their item."""

from __future__ import annotations

from icg_core.evaluation.verdict import LOSES, NOT_SHOWN, UNCLEAR, WINS, decide_verdict


def _variant(ctr: float | None, spread: float = 0.01, **extra: float | None) -> dict:
    ci = None if ctr is None else [ctr - spread, ctr + spread]
    return {"oracle_ctr": ctr, "oracle_ctr_ci": ci, "preference": 0.9, "preference_ci": [0.89, 0.91]} | extra


def _variants(icg_ctr: float | None, icg_recall: float = 0.95) -> dict:
    return {
        "reference": _variant(None if icg_ctr is None else 0.30, item_recall_1=1.0),
        "selection": _variant(None if icg_ctr is None else 0.45),
        "base": _variant(None if icg_ctr is None else 0.28),
        "icg": _variant(icg_ctr, item_recall_1=icg_recall),
        "oracle_best": _variant(None if icg_ctr is None else 0.7),
    }


def test_oracle_ctr_decides_against_the_best_baseline() -> None:
    verdict = decide_verdict(_variants(0.55), 0.9)
    assert verdict["outcome"] == WINS and verdict["baseline"] == "selection" and verdict["ceiling"] == 0.7
    assert decide_verdict(_variants(0.455), 0.9)["outcome"] == UNCLEAR
    assert decide_verdict(_variants(0.35), 0.9)["outcome"] == LOSES


def test_covers_that_lost_their_item_never_win_whatever_their_clicks() -> None:
    verdict = decide_verdict(_variants(0.6, icg_recall=0.4), 0.9)
    assert verdict["outcome"] == NOT_SHOWN and "lost their item" in verdict["reason"]


def test_without_an_oracle_the_preference_score_shows_nothing() -> None:
    """The preference score is what the covers were optimized for: ICG's 0.9 against selection's 0.9 or anything."""
    variants = _variants(None)
    variants["icg"]["preference"], variants["icg"]["preference_ci"] = 0.99, [0.98, 1.0]
    verdict = decide_verdict(variants, 0.9)
    assert verdict["outcome"] == NOT_SHOWN and verdict["metric"] is None
    assert "optimized for" in verdict["reason"]
