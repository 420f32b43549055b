"""The Task aggregate: assign a task to a running agent, then complete or fail it once (pure).

Stream id ``task-<task_id>`` within the tenant. ``AssignTask`` reads the agent's state through
``related`` (``{"agent": (AGENT, "agent-<agent_id>")}``); the processor loads it read-only.

Life cycle::

    absent --AssignTask--> assigned --StartTask--> started --CompleteTask--> completed
                            |   ^                      \\--FailTask-----> failed
                            |   ReassignTask (another running agent; only before the start)
                            \\--CompleteTask / FailTask (an agent may report without a start)

``ReassignTask`` reads the new agent like ``AssignTask`` does. ``StartTask`` must come from the
agent the task is assigned to. The task's ``max_cost`` (micro-units, reserved against the
tenant's monthly budget by ``streams.domain.quotas``) caps the cost its end reports: the event
carries the capped cost, so what is billed never passes what was reserved (a card
pre-authorisation, in spirit).

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

TaskStatus = Literal["absent", "assigned", "started", "completed", "failed"]


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
    #: Most the task may cost, micro-units (None for tasks assigned before quotas: no cap).
    max_cost: int | None = None
    start_within_s: int | None = None
    retry_of: str | None = None
    started_at: datetime | None = None
    reassignments: int = 0


def stream_id(command: Command) -> str:
    """Tasks are streams ``task-<task_id>`` within their tenant."""
    return f"task-{command.data['task_id']}"


def related(command: Command, state: TaskState) -> dict[str, tuple[Aggregate, str]]:
    """Streams ``decide`` reads: the target agent for ``AssignTask`` and ``ReassignTask``, nothing otherwise."""
    if command.type in ("AssignTask", "ReassignTask"):
        return {"agent": (AGENT, f"agent-{command.data['agent_id']}")}
    return {}


def decide(command: Command, state: TaskState, related: Mapping[str, Any] | None = None) -> list[Event] | Rejection:
    """The events that ``command`` causes for this task, or why it is refused.

    - ``AssignTask``: the task must be absent (assigned once) and ``related["agent"]`` must exist
      (else NotFound) and be ``running`` (else InvariantViolated) -> ``TaskAssigned``.
    - ``StartTask`` / ``ReassignTask``: see ``start_task`` / ``reassign_task``.
    - ``CompleteTask`` / ``FailTask``: the task must exist (else NotFound) and still be
      ``assigned`` or ``started`` (else InvariantViolated "task <id> is already <status>") ->
      ``TaskCompleted`` / ``TaskFailed``, carrying the ``agent_id`` from the task state and the
      cost capped at the task's ``max_cost``.
    """
    data = command.data
    task_id = data["task_id"]
    if command.type == "AssignTask":
        if state.status != "absent":
            return Rejection(RejectionCode.INVARIANT_VIOLATED, f"task {task_id} is already {state.status} (agent {state.agent_id})")
        agent_id = data["agent_id"]
        refused = _agent_refuses(agent_id, task_id, related)
        if refused is not None:
            return refused
        return [
            Event(
                "TaskAssigned",
                {
                    "task_id": task_id,
                    "agent_id": agent_id,
                    "task_type": data["task_type"],
                    "input": dict(data.get("input") or {}),
                    "assigned_at": command.at,
                    "max_cost": data.get("max_cost"),
                    "start_within_s": data.get("start_within_s"),
                    "retry_of": data.get("retry_of"),
                },
            )
        ]
    if command.type not in ("CompleteTask", "FailTask", "StartTask", "ReassignTask"):
        return Rejection(RejectionCode.UNKNOWN_COMMAND, f"the Task aggregate does not handle {command.type}")
    if state.status == "absent":
        return Rejection(RejectionCode.NOT_FOUND, f"task {task_id} does not exist")
    if command.type == "StartTask":
        return start_task(command, state)
    if command.type == "ReassignTask":
        return reassign_task(command, state, related)
    if state.status not in ("assigned", "started"):
        return Rejection(RejectionCode.INVARIANT_VIOLATED, f"task {task_id} is already {state.status}")
    cost = capped_cost(float(data.get("cost", 0.0)), state.max_cost)
    if command.type == "CompleteTask":
        output = dict(data.get("output") or {})
        duration = (command.at - state.assigned_at).total_seconds() if command.at and state.assigned_at else 0.0
        return [Event("TaskCompleted", {"task_id": task_id, "agent_id": state.agent_id, "output": output, "cost": cost, "duration_s": duration})]
    return [Event("TaskFailed", {"task_id": task_id, "agent_id": state.agent_id, "error": data["error"], "cost": cost})]


def _agent_refuses(agent_id: str, task_id: str, related: Mapping[str, Any] | None) -> Rejection | None:
    """Why ``related["agent"]`` cannot take ``task_id`` (absent: NotFound; not running: InvariantViolated), or None."""
    agent = (related or {}).get("agent")
    if not isinstance(agent, AgentState) or agent.status == "absent":
        return Rejection(RejectionCode.NOT_FOUND, f"agent {agent_id} does not exist, cannot assign task {task_id}")
    if agent.status != "running":
        return Rejection(RejectionCode.INVARIANT_VIOLATED, f"agent {agent_id} is not running ({agent.status}), cannot assign task {task_id}")
    return None


def capped_cost(cost: float, max_cost: int | None) -> float:
    """``cost`` (currency units), at most ``max_cost`` micro-units when the task has one.

    The cap is returned as ``max_cost / 1e6``, which ``quotas.micros`` turns back into exactly
    ``max_cost``.
    """
    if max_cost is not None and round(cost * 1_000_000) > max_cost:
        return max_cost / 1_000_000
    return cost


def start_task(command: Command, state: TaskState) -> list[Event] | Rejection:
    """``StartTask``: only an ``assigned`` task, only by the agent it is assigned to -> ``TaskStarted``."""
    task_id, agent_id = state.task_id, command.data["agent_id"]
    if state.status != "assigned":
        return Rejection(RejectionCode.INVARIANT_VIOLATED, f"task {task_id} is already {state.status}")
    if agent_id != state.agent_id:
        return Rejection(RejectionCode.INVARIANT_VIOLATED, f"task {task_id} is assigned to agent {state.agent_id}, not {agent_id}")
    return [Event("TaskStarted", {"task_id": task_id, "agent_id": agent_id, "started_at": command.at})]


def reassign_task(command: Command, state: TaskState, related: Mapping[str, Any] | None) -> list[Event] | Rejection:
    """``ReassignTask``: only a task not started yet, to another agent that exists and runs -> ``TaskReassigned``."""
    task_id, agent_id = state.task_id, command.data["agent_id"]
    if state.status != "assigned":
        return Rejection(RejectionCode.INVARIANT_VIOLATED, f"task {task_id} is already {state.status}, it cannot be reassigned")
    if agent_id == state.agent_id:
        return Rejection(RejectionCode.INVARIANT_VIOLATED, f"task {task_id} is already assigned to agent {agent_id}")
    refused = _agent_refuses(agent_id, task_id, related)
    if refused is not None:
        return refused
    attempt = int(command.data.get("attempt") or state.reassignments + 1)
    return [Event("TaskReassigned", {"task_id": task_id, "from_agent_id": state.agent_id, "agent_id": agent_id, "attempt": attempt, "assigned_at": command.at})]


def evolve(state: TaskState, event: Event) -> TaskState:
    """The task after ``event`` (unknown event types leave it unchanged)."""
    data = event.data
    if event.type == "TaskAssigned":
        return TaskState(
            status="assigned",
            task_id=data["task_id"],
            agent_id=data["agent_id"],
            task_type=data["task_type"],
            assigned_at=data.get("assigned_at"),
            max_cost=data.get("max_cost"),
            start_within_s=data.get("start_within_s"),
            retry_of=data.get("retry_of"),
        )
    if event.type == "TaskStarted":
        return state.model_copy(update={"status": "started", "started_at": data.get("started_at")})
    if event.type == "TaskReassigned":
        return state.model_copy(update={"agent_id": data["agent_id"], "assigned_at": data.get("assigned_at"), "reassignments": state.reassignments + 1})
    if event.type == "TaskCompleted":
        return state.model_copy(update={"status": "completed", "cost": float(data.get("cost", 0.0))})
    if event.type == "TaskFailed":
        return state.model_copy(update={"status": "failed", "cost": float(data.get("cost", 0.0)), "error": data["error"]})
    return state


TASK = Aggregate[TaskState](
    name="Task",
    commands=frozenset({"AssignTask", "StartTask", "ReassignTask", "CompleteTask", "FailTask"}),
    events=frozenset({"TaskAssigned", "TaskStarted", "TaskReassigned", "TaskCompleted", "TaskFailed"}),
    stream_prefix="task-",
    stream_id=stream_id,
    initial=TaskState,
    decide=decide,
    evolve=evolve,
    related=related,
    dump=lambda s: s.model_dump(mode="json"),
    load=TaskState.model_validate,
)
