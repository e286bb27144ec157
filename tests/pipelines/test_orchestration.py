"""The DAGs' side: alerts through the log and a webhook, the deadline callback, forwarded settings."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from icg_core.config import OperationsConfig
from pipelines.orchestration import (
    FailureNotifier,
    deadline_missed,
    forwarded_settings,
    notify,
    publish_deadline,
)
from tests.conftest import AlertWebhook


@pytest.fixture
def webhook(alert_webhook: AlertWebhook, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    monkeypatch.setenv("ICG__OPERATIONS__NOTIFY_WEBHOOK_URL", alert_webhook.url)
    return alert_webhook.received


def test_an_alert_is_logged_and_posted(webhook: list[dict], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="pipelines.orchestration"):
        notify("icg_nightly ds=2026-11-15: task validate failed")
    assert webhook == [{"text": "icg_nightly ds=2026-11-15: task validate failed"}]
    assert "ICG ALERT: icg_nightly ds=2026-11-15" in caplog.text


def test_a_dead_webhook_is_logged_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    ops = OperationsConfig(notify_webhook_url="http://127.0.0.1:9/nobody-listens", notify_timeout_s=2)
    with caplog.at_level(logging.ERROR, logger="pipelines.orchestration"):
        notify("something failed", ops)
    assert "the alert webhook failed" in caplog.text


def test_a_task_failure_alert_names_the_task_the_day_and_the_reason(webhook: list[dict]) -> None:
    ti = SimpleNamespace(dag_id="icg_nightly", task_id="evaluate", try_number=3, log_url="http://ui/log")
    reason = RuntimeError("stage evaluate ds=2026-11-15 refused: oracle_ctr fell 14% below 2026-11-14\nmore")
    FailureNotifier()({"ti": ti, "ds": "2026-11-15", "exception": reason})
    [alert] = webhook
    assert alert["text"].splitlines()[:2] == [
        "ICG icg_nightly ds=2026-11-15: task evaluate failed (try 3).",
        "stage evaluate ds=2026-11-15 refused: oracle_ctr fell 14% below 2026-11-14",
    ]
    assert alert["text"].endswith("Log: http://ui/log")


def test_a_missed_deadline_alerts_except_for_backfills(webhook: list[dict]) -> None:
    run = {
        "dag_id": "icg_nightly",
        "dag_run_id": "scheduled__2026-11-15",
        "logical_date": "2026-11-15T00:00:00Z",
    }
    deadline = {"deadline_time": "2026-11-15T06:00:00Z"}
    deadline_missed({"dag_run": run | {"run_type": "scheduled"}, "deadline": deadline})
    deadline_missed({"dag_run": run | {"run_type": "backfill"}, "deadline": deadline})
    assert len(webhook) == 1 and "has not finished by its deadline 2026-11-15T06:00:00Z" in webhook[0]["text"]


def test_the_deadline_follows_the_config() -> None:
    assert (
        publish_deadline(OperationsConfig(publish_deadline_utc="05:30")).interval.total_seconds()
        == 5.5 * 3600
    )
    assert publish_deadline(OperationsConfig(publish_deadline_utc=None)) is None
    # `airflow dags test` has no scheduler to watch it (and Airflow 3.3.2 fails such runs: #73428)
    assert publish_deadline(OperationsConfig(), argv=["airflow", "dags", "test", "icg_nightly"]) is None
    assert publish_deadline(OperationsConfig(), argv=["airflow", "dag-processor"]) is not None
    with pytest.raises(ValueError):
        OperationsConfig(publish_deadline_utc="25:00")


def test_only_icg_settings_reach_a_ray_job() -> None:
    environ = {
        "ICG_CONFIG": "/etc/icg/cluster.yaml",
        "ICG__STORAGE__ROOT": "s3://b/icg",
        "AWS_SECRET_ACCESS_KEY": "x",
    }
    assert forwarded_settings(environ) == {
        "ICG_CONFIG": "/etc/icg/cluster.yaml",
        "ICG__STORAGE__ROOT": "s3://b/icg",
    }
