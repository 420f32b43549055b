"""The Agent aggregate: create, configure, start and stop an AI agent (pure)."""

from __future__ import annotations

from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from streams.domain.core import Aggregate, Command, Event, Rejection, RejectionCode

AgentStatus = Literal["absent", "created", "running", "stopped"]


class AgentState(BaseModel):
    """What the command side knows of one agent."""

    model_config = ConfigDict(frozen=True)

    status: AgentStatus = "absent"
    agent_id: str = ""
    name: str = ""
    agent_type: str = ""
    region: str = ""
    config: dict[str, str] = Field(default_factory=dict)
    capabilities: list[str] = Field(default_factory=list)


def stream_id(command: Command) -> str:
    """Agents are streams ``agent-<agent_id>`` within their tenant."""
    return f"agent-{command.data['agent_id']}"


def decide(command: Command, state: AgentState, related: Mapping[str, Any] | None = None) -> list[Event] | Rejection:
    """The events that ``command`` causes for this agent, or why it is refused."""
    data = command.data
    agent_id = data["agent_id"]
    if command.type == "CreateAgent":
        if state.status != "absent":
            return Rejection(RejectionCode.INVARIANT_VIOLATED, f"agent '{agent_id}' already exists")
        fields = ("agent_id", "name", "agent_type", "region", "config", "capabilities")
        return [Event("AgentCreated", {k: data[k] for k in fields})]
    if state.status == "absent":
        return Rejection(RejectionCode.NOT_FOUND, f"agent '{agent_id}' does not exist")
    if command.type == "ConfigureAgent":
        return [Event("AgentConfigured", {"agent_id": agent_id, "config": dict(data["config"])})]
    if command.type == "StartAgent":
        if state.status == "running":
            return Rejection(RejectionCode.INVARIANT_VIOLATED, f"agent '{agent_id}' is already running")
        return [Event("AgentStarted", {"agent_id": agent_id})]
    if command.type == "StopAgent":
        if state.status != "running":
            return Rejection(RejectionCode.INVARIANT_VIOLATED, f"agent '{agent_id}' is not running ({state.status})")
        return [Event("AgentStopped", {"agent_id": agent_id, "reason": data.get("reason")})]
    return Rejection(RejectionCode.UNKNOWN_COMMAND, f"the Agent aggregate does not handle {command.type}")


def evolve(state: AgentState, event: Event) -> AgentState:
    """The agent after ``event``."""
    data = event.data
    if event.type == "AgentCreated":
        return AgentState(
            status="created",
            agent_id=data["agent_id"],
            name=data["name"],
            agent_type=data["agent_type"],
            region=data["region"],
            config=dict(data.get("config", {})),
            capabilities=list(data.get("capabilities", [])),
        )
    if event.type == "AgentConfigured":
        return state.model_copy(update={"config": {**state.config, **data["config"]}})
    if event.type == "AgentStarted":
        return state.model_copy(update={"status": "running"})
    if event.type == "AgentStopped":
        return state.model_copy(update={"status": "stopped"})
    return state


AGENT = Aggregate[AgentState](
    name="Agent",
    commands=frozenset({"CreateAgent", "ConfigureAgent", "StartAgent", "StopAgent"}),
    events=frozenset({"AgentCreated", "AgentConfigured", "AgentStarted", "AgentStopped"}),
    stream_prefix="agent-",
    stream_id=stream_id,
    initial=AgentState,
    decide=decide,
    evolve=evolve,
    dump=lambda s: s.model_dump(mode="json"),
    load=AgentState.model_validate,
)
