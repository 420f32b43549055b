"""The read-model folds (pure): agent summaries, tenant overviews, the checkpoint rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schemas import default_registry
from streams import projections as pj
from schemas.messages import EventMeta

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def meta(stream_id: str, version: int, minutes: int = 0, tenant: str = "acme") -> EventMeta:
    return EventMeta(event_id=f"e-{stream_id}-{version}", tenant_id=tenant, stream_id=stream_id, version=version, occurred_at=T0 + timedelta(minutes=minutes), command_id="c")


CREATED = {"agent_id": "a1", "name": "Scout", "agent_type": "retriever", "region": "eu", "config": {"k": "v"}, "capabilities": ["search"]}


def fold(events: list[tuple[str, dict, EventMeta]]) -> tuple[dict | None, dict | None]:
    """Fold events of one tenant about agent a1 (and the tenant) as the projector does."""
    agent = tenant = None
    for event_type, data, m in events:
        update = pj.apply_event(agent, tenant, event_type, data, m)
        agent = update.agent if update.agent is not None else agent
        tenant = update.tenant if update.tenant is not None else tenant
    return agent, tenant


def test_agent_created_fills_the_summary_and_counts_the_agent():
    update = pj.apply_event(None, None, "AgentCreated", CREATED, meta("agent-a1", 1))
    assert update.agent == {
        "tenant_id": "acme", "agent_id": "a1", "status": "created", "name": "Scout", "agent_type": "retriever", "region": "eu",
        "config": {"k": "v"}, "capabilities": ["search"], "tasks_assigned": 0, "tasks_completed": 0, "tasks_failed": 0,
        "open_tasks": 0, "total_cost": 0.0, "last_activity": T0.isoformat(), "version": 1,
    }  # fmt: skip
    assert update.tenant["agents_total"] == 1 and update.tenant["agents_running"] == 0
    assert pj.AgentSummary.model_validate(update.agent).status == "created"


def test_agent_configured_merges_config_like_the_command_side():
    agent, _ = fold([("AgentCreated", CREATED, meta("agent-a1", 1)), ("AgentConfigured", {"agent_id": "a1", "config": {"x": "1"}}, meta("agent-a1", 2, 5))])
    assert agent["config"] == {"k": "v", "x": "1"}
    assert agent["version"] == 2 and agent["last_activity"] == (T0 + timedelta(minutes=5)).isoformat()


def test_start_and_stop_move_the_status_and_the_tenant_running_count():
    created = [("TenantCreated", {"name": "Acme", "region": "eu", "plan": "pro"}, meta("tenant", 1)), ("AgentCreated", CREATED, meta("agent-a1", 1))]
    agent, tenant = fold([*created, ("AgentStarted", {"agent_id": "a1"}, meta("agent-a1", 2))])
    assert agent["status"] == "running" and tenant["agents_running"] == 1 and tenant["agents_total"] == 1
    agent, tenant = fold([*created, ("AgentStarted", {"agent_id": "a1"}, meta("agent-a1", 2)), ("AgentStopped", {"agent_id": "a1", "reason": None}, meta("agent-a1", 3))])
    assert agent["status"] == "stopped" and tenant["agents_running"] == 0 and tenant["agents_total"] == 1
    assert (tenant["name"], tenant["region"], tenant["plan"]) == ("Acme", "eu", "pro")


def test_tenant_counts_agents_running_across_agents():
    tenant = None
    agents: dict[str, dict | None] = {}
    for agent_id, event_type in [("a1", "AgentCreated"), ("a2", "AgentCreated"), ("a1", "AgentStarted"), ("a2", "AgentStarted"), ("a1", "AgentStopped"), ("a1", "AgentStarted")]:
        data = {**CREATED, "agent_id": agent_id} if event_type == "AgentCreated" else {"agent_id": agent_id}
        update = pj.apply_event(agents.get(agent_id), tenant, event_type, data, meta(f"agent-{agent_id}", 1))
        agents[agent_id], tenant = update.agent, update.tenant
    assert tenant["agents_total"] == 2 and tenant["agents_running"] == 2


def test_task_events_count_tasks_and_cost_on_the_agent_and_the_tenant():
    agent, tenant = fold(
        [
            ("AgentCreated", CREATED, meta("agent-a1", 1)),
            ("AgentStarted", {"agent_id": "a1"}, meta("agent-a1", 2)),
            ("TaskAssigned", {"task_id": "t1", "agent_id": "a1", "task_type": "x", "input": {}}, meta("task-t1", 1)),
            ("TaskAssigned", {"task_id": "t2", "agent_id": "a1", "task_type": "x", "input": {}}, meta("task-t2", 1)),
            ("TaskAssigned", {"task_id": "t3", "agent_id": "a1", "task_type": "x", "input": {}}, meta("task-t3", 1)),
            ("TaskCompleted", {"task_id": "t1", "agent_id": "a1", "output": {}, "cost": 0.25, "duration_s": 1.0}, meta("task-t1", 2, 3)),
            ("TaskFailed", {"task_id": "t2", "agent_id": "a1", "error": "boom", "cost": 0.5}, meta("task-t2", 2, 4)),
        ]
    )
    assert (agent["tasks_assigned"], agent["tasks_completed"], agent["tasks_failed"], agent["open_tasks"]) == (3, 1, 1, 1)
    assert agent["total_cost"] == pytest.approx(0.75)
    assert agent["version"] == 2, "task events carry the task stream's version, not the agent's"
    assert agent["last_activity"] == (T0 + timedelta(minutes=4)).isoformat()
    assert (tenant["tasks_completed"], tenant["tasks_failed"], tenant["agents_running"]) == (1, 1, 1)
    assert tenant["total_cost"] == pytest.approx(0.75)


def test_tenant_configured_merges_settings_and_other_events_touch_nothing():
    _, tenant = fold([("TenantCreated", {"name": "Acme", "region": "eu", "plan": "free"}, meta("tenant", 1)), ("TenantConfigured", {"settings": {"a": "1"}}, meta("tenant", 2))])
    assert tenant["settings"] == {"a": "1"}
    for event_type in ("SecurityPolicyUpdated", "AccessGranted", "AccessRevoked", "BillingEvent"):
        assert pj.apply_event(None, tenant, event_type, {}, meta("tenant", 3)) == pj.ReadModelUpdate(None, None)


def test_events_for_an_agent_seen_first_mid_stream_start_from_an_unknown_summary():
    update = pj.apply_event(None, None, "AgentStarted", {"agent_id": "a9"}, meta("agent-a9", 4))
    assert update.agent["status"] == "running" and update.agent["name"] == ""
    assert update.tenant["agents_total"] == 0 and update.tenant["agents_running"] == 1


def test_checkpoint_rules():
    assert pj.should_apply(0, pj.parse_checkpoint(None))
    assert pj.should_apply(8, pj.parse_checkpoint("7"))
    assert not pj.should_apply(7, pj.parse_checkpoint("7"))
    assert not pj.should_apply(3, 7)
    assert pj.covers({0: 5, 1: 3}, {0: 5, 1: 2}, [0, 1, 2])
    assert not pj.covers({0: 5}, {0: 5, 1: 0}, [0, 1])
    assert pj.covers({}, {}, range(6))


def test_keys_are_under_the_generation_and_scoped_by_tenant():
    assert pj.agent_key(3, "acme", "a1") == "rm:3:agent:acme:a1"
    assert pj.agents_set_key(3, "acme") == "rm:3:agents:acme"
    assert pj.tenant_key(3, "acme") == "rm:3:tenant:acme"
    assert pj.checkpoint_key(3, 5) == "rm:3:checkpoint:5"
    assert all(k.startswith(pj.generation_prefix(3)) for k in (pj.agent_key(3, "t", "a"), pj.checkpoint_key(3, 0)))
    assert pj.resolve_projection("agent_summary") == pj.resolve_projection("tenant_overview") == "read_models"
    with pytest.raises(KeyError):
        pj.resolve_projection("nope")


def test_decode_event_reads_payload_and_envelope_and_refuses_garbage():
    registry = default_registry()
    value, headers = registry.encode("AgentStarted", {"agent_id": "a1"})
    event = pj.decode_event(registry, value, headers + meta("agent-a1", 2).to_headers())
    assert event.type == "AgentStarted" and event.data == {"agent_id": "a1"} and event.meta.version == 2
    with pytest.raises(pj.ProjectionInputError):
        pj.decode_event(registry, b"\xff\x00", headers + meta("agent-a1", 2).to_headers())
    with pytest.raises(pj.ProjectionInputError):
        pj.decode_event(registry, value, headers)  # no envelope
