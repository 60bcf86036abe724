"""The "alert thresholds may have been crossed" hand-over from metering to billing:
metering calls what billing registered at start-up, and nothing when nothing is."""

import logging
import uuid

import pytest

from billing.tasks import alerts_evaluate_soon, alerts_evaluate_task
from metering.control import terms
from metering.control.terms import (
    alert_thresholds_crossed,
    register_alert_thresholds_crossed_handler,
)


def test_billing_registers_its_handler_at_start_up() -> None:
    assert terms.alert_thresholds_crossed_handler is alerts_evaluate_soon


def test_with_no_handler_registered_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terms, "alert_thresholds_crossed_handler", terms._no_alerts)
    assert alert_thresholds_crossed(uuid.uuid4()) is None


def test_the_registered_handler_gets_the_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terms, "alert_thresholds_crossed_handler", terms._no_alerts)
    seen: list[uuid.UUID] = []
    register_alert_thresholds_crossed_handler(seen.append)
    tenant_id = uuid.uuid4()
    alert_thresholds_crossed(tenant_id)
    assert seen == [tenant_id]


def test_a_failing_handler_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broker_down(tenant_id: uuid.UUID) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(terms, "alert_thresholds_crossed_handler", broker_down)
    with caplog.at_level(logging.ERROR, logger="metering.control.terms"):
        alert_thresholds_crossed(uuid.uuid4())  # the proxy's call goes on
    assert "could not hand over the alert evaluation" in caplog.text


def test_billings_handler_enqueues_the_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[object, ...]] = []
    monkeypatch.setattr(
        alerts_evaluate_task,
        "apply_async",
        lambda args=None, kwargs=None, **options: sent.append(tuple(args or ())),
    )
    tenant_id = uuid.uuid4()
    alert_thresholds_crossed(tenant_id)
    assert sent == [(str(tenant_id),)]
    assert alerts_evaluate_task.name == "billing.alerts_evaluate"
