"""The task life cycle saga: a task gets started, or moves on, or is failed and released (pure).

One saga per task (id ``task:<task id>``), started by ``TaskAssigned``. It follows the task's
stream and its agent's stream, and knows the tenant's agents (type and status) from the
tenant's ``AgentCreated``/``AgentStarted``/``AgentStopped`` events (its ``shared`` knowledge,
folded by ``observe`` for every event of the tenant, so it knows agents created before the task).

::

    TaskAssigned ─► waiting_start ──TaskStarted──► running ──TaskCompleted──► completed
                      │  ▲   start deadline             │
                      │  │   (or its agent stops)       └──TaskFailed──► retry_wait ──retry deadline──► retry_assigning
                      ▼  │                                   (retries left)            AssignTask <root>.retry<n>     │
                    reassigning ──reassign deadline──► ReassignTask to another        ◄──── TaskAssigned ───────────┘
                      │           (backoff)            running agent of the same type
                      └─ attempts used up ─► compensating: FailTask ──TaskFailed──► compensated
                                                         (resent with backoff until it lands)
    TaskFailed with no retry left ─► failed

Reassignment picks, among the running agents of the task's agent type other than the current
one, the next in id order (attempt n takes candidate n-1 modulo their number): deterministic.
An attempt with no candidate counts as used. Compensation is ``FailTask`` with the reason: the
task ends, which frees its quota slot and settles its reservation at cost 0
(``streams.domain.quotas``). Command ids name the step and attempt (``reassign:2``); steps about a
retry's task carry its number (``reassign-retry1:1``). A retry is a new task ``<root>.retry<n>`` with ``retry_of`` = the
root task, so its events come back to this saga and the failed task stays failed. If a retry's
``AssignTask`` is refused (no ``TaskAssigned`` within the start time), the saga sends a
``FailTask`` for it (ordered after the assignment on the tenant's partition, so a late assignment
is still released) and ends ``failed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from streams.domain.quotas import to_ms
from streams.sagas.core import HISTORY, Backoff, Deadline, SagaEvent, Step, make_command

TaskSagaStatus = Literal["waiting_start", "reassigning", "running", "retry_wait", "retry_assigning", "compensating", "completed", "failed", "compensated"]
TERMINAL = frozenset({"completed", "failed", "compensated"})
NAME = "task"


@dataclass(frozen=True)
class TaskPolicy:
    """How hard the saga tries: reassignments before compensating, retries after a failure, and their backoffs."""

    max_reassignments: int = 3
    reassign_backoff: Backoff = field(default_factory=lambda: Backoff(5.0, 2.0, 300.0))
    max_retries: int = 1
    retry_backoff: Backoff = field(default_factory=lambda: Backoff(10.0, 2.0, 600.0))
    compensation_backoff: Backoff = field(default_factory=lambda: Backoff(5.0, 2.0, 300.0))
    #: Start time for tasks whose TaskAssigned says none (written before start_within_s existed).
    default_start_within_s: int = 60


class TaskSagaState(BaseModel):
    """One task's saga: the task now followed (a retry changes it), its agent, attempts, status."""

    model_config = ConfigDict(frozen=True)

    saga_id: str
    tenant_id: str
    root_task_id: str
    task_id: str
    task_type: str
    input: dict[str, str] = Field(default_factory=dict)
    max_cost: int | None = None
    start_within_s: int
    agent_id: str
    agent_type: str = ""
    status: TaskSagaStatus = "waiting_start"
    reassignments: int = 0
    retries: int = 0
    compensations: int = 0
    reason: str | None = None
    history: list[tuple[int, str]] = Field(default_factory=list)


class TaskLifecycle:
    """The task life cycle saga type (see the module docstring); ``policy`` sets its limits."""

    name = NAME
    state_model = TaskSagaState

    def __init__(self, policy: TaskPolicy | None = None) -> None:
        self.policy = policy or TaskPolicy()

    # --- tenant-wide knowledge: the agents --------------------------------------------
    def observe(self, shared: dict[str, Any], event: SagaEvent) -> dict[str, Any]:
        """``{"agents": {id: [agent_type, status]}}`` after an agent event (unchanged otherwise)."""
        kind, data = event.type, event.data
        if kind not in ("AgentCreated", "AgentStarted", "AgentStopped"):
            return shared
        agents = dict(shared.get("agents", {}))
        agent_id = data["agent_id"]
        agent_type = data["agent_type"] if kind == "AgentCreated" else agents.get(agent_id, ["", ""])[0]
        status = {"AgentCreated": "created", "AgentStarted": "running", "AgentStopped": "stopped"}[kind]
        if agents.get(agent_id) == [agent_type, status]:
            return shared
        agents[agent_id] = [agent_type, status]
        return {**shared, "agents": agents}

    @staticmethod
    def candidates(shared: Mapping[str, Any], agent_type: str, exclude: str | None = None) -> list[str]:
        """Running agents of ``agent_type`` (but ``exclude``), in id order."""
        return sorted(a for a, (kind, status) in shared.get("agents", {}).items() if kind == agent_type and status == "running" and a != exclude)

    # --- routing -----------------------------------------------------------------------
    def saga_id(self, event: SagaEvent) -> str | None:
        """``task:<root task>`` for a ``TaskAssigned`` (a retry's root is its ``retry_of``)."""
        if event.type != "TaskAssigned":
            return None
        return f"{NAME}:{event.data.get('retry_of') or event.data['task_id']}"

    def follows(self, state: TaskSagaState) -> frozenset[str]:
        """The task's stream and its agent's stream."""
        return frozenset({f"task-{state.task_id}", f"agent-{state.agent_id}"})

    def is_terminal(self, state: TaskSagaState) -> bool:
        """completed, failed or compensated."""
        return state.status in TERMINAL

    # --- transitions -------------------------------------------------------------------
    def start(self, saga_id: str, event: SagaEvent, shared: Mapping[str, Any]) -> Step | None:
        """A new task (not a retry) starts a saga waiting for its start."""
        data = event.data
        if data.get("retry_of"):
            return None  # a retry whose saga has ended (or was never known) starts nothing
        within = int(data.get("start_within_s") or self.policy.default_start_within_s)
        agent_type = shared.get("agents", {}).get(data["agent_id"], [""])[0]
        state = TaskSagaState(
            saga_id=saga_id,
            tenant_id=event.tenant_id,
            root_task_id=data["task_id"],
            task_id=data["task_id"],
            task_type=data["task_type"],
            input=dict(data.get("input") or {}),
            max_cost=data.get("max_cost"),
            start_within_s=within,
            agent_id=data["agent_id"],
            agent_type=agent_type,
            history=HISTORY.add([], event.at_ms, f"assigned to {data['agent_id']}"),
        )
        return Step(state, deadlines=(Deadline(event.at_ms + within * 1000, saga_id, "start", 0),))

    def react(self, state: TaskSagaState, event: SagaEvent, shared: Mapping[str, Any]) -> Step:
        """Task events move the saga; its agent's stop counts as a start timeout."""
        kind, data, at_ms = event.type, event.data, event.at_ms
        if event.stream_id == f"agent-{state.agent_id}":
            if kind == "AgentStopped" and state.status == "waiting_start":
                return self._not_started(state, at_ms, f"agent {state.agent_id} stopped before starting the task")
            return Step(state)
        if event.stream_id != f"task-{state.task_id}":
            return Step(state)
        if kind == "TaskAssigned" and state.status == "retry_assigning":
            new = self._note(state, at_ms, f"retry {state.retries} assigned to {data['agent_id']}", status="waiting_start", agent_id=data["agent_id"])
            return Step(new, deadlines=(Deadline(at_ms + state.start_within_s * 1000, state.saga_id, "start", 0),))
        if kind == "TaskStarted" and state.status in ("waiting_start", "reassigning"):
            return Step(self._note(state, at_ms, f"started by {data['agent_id']}", status="running"), cancel=("start", "reassign"))
        if kind == "TaskReassigned" and state.status in ("waiting_start", "reassigning"):
            new = self._note(state, at_ms, f"reassigned to {data['agent_id']}", status="waiting_start", agent_id=data["agent_id"])
            return Step(new, deadlines=(Deadline(at_ms + state.start_within_s * 1000, state.saga_id, "start", state.reassignments),), cancel=("reassign",))
        if kind == "TaskCompleted":
            return Step(self._note(state, at_ms, "completed", status="completed"))
        if kind == "TaskFailed":
            if state.status == "compensating":
                return Step(self._note(state, at_ms, "compensated: task failed and released", status="compensated"))
            if state.retries < self.policy.max_retries:
                due = at_ms + self.policy.retry_backoff.delay_ms(state.retries)
                new = self._note(state, at_ms, f"failed ({data.get('error')}), retry {state.retries + 1} planned", status="retry_wait", reason=data.get("error"))
                return Step(new, deadlines=(Deadline(due, state.saga_id, "retry", state.retries + 1),), cancel=("start", "reassign"))
            return Step(self._note(state, at_ms, f"failed ({data.get('error')}), no retry left", status="failed", reason=data.get("error")))
        return Step(state)

    def on_deadline(self, state: TaskSagaState, deadline: Deadline, at: datetime, shared: Mapping[str, Any]) -> Step:
        """start: reassign or compensate; reassign: send ReassignTask; retry: send AssignTask; compensate: resend FailTask."""
        at_ms = to_ms(at)
        name = deadline.name
        if name == "start" and state.status == "waiting_start" and deadline.attempt == state.reassignments:
            return self._not_started(state, at_ms, f"not started within {state.start_within_s} s")
        if name == "start" and state.status == "retry_assigning":
            fail = self._command(state, "retry-release", state.retries, "FailTask", {"task_id": state.task_id, "error": "retry was not assigned in time", "cost": 0.0})
            return Step(self._note(state, at_ms, f"retry {state.retries} was not assigned", status="failed", reason="retry was not assigned"), (fail,))
        if name == "reassign" and state.status == "reassigning":
            return self._reassign(state, at_ms, shared)
        if name == "retry" and state.status == "retry_wait":
            return self._retry(state, at_ms, shared)
        if name == "compensate" and state.status == "compensating":
            return self._compensate(state, at_ms, state.reason or "not started")
        return Step(state)  # a deadline the saga has moved past

    # --- steps -------------------------------------------------------------------------
    def _not_started(self, state: TaskSagaState, at_ms: int, why: str) -> Step:
        if state.reassignments >= self.policy.max_reassignments:
            return self._compensate(state, at_ms, f"{why}; {state.reassignments} reassignments used")
        due = at_ms + self.policy.reassign_backoff.delay_ms(state.reassignments)
        new = self._note(state, at_ms, f"{why}, reassignment {state.reassignments + 1} planned", status="reassigning")
        return Step(new, deadlines=(Deadline(due, state.saga_id, "reassign", state.reassignments + 1),), cancel=("start",))

    def _reassign(self, state: TaskSagaState, at_ms: int, shared: Mapping[str, Any]) -> Step:
        attempt = state.reassignments + 1
        pool = self.candidates(shared, state.agent_type, exclude=state.agent_id)
        if not pool:
            used = state.model_copy(update={"reassignments": attempt})
            return self._not_started(used, at_ms, f"no other running agent of type '{state.agent_type}'")
        target = pool[(attempt - 1) % len(pool)]
        command = self._command(state, self._of_task(state, "reassign"), attempt, "ReassignTask", {"task_id": state.task_id, "agent_id": target, "attempt": attempt})
        new = self._note(state, at_ms, f"reassigning to {target} (attempt {attempt})", status="waiting_start", reassignments=attempt)
        return Step(new, (command,), (Deadline(at_ms + state.start_within_s * 1000, state.saga_id, "start", attempt),))

    def _retry(self, state: TaskSagaState, at_ms: int, shared: Mapping[str, Any]) -> Step:
        attempt = state.retries + 1
        pool = self.candidates(shared, state.agent_type)
        if not pool:
            return Step(self._note(state, at_ms, f"no running agent of type '{state.agent_type}' to retry", status="failed"))
        target = pool[(attempt - 1) % len(pool)]
        task_id = f"{state.root_task_id}.retry{attempt}"
        data = {
            "task_id": task_id,
            "agent_id": target,
            "task_type": state.task_type,
            "input": dict(state.input),
            "max_cost": state.max_cost,
            "start_within_s": state.start_within_s,
            "retry_of": state.root_task_id,
        }
        command = self._command(state, "retry", attempt, "AssignTask", data)
        new = self._note(state, at_ms, f"retry {attempt} as {task_id} on {target}", status="retry_assigning", retries=attempt, task_id=task_id, agent_id=target, reassignments=0)
        return Step(new, (command,), (Deadline(at_ms + state.start_within_s * 1000, state.saga_id, "start", 0),))

    def _compensate(self, state: TaskSagaState, at_ms: int, reason: str) -> Step:
        attempt = state.compensations
        command = self._command(state, self._of_task(state, "compensate"), attempt, "FailTask", {"task_id": state.task_id, "error": reason, "cost": 0.0})
        due = at_ms + self.policy.compensation_backoff.delay_ms(attempt)
        new = self._note(state, at_ms, f"compensating (attempt {attempt}): {reason}", status="compensating", reason=reason, compensations=attempt + 1)
        return Step(new, (command,), (Deadline(due, state.saga_id, "compensate", attempt + 1),), cancel=("start", "reassign"))

    @staticmethod
    def _of_task(state: TaskSagaState, step: str) -> str:
        """A step about the task now followed: the retry number is part of its name, so the
        reassignments of a retry never reuse the ids of the first task's (``reassign-retry1``)."""
        return step if state.retries == 0 else f"{step}-retry{state.retries}"

    def _command(self, state: TaskSagaState, step: str, attempt: int, kind: str, data: Mapping[str, Any]) -> Any:
        return make_command(NAME, state.saga_id, state.tenant_id, step, attempt, kind, data)

    @staticmethod
    def _note(state: TaskSagaState, at_ms: int, what: str, **update: Any) -> TaskSagaState:
        return state.model_copy(update={**update, "history": HISTORY.add(state.history, at_ms, what)})
