"""The pure core: rules of the Agent, Tenant and Task aggregates, plus property tests over random histories.

No Kafka, no clock: a tiny in-memory harness does what ``CommandProcessor`` does (stream id,
state and related state loaded from a dict of dumped JSON, decide, evolve, versioned events).
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import default_registry
from streams.domain import AGGREGATES, Aggregate, Command, Event, Rejection, RejectionCode, aggregate_for, aggregate_for_stream, replay
from streams.domain.agents import AGENT, AgentState
from streams.domain.tasks import TASK, TaskState
from streams.domain.tenants import TENANT, TenantState

REG = default_registry()


# ====================================================================== harness
class Harness:
    """An in-memory command side: per (tenant, stream) a version, the dumped state and the event list."""

    def __init__(self) -> None:
        self.store: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: dict[tuple[str, str], list[tuple[int, Event]]] = {}
        self.aggregate_of: dict[tuple[str, str], Aggregate] = {}

    def _load(self, aggregate: Aggregate, key: tuple[str, str]) -> Any:
        stored = self.store.get(key)
        return aggregate.initial() if stored is None else aggregate.load(stored["state"])

    def state(self, tenant: str, stream: str) -> Any:
        """The stored state of a stream, loaded (the aggregate's initial state if never written)."""
        key = (tenant, stream)
        return self._load(self.aggregate_of[key], key)

    def handle(self, kind: str, data: dict[str, Any], tenant: str = "acme", at: datetime | None = None) -> list[Event] | Rejection:
        """Validate like the processor (schema defaults filled in), decide, then append and store."""
        payload = REG.validate(kind, data).model_dump()
        command = Command(kind, payload, tenant, at=at)
        aggregate = aggregate_for(kind)
        assert aggregate is not None
        key = (tenant, aggregate.stream_id(command))
        self.aggregate_of[key] = aggregate
        state = self._load(aggregate, key)
        related = {}
        for name, (other, other_stream) in aggregate.related(command, state).items():
            related[name] = self._load(other, (tenant, other_stream))
        decision = aggregate.decide(command, state, related)
        if isinstance(decision, Rejection):
            return decision
        version = self.store.get(key, {"version": 0})["version"]
        for event in decision:
            REG.encode(event.type, event.data)  # every emitted event fits its (latest) schema
            assert event.type in aggregate.events
            version += 1
            state = aggregate.evolve(state, event)
            self.events.setdefault(key, []).append((version, event))
        self.store[key] = {"version": version, "state": json.loads(json.dumps(aggregate.dump(state)))}
        return decision


def running_agent(h: Harness, agent_id: str = "a1", tenant: str = "acme") -> None:
    assert not isinstance(h.handle("CreateAgent", {"agent_id": agent_id, "name": "n", "agent_type": "llm"}, tenant), Rejection)
    assert not isinstance(h.handle("StartAgent", {"agent_id": agent_id}, tenant), Rejection)


def assigned_task(h: Harness, task_id: str = "t1", agent_id: str = "a1") -> None:
    running_agent(h, agent_id)
    assert not isinstance(h.handle("AssignTask", {"task_id": task_id, "agent_id": agent_id, "task_type": "summarise"}), Rejection)


def rejected(result: list[Event] | Rejection, code: RejectionCode, *words: str) -> bool:
    return isinstance(result, Rejection) and result.code == code and all(w in result.message for w in words)


# ====================================================================== registry of aggregates
def test_every_command_has_one_aggregate() -> None:
    owned = [c for a in AGGREGATES for c in a.commands]
    assert len(owned) == len(set(owned))
    assert set(owned) <= set(REG.names("command"))
    # the event store's append, and the provisioner's steps (streams/sagas/onboarding.py), are no decider's
    assert set(REG.names("command")) - set(owned) <= {"AppendEvents", "PrepareTenant", "TeardownTenant"}
    for aggregate in AGGREGATES:
        assert aggregate.events <= set(REG.names("event")), aggregate.name
    assert aggregate_for("AssignTask") is TASK
    assert aggregate_for("CompleteTask") is TASK and aggregate_for("FailTask") is TASK
    assert aggregate_for("CreateAgent") is AGENT and aggregate_for("GrantAccess") is TENANT
    assert aggregate_for("Nope") is None


def test_aggregate_for_stream() -> None:
    assert aggregate_for_stream("task-t1") is TASK
    assert aggregate_for_stream("agent-a1") is AGENT
    assert aggregate_for_stream("tenant") is TENANT
    for bad in ("task-", "agent", "tenant-x", "nope-1", ""):
        assert aggregate_for_stream(bad) is None, bad


# ====================================================================== agent rules
def test_agent_lifecycle() -> None:
    h = Harness()
    events = h.handle("CreateAgent", {"agent_id": "a1", "name": "Alpha", "agent_type": "llm", "config": {"m": "s"}})
    assert [e.type for e in events] == ["AgentCreated"]  # type: ignore[union-attr]
    assert h.state("acme", "agent-a1").status == "created"
    h.handle("ConfigureAgent", {"agent_id": "a1", "config": {"t": "0.1"}})
    assert h.state("acme", "agent-a1").config == {"m": "s", "t": "0.1"}
    h.handle("StartAgent", {"agent_id": "a1"})
    assert h.state("acme", "agent-a1").status == "running"
    h.handle("StopAgent", {"agent_id": "a1", "reason": "done"})
    assert h.state("acme", "agent-a1").status == "stopped"
    h.handle("StartAgent", {"agent_id": "a1"})  # a stopped agent may start again
    assert h.state("acme", "agent-a1").status == "running"


def test_agent_rejections() -> None:
    h = Harness()
    for kind, data in [("ConfigureAgent", {"agent_id": "a1", "config": {}}), ("StartAgent", {"agent_id": "a1"}), ("StopAgent", {"agent_id": "a1"})]:
        assert rejected(h.handle(kind, data), RejectionCode.NOT_FOUND, "a1", "does not exist")
    h.handle("CreateAgent", {"agent_id": "a1", "name": "n", "agent_type": "llm"})
    assert rejected(h.handle("CreateAgent", {"agent_id": "a1", "name": "n", "agent_type": "llm"}), RejectionCode.INVARIANT_VIOLATED, "already exists")
    assert rejected(h.handle("StopAgent", {"agent_id": "a1"}), RejectionCode.INVARIANT_VIOLATED, "not running")
    h.handle("StartAgent", {"agent_id": "a1"})
    assert rejected(h.handle("StartAgent", {"agent_id": "a1"}), RejectionCode.INVARIANT_VIOLATED, "already running")
    unknown = AGENT.decide(Command("AssignTask", {"agent_id": "a1"}), AgentState(status="running"), {})
    assert rejected(unknown, RejectionCode.UNKNOWN_COMMAND)


# ====================================================================== tenant rules
def test_tenant_lifecycle_and_rejections() -> None:
    h = Harness()
    assert rejected(h.handle("ConfigureTenant", {"settings": {}}), RejectionCode.NOT_FOUND, "acme")
    assert rejected(h.handle("GrantAccess", {"principal": "u", "role": "viewer"}), RejectionCode.NOT_FOUND)
    h.handle("CreateTenant", {"name": "Acme"})
    assert rejected(h.handle("CreateTenant", {"name": "Acme"}), RejectionCode.INVARIANT_VIOLATED, "already exists")
    h.handle("ConfigureTenant", {"settings": {"max_agents": "3"}})
    h.handle("UpdateSecurityPolicy", {"policy_id": "p1", "rules": {"pii": "deny"}})
    h.handle("GrantAccess", {"principal": "u", "role": "viewer"})
    assert rejected(h.handle("GrantAccess", {"principal": "u", "role": "viewer"}), RejectionCode.INVARIANT_VIOLATED, "already has role")
    state = h.state("acme", "tenant")
    assert state.exists and state.settings == {"max_agents": "3"} and state.policies == {"p1": {"pii": "deny"}}
    assert state.grants == [("u", "viewer")]
    h.handle("RevokeAccess", {"principal": "u", "role": "viewer"})
    assert rejected(h.handle("RevokeAccess", {"principal": "u", "role": "viewer"}), RejectionCode.NOT_FOUND, "does not have role")
    assert h.state("acme", "tenant").grants == []
    # tenants are isolated: another tenant's stream "tenant" is still absent
    assert rejected(h.handle("ConfigureTenant", {"settings": {}}, tenant="other"), RejectionCode.NOT_FOUND, "other")
    unknown = TENANT.decide(Command("StartAgent", {}, "acme"), TenantState(exists=True), {})
    assert rejected(unknown, RejectionCode.UNKNOWN_COMMAND)


# ====================================================================== task rules
def test_task_stream_id_and_related() -> None:
    assign = Command("AssignTask", {"task_id": "t1", "agent_id": "a1", "task_type": "x"}, "acme")
    assert TASK.stream_id(assign) == "task-t1"
    assert TASK.related(assign, TaskState()) == {"agent": (AGENT, "agent-a1")}
    assert TASK.related(Command("CompleteTask", {"task_id": "t1"}), TaskState()) == {}


def test_assign_then_complete() -> None:
    h = Harness()
    running_agent(h)
    t0 = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
    events = h.handle("AssignTask", {"task_id": "t1", "agent_id": "a1", "task_type": "summarise", "input": {"doc": "d"}}, at=t0)
    assert events == [
        Event(
            "TaskAssigned",
            {"task_id": "t1", "agent_id": "a1", "task_type": "summarise", "input": {"doc": "d"}, "assigned_at": t0, "max_cost": None, "start_within_s": None, "retry_of": None},
        )
    ]
    state = h.state("acme", "task-t1")
    assert (state.status, state.agent_id, state.task_type, state.assigned_at) == ("assigned", "a1", "summarise", t0)
    events = h.handle("CompleteTask", {"task_id": "t1", "output": {"s": "ok"}, "cost": 0.5}, at=t0 + timedelta(seconds=90))
    assert events == [Event("TaskCompleted", {"task_id": "t1", "agent_id": "a1", "output": {"s": "ok"}, "cost": 0.5, "duration_s": 90.0})]
    state = h.state("acme", "task-t1")
    assert (state.status, state.cost) == ("completed", 0.5)


def test_assign_then_fail() -> None:
    h = Harness()
    assigned_task(h)
    events = h.handle("FailTask", {"task_id": "t1", "error": "timeout", "cost": 0.1})
    assert events == [Event("TaskFailed", {"task_id": "t1", "agent_id": "a1", "error": "timeout", "cost": 0.1})]
    state = h.state("acme", "task-t1")
    assert (state.status, state.error, state.cost) == ("failed", "timeout", 0.1)


def test_assign_needs_an_existing_running_agent() -> None:
    h = Harness()
    assign = {"task_id": "t1", "agent_id": "a1", "task_type": "x"}
    assert rejected(h.handle("AssignTask", assign), RejectionCode.NOT_FOUND, "agent a1 does not exist")
    h.handle("CreateAgent", {"agent_id": "a1", "name": "n", "agent_type": "llm"})
    assert rejected(h.handle("AssignTask", assign), RejectionCode.INVARIANT_VIOLATED, "agent a1 is not running (created)")
    h.handle("StartAgent", {"agent_id": "a1"})
    h.handle("StopAgent", {"agent_id": "a1"})
    assert rejected(h.handle("AssignTask", assign), RejectionCode.INVARIANT_VIOLATED, "agent a1 is not running (stopped)")
    # an agent of another tenant does not count
    running_agent(h, "a2", tenant="other")
    assert rejected(h.handle("AssignTask", {**assign, "agent_id": "a2"}), RejectionCode.NOT_FOUND, "agent a2")
    # without related state at all (a caller that forgot to load it) the agent is absent
    assert rejected(TASK.decide(Command("AssignTask", assign), TaskState(), {}), RejectionCode.NOT_FOUND)
    assert rejected(TASK.decide(Command("AssignTask", assign), TaskState(), None), RejectionCode.NOT_FOUND)


def test_task_is_assigned_once() -> None:
    h = Harness()
    assigned_task(h)
    running_agent(h, "a2")
    again = h.handle("AssignTask", {"task_id": "t1", "agent_id": "a2", "task_type": "x"})
    assert rejected(again, RejectionCode.INVARIANT_VIOLATED, "task t1 is already assigned")
    assert h.state("acme", "task-t1").agent_id == "a1"


def test_task_completes_or_fails_once() -> None:
    for first, data in [("CompleteTask", {"task_id": "t1"}), ("FailTask", {"task_id": "t1", "error": "e"})]:
        h = Harness()
        assigned_task(h)
        h.handle(first, data)
        status = "completed" if first == "CompleteTask" else "failed"
        assert rejected(h.handle("CompleteTask", {"task_id": "t1"}), RejectionCode.INVARIANT_VIOLATED, f"task t1 is already {status}")
        assert rejected(h.handle("FailTask", {"task_id": "t1", "error": "x"}), RejectionCode.INVARIANT_VIOLATED, f"task t1 is already {status}")
        assert rejected(h.handle("AssignTask", {"task_id": "t1", "agent_id": "a1", "task_type": "x"}), RejectionCode.INVARIANT_VIOLATED)


def test_unknown_task_is_not_found() -> None:
    h = Harness()
    assert rejected(h.handle("CompleteTask", {"task_id": "t9"}), RejectionCode.NOT_FOUND, "task t9 does not exist")
    assert rejected(h.handle("FailTask", {"task_id": "t9", "error": "e"}), RejectionCode.NOT_FOUND, "task t9 does not exist")
    assert rejected(TASK.decide(Command("StartAgent", {"task_id": "t1"}), TaskState(), {}), RejectionCode.UNKNOWN_COMMAND)


def test_task_state_json_roundtrip() -> None:
    from datetime import UTC, datetime

    state = TaskState(status="assigned", task_id="t1", agent_id="a1", task_type="x", assigned_at=datetime(2026, 1, 1, tzinfo=UTC), cost=1.0)
    assert TASK.load(json.loads(json.dumps(TASK.dump(state)))) == state


# ====================================================================== properties
TENANTS = ["acme", "beta"]
AGENT_IDS = ["a1", "a2"]
TASK_IDS = ["t1", "t2", "t3"]
small = st.sampled_from(["x", "y"])
small_map = st.dictionaries(small, small, max_size=2)
cost = st.sampled_from([0.0, 0.25, 1.5])

COMMANDS = st.one_of(
    st.builds(lambda a, n, c: ("CreateAgent", {"agent_id": a, "name": n, "agent_type": "llm", "config": c}), st.sampled_from(AGENT_IDS), small, small_map),
    st.builds(lambda a, c: ("ConfigureAgent", {"agent_id": a, "config": c}), st.sampled_from(AGENT_IDS), small_map),
    st.builds(lambda a: ("StartAgent", {"agent_id": a}), st.sampled_from(AGENT_IDS)),
    st.builds(lambda a, r: ("StopAgent", {"agent_id": a, "reason": r}), st.sampled_from(AGENT_IDS), st.none() | small),
    st.builds(lambda t, a, k, i: ("AssignTask", {"task_id": t, "agent_id": a, "task_type": k, "input": i}),
              st.sampled_from(TASK_IDS), st.sampled_from(AGENT_IDS), small, small_map),
    st.builds(lambda t, o, c: ("CompleteTask", {"task_id": t, "output": o, "cost": c}), st.sampled_from(TASK_IDS), small_map, cost),
    st.builds(lambda t, e, c: ("FailTask", {"task_id": t, "error": e, "cost": c}), st.sampled_from(TASK_IDS), small, cost),
    st.builds(lambda n: ("CreateTenant", {"name": n}), small),
    st.builds(lambda s: ("ConfigureTenant", {"settings": s}), small_map),
    st.builds(lambda p, r: ("UpdateSecurityPolicy", {"policy_id": p, "rules": r}), small, small_map),
    st.builds(lambda p, r: ("GrantAccess", {"principal": p, "role": r}), small, st.sampled_from(["viewer", "admin"])),
    st.builds(lambda p, r: ("RevokeAccess", {"principal": p, "role": r}), small, st.sampled_from(["viewer", "admin"])),
    st.builds(lambda a, n: ("SetTenantQuota", {"max_agents": a, "api_rate_per_hour": n}), st.none() | st.integers(-1, 5), st.none() | st.integers(0, 9)),
    st.builds(lambda ok: ("RecordTenantPreparation", {"succeeded": ok, "reason": None if ok else "r"}), st.booleans()),
    st.builds(lambda: ("CompleteTenantOnboarding", {})),
    st.builds(lambda r: ("FailTenantOnboarding", {"reason": r}), small),
)
TASK_COMMANDS = st.one_of(
    st.builds(lambda t, a: ("AssignTask", {"task_id": t, "agent_id": a, "task_type": "x"}), st.sampled_from(TASK_IDS), st.sampled_from(AGENT_IDS)),
    st.builds(lambda t: ("CompleteTask", {"task_id": t}), st.sampled_from(TASK_IDS)),
    st.builds(lambda t: ("FailTask", {"task_id": t, "error": "e"}), st.sampled_from(TASK_IDS)),
    st.builds(lambda t, a: ("StartTask", {"task_id": t, "agent_id": a}), st.sampled_from(TASK_IDS), st.sampled_from(AGENT_IDS)),
    st.builds(lambda t, a: ("ReassignTask", {"task_id": t, "agent_id": a}), st.sampled_from(TASK_IDS), st.sampled_from(AGENT_IDS)),
)
#: Some agents created and started first (so that tasks get assigned), then anything, tasks weighted up.
SETUP = st.lists(st.tuples(st.sampled_from(TENANTS), st.sampled_from(AGENT_IDS)), max_size=4).map(
    lambda pairs: [
        step
        for tenant, agent in pairs
        for step in ((tenant, ("CreateAgent", {"agent_id": agent, "name": "n", "agent_type": "llm"})), (tenant, ("StartAgent", {"agent_id": agent})))
    ]
)
HISTORY = st.builds(
    lambda setup, rest: setup + rest,
    SETUP,
    st.lists(st.tuples(st.sampled_from(TENANTS), st.one_of(COMMANDS, TASK_COMMANDS)), max_size=60),
)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(history: list[tuple[str, tuple[str, dict[str, Any]]]]) -> tuple[Harness, int]:
    """Run a history; asserts (d) on the way: a rejected command changes nothing. Returns (harness, accepted count)."""
    h = Harness()
    accepted = 0
    for tenant, (kind, data) in history:
        before = (copy.deepcopy(h.store), copy.deepcopy(h.events))
        result = h.handle(kind, data, tenant)
        if isinstance(result, Rejection):
            assert isinstance(result.code, RejectionCode) and result.message
            assert (h.store, h.events) == before
        else:
            assert result, f"{kind} accepted without events"
            accepted += 1
    return h, accepted


@PROPERTY
@given(HISTORY)
def test_replay_equals_stored_state_and_versions_are_contiguous(history) -> None:
    h, accepted = run(history)
    assert sum(len(v) for v in h.events.values()) == accepted  # every decider here emits exactly one event per command
    for key, entries in h.events.items():
        aggregate = h.aggregate_of[key]
        versions = [v for v, _ in entries]
        assert versions == list(range(1, len(entries) + 1))  # (c)
        assert h.store[key]["version"] == len(entries)
        full = replay(aggregate, [e for _, e in entries])
        assert full == h.state(*key)  # (a)


@PROPERTY
@given(HISTORY, st.data())
def test_snapshot_plus_tail_equals_full_replay(history, data) -> None:
    h, _ = run(history)
    for key, entries in h.events.items():
        aggregate = h.aggregate_of[key]
        events = [e for _, e in entries]
        k = data.draw(st.integers(0, len(events)), label=f"cut {key}")
        full = replay(aggregate, events)
        snapshot = replay(aggregate, events[:k])
        assert replay(aggregate, events[k:], state=snapshot) == full  # (b)
        restored = aggregate.load(json.loads(json.dumps(aggregate.dump(snapshot))))
        assert restored == snapshot
        assert replay(aggregate, events[k:], state=restored) == full


@PROPERTY
@given(HISTORY)
def test_task_invariants_hold_in_every_history(history) -> None:
    h, _ = run(history)
    for (tenant, stream), entries in h.events.items():
        if not stream.startswith("task-"):
            continue
        types = [e.type for _, e in entries]
        assert types[0] == "TaskAssigned" and types.count("TaskAssigned") == 1
        ends = [i for i, t in enumerate(types) if t in ("TaskCompleted", "TaskFailed")]
        assert ends in ([], [len(types) - 1])  # ends once, and nothing after
        started = [i for i, t in enumerate(types) if t == "TaskStarted"]
        assert len(started) <= 1 and all(i < started[0] for i, t in enumerate(types) if started and t == "TaskReassigned")
        agent_id = entries[0][1].data["agent_id"]
        for _, event in entries:  # every event names the agent the task is with at that point
            if event.type == "TaskReassigned":
                assert event.data["from_agent_id"] == agent_id != event.data["agent_id"]
                agent_id = event.data["agent_id"]
            assert event.data["agent_id"] == agent_id
            assert (tenant, f"agent-{agent_id}") in h.events  # the agent existed in the same tenant


# ====================================================================== quotas, start, reassignment, onboarding
def test_start_task_only_by_its_agent_and_only_once() -> None:
    h = Harness()
    assigned_task(h)
    running_agent(h, "a2")
    assert rejected(h.handle("StartTask", {"task_id": "t1", "agent_id": "a2"}), RejectionCode.INVARIANT_VIOLATED, "assigned to agent a1")
    at = datetime(2026, 5, 1, tzinfo=timezone.utc)
    assert h.handle("StartTask", {"task_id": "t1", "agent_id": "a1"}, at=at) == [Event("TaskStarted", {"task_id": "t1", "agent_id": "a1", "started_at": at})]
    assert h.state("acme", "task-t1").status == "started"
    assert rejected(h.handle("StartTask", {"task_id": "t1", "agent_id": "a1"}), RejectionCode.INVARIANT_VIOLATED, "already started")
    assert rejected(h.handle("StartTask", {"task_id": "t9", "agent_id": "a1"}), RejectionCode.NOT_FOUND)
    assert not isinstance(h.handle("CompleteTask", {"task_id": "t1"}), Rejection)  # a started task completes


def test_reassign_task_before_its_start_to_another_running_agent() -> None:
    h = Harness()
    assigned_task(h)
    assert rejected(h.handle("ReassignTask", {"task_id": "t1", "agent_id": "a1"}), RejectionCode.INVARIANT_VIOLATED, "already assigned to agent a1")
    assert rejected(h.handle("ReassignTask", {"task_id": "t1", "agent_id": "a2"}), RejectionCode.NOT_FOUND, "agent a2 does not exist")
    running_agent(h, "a2")
    events = h.handle("ReassignTask", {"task_id": "t1", "agent_id": "a2", "attempt": 1})
    assert [(e.type, e.data["from_agent_id"], e.data["agent_id"], e.data["attempt"]) for e in events] == [("TaskReassigned", "a1", "a2", 1)]
    state = h.state("acme", "task-t1")
    assert (state.agent_id, state.reassignments, state.status) == ("a2", 1, "assigned")
    h.handle("StartTask", {"task_id": "t1", "agent_id": "a2"})
    assert rejected(h.handle("ReassignTask", {"task_id": "t1", "agent_id": "a1"}), RejectionCode.INVARIANT_VIOLATED, "already started")


def test_assign_task_records_reservation_start_time_and_retry_and_caps_the_billed_cost() -> None:
    h = Harness()
    running_agent(h)
    events = h.handle("AssignTask", {"task_id": "t1", "agent_id": "a1", "task_type": "x", "max_cost": 250_000, "start_within_s": 30, "retry_of": "t0"})
    assert {k: events[0].data[k] for k in ("max_cost", "start_within_s", "retry_of")} == {"max_cost": 250_000, "start_within_s": 30, "retry_of": "t0"}
    done = h.handle("CompleteTask", {"task_id": "t1", "cost": 0.9})  # more than reserved: billed what was reserved
    assert done[0].data["cost"] == 0.25 and round(done[0].data["cost"] * 1_000_000) == 250_000
    h.handle("AssignTask", {"task_id": "t2", "agent_id": "a1", "task_type": "x", "max_cost": 250_000})
    assert h.handle("FailTask", {"task_id": "t2", "error": "e", "cost": 0.1})[0].data["cost"] == 0.1  # under the cap: as reported
    h.handle("AssignTask", {"task_id": "t3", "agent_id": "a1", "task_type": "x"})  # before quotas: no cap
    assert h.handle("CompleteTask", {"task_id": "t3", "cost": 7.5})[0].data["cost"] == 7.5


def test_set_tenant_quota() -> None:
    h = Harness()
    assert rejected(h.handle("SetTenantQuota", {"max_agents": 3}), RejectionCode.NOT_FOUND)
    h.handle("CreateTenant", {"name": "Acme", "plan": "pro"})
    assert rejected(h.handle("SetTenantQuota", {}), RejectionCode.VALIDATION_FAILED, "sets no limit")
    assert rejected(h.handle("SetTenantQuota", {"max_agents": -1, "api_rate_per_hour": -2}), RejectionCode.VALIDATION_FAILED, "api_rate_per_hour, max_agents")
    assert rejected(h.handle("SetTenantQuota", {"task_start_within_s": 0}), RejectionCode.VALIDATION_FAILED, "at least 1")
    events = h.handle("SetTenantQuota", {"max_agents": 3, "monthly_budget_micros": 0})
    assert events[0].type == "TenantQuotaSet" and events[0].data["max_agents"] == 3 and events[0].data["max_concurrent_tasks"] is None
    h.handle("SetTenantQuota", {"max_agents": 5, "api_rate_per_hour": 60})
    assert h.state("acme", "tenant").quota == {"max_agents": 5, "monthly_budget_micros": 0, "api_rate_per_hour": 60}


def test_onboarding_ends_once() -> None:
    h = Harness()
    h.handle("CreateTenant", {"name": "Acme"})
    assert rejected(h.handle("CompleteTenantOnboarding", {}), RejectionCode.INVARIANT_VIOLATED, "not prepared")
    assert h.handle("RecordTenantPreparation", {"succeeded": False, "reason": "disk full"}) == [Event("TenantPreparationFailed", {"reason": "disk full"})]
    assert h.handle("RecordTenantPreparation", {"succeeded": True}) == [Event("TenantPrepared", {"detail": {}})]
    assert h.handle("CompleteTenantOnboarding", {}) == [Event("TenantReady", {"saga_id": "onboarding"})]
    assert h.state("acme", "tenant").onboarding == "ready"
    for kind, data in (("CompleteTenantOnboarding", {}), ("FailTenantOnboarding", {"reason": "x"}), ("RecordTenantPreparation", {"succeeded": True})):
        assert rejected(h.handle(kind, data), RejectionCode.INVARIANT_VIOLATED, "already ready")
    h2 = Harness()
    h2.handle("CreateTenant", {"name": "Beta"})
    assert h2.handle("FailTenantOnboarding", {"reason": "timed out"}) == [Event("TenantOnboardingFailed", {"reason": "timed out"})]
    assert rejected(h2.handle("CompleteTenantOnboarding", {}), RejectionCode.INVARIANT_VIOLATED, "already failed")
