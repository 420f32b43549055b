"""The Task aggregate: assign a task to a running agent, then complete or fail it once (pure).

Stream id ``task-<task_id>`` within the tenant. ``AssignTask`` reads the agent's state through
``related`` (``{"agent": (AGENT, "agent-<agent_id>")}``); the processor loads it read-only.

Life cycle: ``absent --AssignTask--> assigned --CompleteTask--> completed``
                                         ``\\--FailTask-----> failed``

The core reads no clock: the shell passes the decision time as ``Command.at``. ``TaskAssigned``
records it as ``assigned_at`` and ``TaskCompleted.duration_s`` is the time from assignment to
completion (0.0 when either time is unknown).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict

from streams.domain.agents import AGENT, AgentState
from streams.domain.core import Aggregate, Command, Event, Rejection, RejectionCode

TaskStatus = Literal["absent", "assigned", "completed", "failed"]


class TaskState(BaseModel):
    """What the command side knows of one task (frozen; JSON-roundtrips through ``TASK.dump``/``TASK.load``)."""

    model_config = ConfigDict(frozen=True)

    status: TaskStatus = "absent"
    task_id: str = ""
    agent_id: str = ""
    task_type: str = ""
    assigned_at: datetime | None = None
    cost: float = 0.0
    error: str | None = None


def stream_id(command: Command) -> str:
    """Tasks are streams ``task-<task_id>`` within their tenant."""
    return f"task-{command.data['task_id']}"


def related(command: Command, state: TaskState) -> dict[str, tuple[Aggregate, str]]:
    """Streams ``decide`` reads: the target agent for ``AssignTask``, nothing otherwise."""
    if command.type == "AssignTask":
        return {"agent": (AGENT, f"agent-{command.data['agent_id']}")}
    return {}


def decide(command: Command, state: TaskState, related: Mapping[str, Any] | None = None) -> list[Event] | Rejection:
    """The events that ``command`` causes for this task, or why it is refused.

    - ``AssignTask``: the task must be absent (assigned once) and ``related["agent"]`` must exist
      (else NotFound) and be ``running`` (else InvariantViolated) -> ``TaskAssigned``.
    - ``CompleteTask`` / ``FailTask``: the task must exist (else NotFound) and still be
      ``assigned`` (else InvariantViolated "task <id> is already <status>") -> ``TaskCompleted``
      / ``TaskFailed``, carrying the ``agent_id`` from the task state.
    """
    data = command.data
    task_id = data["task_id"]
    if command.type == "AssignTask":
        if state.status != "absent":
            return Rejection(RejectionCode.INVARIANT_VIOLATED, f"task {task_id} is already {state.status} (agent {state.agent_id})")
        agent_id = data["agent_id"]
        agent = (related or {}).get("agent")
        if not isinstance(agent, AgentState) or agent.status == "absent":
            return Rejection(RejectionCode.NOT_FOUND, f"agent {agent_id} does not exist, cannot assign task {task_id}")
        if agent.status != "running":
            return Rejection(
                RejectionCode.INVARIANT_VIOLATED, f"agent {agent_id} is not running ({agent.status}), cannot assign task {task_id}"
            )
        return [
            Event(
                "TaskAssigned",
                {"task_id": task_id, "agent_id": agent_id, "task_type": data["task_type"], "input": dict(data.get("input") or {}), "assigned_at": command.at},
            )
        ]
    if command.type not in ("CompleteTask", "FailTask"):
        return Rejection(RejectionCode.UNKNOWN_COMMAND, f"the Task aggregate does not handle {command.type}")
    if state.status == "absent":
        return Rejection(RejectionCode.NOT_FOUND, f"task {task_id} does not exist")
    if state.status != "assigned":
        return Rejection(RejectionCode.INVARIANT_VIOLATED, f"task {task_id} is already {state.status}")
    cost = float(data.get("cost", 0.0))
    if command.type == "CompleteTask":
        output = dict(data.get("output") or {})
        duration = (command.at - state.assigned_at).total_seconds() if command.at and state.assigned_at else 0.0
        return [Event("TaskCompleted", {"task_id": task_id, "agent_id": state.agent_id, "output": output, "cost": cost, "duration_s": duration})]
    return [Event("TaskFailed", {"task_id": task_id, "agent_id": state.agent_id, "error": data["error"], "cost": cost})]


def evolve(state: TaskState, event: Event) -> TaskState:
    """The task after ``event`` (unknown event types leave it unchanged)."""
    data = event.data
    if event.type == "TaskAssigned":
        return TaskState(
            status="assigned", task_id=data["task_id"], agent_id=data["agent_id"], task_type=data["task_type"], assigned_at=data.get("assigned_at")
        )
    if event.type == "TaskCompleted":
        return state.model_copy(update={"status": "completed", "cost": float(data.get("cost", 0.0))})
    if event.type == "TaskFailed":
        return state.model_copy(update={"status": "failed", "cost": float(data.get("cost", 0.0)), "error": data["error"]})
    return state


TASK = Aggregate[TaskState](
    name="Task",
    commands=frozenset({"AssignTask", "CompleteTask", "FailTask"}),
    events=frozenset({"TaskAssigned", "TaskCompleted", "TaskFailed"}),
    stream_prefix="task-",
    stream_id=stream_id,
    initial=TaskState,
    decide=decide,
    evolve=evolve,
    related=related,
    dump=lambda s: s.model_dump(mode="json"),
    load=TaskState.model_validate,
)
