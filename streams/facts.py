"""Task facts from events (pure): what the analytics cubes count.

A fact is emitted when a task finishes (TaskCompleted or TaskFailed). It joins three events of
one tenant: the agent's creation (agent type, region), the task's assignment (start time) and
its end (outcome, cost, end time). The joins use a context table keyed within the tenant, which
``fold`` reads and updates; the runtime agent in ``streams.facts_agent`` keeps that table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from schemas.messages import EventMeta

#: Stand-ins when an event arrives before what it joins with (e.g. an agent appended by the
#: event store without AgentCreated): the fact is still counted, under "unknown".
UNKNOWN = "unknown"
#: The events ``fold`` looks at; every other event leaves the context alone and makes no fact.
FOLDED_EVENTS = frozenset({"AgentCreated", "TaskAssigned", "TaskCompleted", "TaskFailed"})


def agent_key(tenant: str, agent_id: str) -> str:
    """Context key of an agent within its tenant."""
    return f"{tenant}/agent/{agent_id}"


def task_key(tenant: str, task_id: str) -> str:
    """Context key of an open task within its tenant."""
    return f"{tenant}/task/{task_id}"


def fold(event_type: str, data: Mapping[str, Any], meta: EventMeta, context: Mapping[str, Any]) -> tuple[dict[str, Any | None], dict[str, Any] | None]:
    """(context changes, fact or None) for one event; a change to None deletes the key.

    ``context`` holds what earlier events left: agents (type, region) and open tasks (agent,
    start time). Response time is the time between the TaskAssigned and the end event, in ms.
    """
    tenant = meta.tenant_id
    if event_type == "AgentCreated":
        return {agent_key(tenant, data["agent_id"]): {"agent_type": data["agent_type"], "region": data["region"]}}, None
    if event_type == "TaskAssigned":
        return {task_key(tenant, data["task_id"]): {"agent_id": data["agent_id"], "assigned_at": meta.occurred_at.isoformat()}}, None
    if event_type not in ("TaskCompleted", "TaskFailed"):
        return {}, None
    key = task_key(tenant, data["task_id"])
    task = context.get(key) or {}
    agent = context.get(agent_key(tenant, data["agent_id"])) or {}
    started = datetime.fromisoformat(task["assigned_at"]) if task.get("assigned_at") else meta.occurred_at
    fact = {
        "tenant": tenant,
        "agent_id": data["agent_id"],
        "agent_type": agent.get("agent_type", UNKNOWN),
        "region": agent.get("region", UNKNOWN),
        "task_id": data["task_id"],
        "outcome": "completed" if event_type == "TaskCompleted" else "failed",
        "response_time_ms": max(0, round((meta.occurred_at - started).total_seconds() * 1000)),
        "cost": float(data.get("cost", 0.0)),
        "event_time": meta.occurred_at.isoformat(),
        "event_id": meta.event_id,
    }
    return {key: None}, fact
