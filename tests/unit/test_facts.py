"""Task facts from events (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from streams.facts import FOLDED_EVENTS, agent_key, fold, task_key
from schemas.messages import EventMeta

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def meta(at: datetime, tenant: str = "acme", n: int = 1) -> EventMeta:
    return EventMeta(event_id=f"e{n}", tenant_id=tenant, stream_id="s", version=n, occurred_at=at, command_id="c")


def run(events: list[tuple[str, dict, EventMeta]]) -> tuple[dict, list[dict]]:
    context: dict = {}
    facts = []
    for kind, data, m in events:
        changes, fact = fold(kind, data, m, context)
        for key, value in changes.items():
            if value is None:
                context.pop(key, None)
            else:
                context[key] = value
        if fact:
            facts.append(fact)
    return context, facts


def test_a_finished_task_becomes_one_fact_joined_with_its_agent_and_assignment():
    context, facts = run(
        [
            ("AgentCreated", {"agent_id": "a1", "name": "A", "agent_type": "llm", "region": "us-east-1", "config": {}}, meta(T0)),
            ("TaskAssigned", {"task_id": "t1", "agent_id": "a1", "task_type": "x", "input": {}}, meta(T0 + timedelta(seconds=1), n=2)),
            ("TaskCompleted", {"task_id": "t1", "agent_id": "a1", "output": {}, "cost": 0.25}, meta(T0 + timedelta(seconds=1, milliseconds=750), n=3)),
            ("TaskAssigned", {"task_id": "t2", "agent_id": "a1", "task_type": "x", "input": {}}, meta(T0 + timedelta(seconds=2), n=4)),
            ("TaskFailed", {"task_id": "t2", "agent_id": "a1", "error": "boom", "cost": 0.1}, meta(T0 + timedelta(seconds=5), n=5)),
        ]
    )
    assert [(f["task_id"], f["outcome"], f["response_time_ms"], f["cost"], f["agent_type"], f["region"]) for f in facts] == [
        ("t1", "completed", 750, 0.25, "llm", "us-east-1"),
        ("t2", "failed", 3000, 0.1, "llm", "us-east-1"),
    ]
    assert task_key("acme", "t1") not in context and agent_key("acme", "a1") in context  # open tasks are forgotten once finished


def test_tenants_are_joined_separately_and_missing_context_is_unknown():
    _, facts = run(
        [
            ("AgentCreated", {"agent_id": "a1", "name": "A", "agent_type": "llm", "region": "eu", "config": {}}, meta(T0, tenant="acme")),
            ("TaskCompleted", {"task_id": "t1", "agent_id": "a1", "output": {}, "cost": 1.0}, meta(T0, tenant="globex")),
        ]
    )
    assert facts[0]["tenant"] == "globex" and facts[0]["agent_type"] == "unknown" and facts[0]["response_time_ms"] == 0


def test_other_events_change_nothing():
    assert fold("TenantCreated", {"name": "x", "region": "eu", "plan": "free"}, meta(T0), {}) == ({}, None)


def test_only_the_folded_events_change_the_context_or_make_facts():
    """The facts builder skips decoding every event outside FOLDED_EVENTS: they must be no-ops."""
    assert FOLDED_EVENTS == {"AgentCreated", "TaskAssigned", "TaskCompleted", "TaskFailed"}
    for other in ("AgentStarted", "AgentStopped", "AgentConfigured", "TenantConfigured", "AccessGranted"):
        assert fold(other, {"agent_id": "a"}, meta(T0), {}) == ({}, None)
