"""The evaluate gates: regression against the last published run, the item kept, relevance against the
reference covers, the forcing knob."""

from __future__ import annotations

import pytest

from icg_core import layout
from icg_core.config import EvaluateConfig, load_config
from icg_core.data.schemas import empty_table
from icg_core.evaluation.gates import check_gates, last_published_day, published_baseline
from icg_core.storage import ObjectStore


def metrics(icg: dict, reference_relevance: float = 0.5, reference_recall: float = 1.0) -> dict:
    reference = {"relevance": reference_relevance, "item_recall_1": reference_recall}
    return {"variants": {"icg": icg, "reference": reference, "base": {"relevance": 0.1}}}


GOOD = {
    "relevance": 0.5,
    "aesthetic_heldout": 0.6,
    "oracle_ctr": 0.3,
    "item_recall_1": 0.95,
    "reference_rate": 0.1,
}


def test_passes_without_a_published_run_and_fails_on_a_regression() -> None:
    cfg = EvaluateConfig()
    first = check_gates(metrics(GOOD), None, None, cfg)
    assert first.passed and all(
        "skipped" in c.detail for c in first.checks if c.name.startswith("regression")
    )
    worse = dict(GOOD, oracle_ctr=0.25)  # -16.7% vs the published 0.3
    result = check_gates(metrics(worse), metrics(GOOD), "2026-11-14", cfg)
    assert not result.passed
    assert [c.name for c in result.failures()] == ["regression:oracle_ctr"]
    assert "2026-11-14" in result.message()
    assert check_gates(metrics(dict(GOOD, oracle_ctr=0.29)), metrics(GOOD), "2026-11-14", cfg).passed


def test_null_metrics_are_skipped_on_real_data() -> None:
    real = dict(GOOD, oracle_ctr=None)
    assert check_gates(metrics(real), metrics(real), "2026-11-14", EvaluateConfig()).passed


def test_relevance_is_compared_with_the_reference_covers_not_the_base() -> None:
    cfg = EvaluateConfig(max_relevance_drop_vs_reference=0.05)
    assert check_gates(metrics(GOOD, reference_relevance=0.52), None, None, cfg).passed  # -3.8%
    result = check_gates(metrics(GOOD, reference_relevance=0.6), None, None, cfg)  # -16.7%, base far below
    assert [c.name for c in result.failures()] == ["relevance_vs_reference"]


def test_covers_that_lose_their_item_fail_even_where_the_policy_published_references() -> None:
    cfg = EvaluateConfig()
    lost = dict(GOOD, item_recall_1=0.5)  # 50% of the reference covers' recall
    assert [c.name for c in check_gates(metrics(lost), None, None, cfg).failures()] == [
        "item_recall_vs_reference"
    ]
    # Recall looks perfect because the references stood in for most pairs.
    filled = dict(GOOD, item_recall_1=1.0, reference_rate=0.95)
    result = check_gates(metrics(filled), None, None, cfg)
    assert [c.name for c in result.failures()] == ["reference_share"] and "95.0%" in result.message()
    unmeasured = {k: v for k, v in GOOD.items() if k not in ("item_recall_1", "reference_rate")}
    assert check_gates(metrics(unmeasured), None, None, cfg).passed  # an older metrics file


def test_the_env_knob_forces_a_failure() -> None:
    cfg = load_config(environ={"ICG__EVALUATE__MAX_RELEVANCE_DROP_VS_REFERENCE": "-10"}).evaluate
    result = check_gates(metrics(GOOD), None, None, cfg)
    assert not result.passed and result.failures()[0].name == "relevance_vs_reference"


def test_unknown_gate_metric_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="ctr_typo"):
        check_gates(metrics(GOOD), None, None, EvaluateConfig(gate_metrics=["ctr_typo"]))


def _publish(store: ObjectStore, ds: str) -> None:
    table = empty_table("covers")
    layout.PUBLISHED_COVERS.write(
        store, table.drop_columns(["ds"]) if "ds" in table.column_names else table, ds
    )


def test_baseline_is_the_last_published_day_before_ds(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    assert last_published_day(store, "2026-11-15") is None
    for day in ("2026-11-13", "2026-11-14"):
        _publish(store, day)
    layout.PUBLISHED_COVERS.set_latest(store, "2026-11-13")
    assert last_published_day(store, "2026-11-15") == "2026-11-13"  # the latest pointer wins
    _publish(store, "2026-11-15")
    layout.PUBLISHED_COVERS.set_latest(store, "2026-11-15")  # re-evaluating a published day: the one before
    assert last_published_day(store, "2026-11-15") == "2026-11-14"
    assert published_baseline(store, "2026-11-15") == ("2026-11-14", None)
    store.put_json(layout.metrics("2026-11-14"), metrics(GOOD))
    assert published_baseline(store, "2026-11-15")[1] == metrics(GOOD)
