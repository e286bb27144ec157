"""The promotion rule: a challenger replaces the champion only on a clear win, never in a backfill."""

from __future__ import annotations

import pytest

from icg_core import layout
from icg_core.evaluation.promotion import decide_promotion, promote, promotions
from icg_core.storage import ObjectStore

WIN = {"oracle_ctr": 0.08, "oracle_ctr_ci": [0.03, 0.12], "relevance": -0.02}


@pytest.mark.parametrize(
    ("challenger", "uplift", "backfill", "promoted", "reason"),
    [
        ("s2-new", WIN, False, True, "oracle_ctr uplift +3.0%..+12.0% over the champion"),
        (None, None, False, False, "no challenger this run"),
        ("s1-old", WIN, False, False, "no challenger this run"),  # the champion itself
        ("s2-new", WIN, True, False, "backfill: a run for an earlier day never changes the champion"),
        ("s2-new", {**WIN, "oracle_ctr_ci": [-0.01, 0.12]}, False, False, "does not exclude zero"),
        ("s2-new", {**WIN, "relevance": -0.3}, False, False, "relevance falls 30.0% (limit 10%)"),
        ("s2-new", {"oracle_ctr": None, "oracle_ctr_ci": None}, False, False, "not measured"),
    ],
)
def test_the_rule(challenger, uplift, backfill, promoted, reason) -> None:
    decision = decide_promotion(
        "s1-old", challenger, uplift, metric="oracle_ctr", max_relevance_drop=0.1, backfill=backfill
    )
    assert decision.promoted is promoted and reason in decision.reason
    assert decision.champion == "s1-old" and decision.metric == "oracle_ctr"


def test_a_promotion_moves_production_and_is_recorded(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    layout.set_latest(store, "icg_generator", "s1-old")
    layout.set_challenger(store, "icg_generator", "s2-new", "2026-11-15")
    decision = decide_promotion(
        "s1-old", "s2-new", WIN, metric="oracle_ctr", max_relevance_drop=0.1, backfill=False
    )
    promote(store, "icg_generator", "2026-11-15", decision)
    assert layout.latest_version(store, "icg_generator") == "s2-new"
    [event] = promotions(store, "icg_generator")
    assert (event["ds"], event["champion"], event["challenger"], event["promoted"]) == (
        "2026-11-15",
        "s1-old",
        "s2-new",
        True,
    )
    assert layout.model_versions_stored(store, "icg_generator", complete=False) == []  # no fake version dirs


def test_icg_champion_shows_production_and_rolls_back_by_hand(tmp_path) -> None:
    import json
    import subprocess
    import sys

    store = ObjectStore(str(tmp_path))
    for version in ("s2-old", "s2-new"):
        store.put_json(layout.model_marker("icg_generator", version), {})  # complete versions
    layout.set_latest(store, "icg_generator", "s2-new")

    def icg(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "pipelines.champion", "--root", str(tmp_path), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    rolled = icg("--set", "s2-old", "--reason", "covers look washed out", "--json")
    assert rolled.returncode == 0, rolled.stderr
    shown = json.loads(rolled.stdout)
    assert shown["champion"] == "s2-old" == layout.latest_version(store, "icg_generator")
    [event] = shown["promotions"]
    assert (event["champion"], event["challenger"], event["reason"]) == (
        "s2-new",
        "s2-old",
        "manual: covers look washed out",
    )
    missing = icg("--set", "s2-nope")
    assert missing.returncode == 2 and "no complete version 's2-nope'" in missing.stderr
