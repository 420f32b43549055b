"""Metering (streams/billing.py), usage rows (sinks/billing_usage.py) and invoices: pure, by example."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas.billing import UsageRecord
from schemas.messages import EventMeta
from sinks.billing_usage import InvalidUsage, month_usage_sql, usage_row
from streams.billing import agent_key, invoice, meter

T0 = datetime(2026, 3, 31, 23, 59, 59, tzinfo=UTC)


def meta(event_id: str, at: datetime = T0, stream: str = "task-1", tenant: str = "acme") -> EventMeta:
    return EventMeta(event_id=event_id, tenant_id=tenant, stream_id=stream, version=1, occurred_at=at, command_id="c")


def test_a_completed_task_meters_its_cost_tokens_and_bytes_keyed_by_its_event():
    changes, records = meter("TaskCompleted", {"task_id": "1", "agent_id": "a", "cost": 0.1234567, "output": {"tokens": "812"}}, meta("e1"), 40, {})
    assert not changes
    assert [(r.metric, r.quantity, r.unit, r.key) for r in records] == [
        ("storage", 40, "bytes", "e1:storage"), ("task_cost", 123457, "micros", "e1:task_cost"), ("tokens", 812, "tokens", "e1:tokens")
    ]
    assert {r.month for r in records} == {"2026-03"} and {r.tenant for r in records} == {"acme"}
    # the same event metered again gives the same records (the idempotency key is the event's)
    assert meter("TaskCompleted", {"task_id": "1", "agent_id": "a", "cost": 0.1234567, "output": {"tokens": "812"}}, meta("e1"), 40, {})[1] == records


def test_tokens_only_when_reported_as_a_whole_number():
    for output in ({}, {"tokens": "many"}, {"tokens": "-3"}):
        _, records = meter("TaskCompleted", {"task_id": "1", "agent_id": "a", "cost": 0.0, "output": output}, meta("e"), 1, {})
        assert [r.metric for r in records] == ["storage", "task_cost"]


def test_agent_runtime_from_start_to_stop():
    context: dict = {}
    changes, records = meter("AgentStarted", {"agent_id": "a"}, meta("s", stream="agent-a"), 10, context)
    context.update(changes)
    assert [r.metric for r in records] == ["storage"] and agent_key("acme", "a") in context
    changes, records = meter("AgentStopped", {"agent_id": "a"}, meta("x", T0 + timedelta(seconds=90, milliseconds=5), "agent-a"), 12, context)
    assert changes == {agent_key("acme", "a"): None}
    assert [(r.metric, r.quantity, r.month) for r in records] == [("storage", 12, "2026-04"), ("agent_runtime", 90_005, "2026-04")]
    _, again = meter("AgentStopped", {"agent_id": "b"}, meta("y"), 12, context)  # never started: no runtime
    assert [r.metric for r in again] == ["storage"]


def test_failed_task_cost_and_other_events_storage_only():
    _, failed = meter("TaskFailed", {"task_id": "1", "agent_id": "a", "error": "x", "cost": 0.5}, meta("f"), 30, {})
    assert [(r.metric, r.quantity) for r in failed] == [("storage", 30), ("failed_task_cost", 500_000)]
    _, other = meter("AgentConfigured", None, meta("g"), 77, {})
    assert [(r.metric, r.quantity) for r in other] == [("storage", 77)]


def test_usage_rows_and_bad_records():
    _, records = meter("TaskCompleted", {"task_id": "1", "agent_id": "a", "cost": 1.5}, meta("e1"), 40, {})
    row = usage_row(records[1].model_dump_json().encode())
    assert row[:6] == ["e1:task_cost", "acme", "task_cost", "micros", 1_500_000, "2026-03"]
    with pytest.raises(InvalidUsage):
        usage_row(b'{"key": "x"}')
    with pytest.raises(InvalidUsage):
        usage_row(records[1].model_dump_json().replace("1500000", "-1").encode())


def test_invoice_charges_money_only_and_totals_exactly():
    bill = invoice("acme", "2026-03", [("tokens", "tokens", 900, 3), ("task_cost", "micros", 1_000_001, 2), ("failed_task_cost", "micros", 7, 1), ("storage", "bytes", 10, 6)])
    assert [(l.metric, l.amount_micros) for l in bill.lines] == [("failed_task_cost", 7), ("storage", 0), ("task_cost", 1_000_001), ("tokens", 0)]
    assert bill.total_micros == 1_000_008


def test_month_usage_sql_quotes_the_tenant_and_checks_the_month():
    sql = month_usage_sql("agentstream.billing_usage", "o'brien\\", "2026-03")
    assert "tenant = 'o\\'brien\\\\'" in sql and "month = '2026-03'" in sql
    with pytest.raises(ValueError, match="YYYY-MM"):
        month_usage_sql("agentstream.billing_usage", "acme", "2026-13")
    assert UsageRecord.key_of("e", "tokens") == "e:tokens"
