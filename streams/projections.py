"""The read models (query side) and the pure functions that fold events into them.

Two read models are fed by ``events.platform``:

* an **agent summary** per (tenant, agent_id): status, identity, config, task counts, cost;
* a **tenant overview** per tenant: identity, settings, agent and task counts, cost.

They are one projection, ``read_models``, updated by one Faust agent (``projector``) so that
both change together for every event. Everything here is pure (no I/O): models are plain
``dict``s (the JSON stored in Redis); ``apply_event`` returns the new dicts for one event.

Keyspace in Redis (every key under a generation, so that a rebuild can build a new one beside
the live one and swap atomically)::

    rm:current                          the live generation number
    rm:{gen}:agent:{tenant}:{agent_id}  agent summary (JSON)
    rm:{gen}:agents:{tenant}            set of agent ids of the tenant
    rm:{gen}:tenant:{tenant}            tenant overview (JSON)
    rm:{gen}:checkpoint:{partition}     offset of the last event applied from that partition
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Literal, Mapping, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from schemas import SchemaError, SchemaRegistry
from schemas.messages import EnvelopeError, EventMeta

#: Projection name -> the read models it maintains (rebuilt together).
PROJECTIONS: dict[str, tuple[str, ...]] = {"read_models": ("agent_summary", "tenant_overview")}

CURRENT_KEY = "rm:current"

AGENT_EVENTS = frozenset({"AgentCreated", "AgentConfigured", "AgentStarted", "AgentStopped", "TaskAssigned", "TaskCompleted", "TaskFailed"})
TENANT_EVENTS = frozenset({"TenantCreated", "TenantConfigured"})
#: Events about two agents: a reassignment moves an open task from one summary to the other.
MOVE_EVENTS = frozenset({"TaskReassigned"})
#: Events that change a read model; the others (security, access, billing) only advance the checkpoint.
PROJECTED_EVENTS = AGENT_EVENTS | TENANT_EVENTS | MOVE_EVENTS

AgentStatus = Literal["unknown", "created", "running", "stopped"]


class AgentSummary(BaseModel):
    """The read model of one agent of one tenant."""

    model_config = ConfigDict(frozen=True)

    tenant_id: str
    agent_id: str
    #: ``unknown`` only when the model was built from a timestamp after the agent's creation.
    status: AgentStatus = "unknown"
    name: str = ""
    agent_type: str = ""
    region: str = ""
    config: dict[str, str] = Field(default_factory=dict)
    capabilities: list[str] = Field(default_factory=list)
    tasks_assigned: int = 0
    tasks_completed: int = 0
    tasks_failed: int = 0
    open_tasks: int = 0
    total_cost: float = 0.0
    #: ``occurred_at`` (ISO 8601) of the last event that touched the agent.
    last_activity: str | None = None
    #: Version of the agent stream (``agent-<id>``) after the last applied agent event.
    version: int = 0


class TenantOverview(BaseModel):
    """The read model of one tenant: identity, settings and totals over its agents."""

    model_config = ConfigDict(frozen=True)

    tenant_id: str
    name: str = ""
    region: str = ""
    plan: str = ""
    settings: dict[str, str] = Field(default_factory=dict)
    agents_total: int = 0
    agents_running: int = 0
    tasks_completed: int = 0
    tasks_failed: int = 0
    total_cost: float = 0.0
    last_activity: str | None = None


class DecodedEvent(NamedTuple):
    """One event read from the events topic: its type, payload as JSON-able dict, and envelope."""

    type: str
    data: dict[str, Any]
    meta: EventMeta


class ReadModelUpdate(NamedTuple):
    """The models after one event; ``None`` means "this model is not touched by the event"."""

    agent: dict[str, Any] | None
    tenant: dict[str, Any] | None


class ProjectionInputError(ValueError):
    """An event record that cannot be projected (undecodable payload, bad envelope)."""


# --- keys ---------------------------------------------------------------------------------------


def generation_prefix(gen: int) -> str:
    """``rm:{gen}:``, the prefix of every key of generation ``gen``."""
    return f"rm:{gen}:"


def agent_key(gen: int, tenant_id: str, agent_id: str) -> str:
    """Key of one agent summary."""
    return f"rm:{gen}:agent:{tenant_id}:{agent_id}"


def agents_set_key(gen: int, tenant_id: str) -> str:
    """Key of the set of agent ids of a tenant."""
    return f"rm:{gen}:agents:{tenant_id}"


def tenant_key(gen: int, tenant_id: str) -> str:
    """Key of one tenant overview."""
    return f"rm:{gen}:tenant:{tenant_id}"


def checkpoint_key(gen: int, partition: int) -> str:
    """Key of the last applied offset of ``partition`` in generation ``gen``."""
    return f"rm:{gen}:checkpoint:{partition}"


def resolve_projection(name: str) -> str:
    """The projection that maintains ``name`` (a projection or one of its read models); KeyError if none."""
    for projection, models in PROJECTIONS.items():
        if name == projection or name in models:
            return projection
    raise KeyError(name)


# --- serialisation and checkpoints ----------------------------------------------------------------


def dumps(model: Mapping[str, Any]) -> str:
    """The stored JSON of a model (sorted keys: equal models give equal strings)."""
    return json.dumps(model, sort_keys=True, separators=(",", ":"))


def loads(raw: str | None) -> dict[str, Any] | None:
    """A model from its stored JSON (``None`` stays ``None``)."""
    return None if raw is None else json.loads(raw)


def parse_checkpoint(raw: str | int | None) -> int:
    """A stored checkpoint as an int; -1 when the partition has none (nothing applied yet)."""
    return -1 if raw is None or raw == "" else int(raw)


def should_apply(offset: int, checkpoint: int) -> bool:
    """Whether the record at ``offset`` is new: records at or below the checkpoint were applied already."""
    return offset > checkpoint


def covers(new: Mapping[int, int], live: Mapping[int, int], partitions: Iterable[int]) -> bool:
    """Whether checkpoints ``new`` are at or past ``live`` on every partition (missing = -1).

    Swapping a rebuilt generation in is safe exactly then: the live agent will skip what the
    new generation already holds and apply everything after it, so nothing is applied twice
    and nothing is missed.
    """
    return all(new.get(p, -1) >= live.get(p, -1) for p in partitions)


# --- decoding -----------------------------------------------------------------------------------


def decode_event(registry: SchemaRegistry, value: bytes | None, headers: Any) -> DecodedEvent:
    """Decode one event record (Avro payload, envelope headers); ProjectionInputError if it cannot be."""
    header_list = [(k.decode() if isinstance(k, bytes) else k, v) for k, v in (headers.items() if isinstance(headers, Mapping) else headers or [])]
    try:
        event_type, payload = registry.decode(value or b"", header_list)
        meta = EventMeta.from_headers(header_list)
    except (SchemaError, EnvelopeError) as exc:
        raise ProjectionInputError(str(exc)) from exc
    return DecodedEvent(event_type, payload.model_dump(mode="json"), meta)


def agent_id_of(event_type: str, data: Mapping[str, Any]) -> str | None:
    """The agent an event is about (agent and task events), else None."""
    return str(data["agent_id"]) if event_type in AGENT_EVENTS and data.get("agent_id") is not None else None


def agent_ids_of(event_type: str, data: Mapping[str, Any]) -> tuple[str, ...]:
    """Every agent an event is about: two for a reassignment (from, to), else ``agent_id_of``'s one or none."""
    if event_type in MOVE_EVENTS:
        return (str(data["from_agent_id"]), str(data["agent_id"]))
    one = agent_id_of(event_type, data)
    return () if one is None else (one,)


# --- folds --------------------------------------------------------------------------------------


def evolve_agent(summary: Mapping[str, Any] | None, event_type: str, data: Mapping[str, Any], meta: EventMeta) -> dict[str, Any]:
    """The agent summary after an agent or task event (``summary`` None: the agent is not known yet)."""
    agent_id = str(data["agent_id"])
    current = dict(summary) if summary is not None else AgentSummary(tenant_id=meta.tenant_id, agent_id=agent_id).model_dump(mode="json")
    new = dict(current, last_activity=meta.occurred_at.isoformat())
    if meta.stream_id == f"agent-{agent_id}":  # task events carry the task stream's version
        new["version"] = meta.version
    if event_type == "AgentCreated":
        new.update(
            status="created",
            name=data["name"],
            agent_type=data["agent_type"],
            region=data["region"],
            config=dict(data.get("config") or {}),
            capabilities=list(data.get("capabilities") or []),
        )
    elif event_type == "AgentConfigured":
        # merged like the command side's evolve (streams.domain.agents), so both agree
        new["config"] = {**current["config"], **(data.get("config") or {})}
    elif event_type == "AgentStarted":
        new["status"] = "running"
    elif event_type == "AgentStopped":
        new["status"] = "stopped"
    elif event_type == "TaskAssigned":
        new.update(tasks_assigned=current["tasks_assigned"] + 1, open_tasks=current["open_tasks"] + 1)
    elif event_type in ("TaskCompleted", "TaskFailed"):
        counter = "tasks_completed" if event_type == "TaskCompleted" else "tasks_failed"
        new.update(
            {counter: current[counter] + 1},
            open_tasks=max(0, current["open_tasks"] - 1),
            total_cost=current["total_cost"] + float(data.get("cost") or 0.0),
        )
    else:
        raise ValueError(f"{event_type} is not an agent event")
    return new


def evolve_tenant(
    overview: Mapping[str, Any] | None,
    event_type: str,
    data: Mapping[str, Any],
    meta: EventMeta,
    old_agent: Mapping[str, Any] | None = None,
    new_agent: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The tenant overview after an event of the tenant.

    For agent and task events pass the agent summary before (``old_agent``) and after
    (``new_agent``) the event: the running count follows the change of the agent's status.
    """
    current = dict(overview) if overview is not None else TenantOverview(tenant_id=meta.tenant_id).model_dump(mode="json")
    new = dict(current, last_activity=meta.occurred_at.isoformat())
    if event_type == "TenantCreated":
        new.update(name=data["name"], region=data["region"], plan=str(data["plan"]))
    elif event_type == "TenantConfigured":
        new["settings"] = {**current["settings"], **(data.get("settings") or {})}
    elif event_type in AGENT_EVENTS:
        old_status = old_agent["status"] if old_agent else None
        new_status = new_agent["status"] if new_agent else old_status
        if event_type == "AgentCreated" and old_agent is None:
            new["agents_total"] = current["agents_total"] + 1
        new["agents_running"] = max(0, current["agents_running"] + (new_status == "running") - (old_status == "running"))
        if event_type in ("TaskCompleted", "TaskFailed"):
            counter = "tasks_completed" if event_type == "TaskCompleted" else "tasks_failed"
            new[counter] = current[counter] + 1
            new["total_cost"] = current["total_cost"] + float(data.get("cost") or 0.0)
    else:
        raise ValueError(f"{event_type} is not projected into the tenant overview")
    return new


def move_task(summary: Mapping[str, Any] | None, agent_id: str, meta: EventMeta, into: bool) -> dict[str, Any]:
    """An agent summary after a reassignment took an open task from it (``into`` False) or gave it one."""
    current = dict(summary) if summary is not None else AgentSummary(tenant_id=meta.tenant_id, agent_id=agent_id).model_dump(mode="json")
    new = dict(current, last_activity=meta.occurred_at.isoformat())
    if into:
        new.update(tasks_assigned=current["tasks_assigned"] + 1, open_tasks=current["open_tasks"] + 1)
    else:
        new["open_tasks"] = max(0, current["open_tasks"] - 1)
    return new


def apply_to_agents(
    agents: Mapping[str, Mapping[str, Any] | None], tenant: Mapping[str, Any] | None, event_type: str, data: Mapping[str, Any], meta: EventMeta
) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """``apply_event`` for events about any number of agents: ``agents`` holds the summaries of
    ``agent_ids_of(event)`` (None: not known yet); returns the changed summaries by agent id and
    the tenant overview (None: unchanged)."""
    ids = agent_ids_of(event_type, data)
    if event_type in MOVE_EVENTS:
        source, target = ids
        overview = dict(tenant) if tenant is not None else TenantOverview(tenant_id=meta.tenant_id).model_dump(mode="json")
        moved = {source: move_task(agents.get(source), source, meta, into=False), target: move_task(agents.get(target), target, meta, into=True)}
        return moved, dict(overview, last_activity=meta.occurred_at.isoformat())
    update = apply_event(agents.get(ids[0]) if ids else None, tenant, event_type, data, meta)
    return ({ids[0]: update.agent} if ids and update.agent is not None else {}), update.tenant


def apply_event(
    agent: Mapping[str, Any] | None, tenant: Mapping[str, Any] | None, event_type: str, data: Mapping[str, Any], meta: EventMeta
) -> ReadModelUpdate:
    """Both read models after one event: ``agent`` is the summary of the event's agent (if any), ``tenant`` the overview.

    Events that no read model shows (security, access, billing) give ``ReadModelUpdate(None, None)``.
    """
    if event_type in AGENT_EVENTS:
        new_agent = evolve_agent(agent, event_type, data, meta)
        return ReadModelUpdate(new_agent, evolve_tenant(tenant, event_type, data, meta, old_agent=agent, new_agent=new_agent))
    if event_type in TENANT_EVENTS:
        return ReadModelUpdate(None, evolve_tenant(tenant, event_type, data, meta))
    return ReadModelUpdate(None, None)
