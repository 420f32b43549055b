"""Sagas (streams/sagas): every transition, deadline and compensation on a virtual clock, then
random event orders and duplicates.

The world here is pure: commands the sagas send are decided by the real deciders and quota rules
(``tests/unit/platform_sim.py``), the events they append are fed back to the tenant's saga book
(through JSON every time, as a changelog would keep it), and deadlines fire when the test moves
the clock. A tiny provisioner answers ``PrepareTenant`` as each test tells it to.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.domain import Event, Rejection
from streams.domain.quotas import QuotaExceeded, to_ms
from streams.sagas import (
    Backoff, Deadline, DeadlineQueue, OnboardingPolicy, SagaBook, SagaCommand, SagaEvent, TaskLifecycle, TaskPolicy,
    TenantOnboarding, command_id, fire, handle, next_due_ms,
)
from streams.sagas.core import MAX_COMMAND_ID
from streams.sagas.onboarding import PROVISIONER_COMMANDS
from tests.unit.platform_sim import PLANS, Platform

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
FAST = TaskPolicy(max_reassignments=2, reassign_backoff=Backoff(5, 2, 60), max_retries=1, retry_backoff=Backoff(10, 2, 60), compensation_backoff=Backoff(30, 2, 600))


class World:
    """One platform, the tenants' saga books, a virtual clock, and everything the sagas sent."""

    def __init__(self, policy: TaskPolicy = FAST, provisioner: str = "ok", step_timeout_s: int = 30, auto: bool = True) -> None:
        self.platform = Platform()
        self.types = [TaskLifecycle(policy), TenantOnboarding(OnboardingPolicy(PLANS, step_timeout_s=step_timeout_s))]
        self.books: dict[str, dict[str, Any]] = {}
        self.clock = T0
        self.sent: list[tuple[datetime, SagaCommand]] = []
        self.outcomes: dict[str, Any] = {}
        self.provisioner = provisioner
        self.torn_down: list[str] = []
        self.delivered: list[SagaEvent] = []
        self.seen = 0  # events of platform.appended turned into SagaEvents
        self.pending: list[SagaEvent] = []
        self.auto = auto  # deliver every event as soon as it is appended
        self.ended_at: dict[tuple[str, str], int] = {}

    # --- the platform --------------------------------------------------------------------
    def do(self, kind: str, data: dict[str, Any], tenant: str = "acme") -> Any:
        decision = self.platform.handle(kind, data, tenant, self.clock)
        self.collect()
        return decision

    def collect(self) -> None:
        for tenant, stream, version, event, at, cid in self.platform.appended[self.seen :]:
            self.pending.append(SagaEvent(event.type, dict(event.data), tenant, stream, version, at, cid))
        self.seen = len(self.platform.appended)
        if self.auto:
            self.pump()

    def pump(self) -> None:
        while self.pending:
            self.deliver(self.pending.pop(0))

    # --- the saga shell, in miniature ---------------------------------------------------
    def book(self, tenant: str = "acme") -> SagaBook:
        return SagaBook.load(self.books.get(tenant))

    def store(self, tenant: str, book: SagaBook, commands: list[SagaCommand]) -> None:
        """Keep the book (through JSON); a saga that ended may still send its last step's ``commands``, nothing later."""
        self.books[tenant] = json.loads(json.dumps(book.dump()))
        assert SagaBook.load(self.books[tenant]).dump() == json.loads(json.dumps(book.dump()))
        for sid, _ in book.finished:
            self.ended_at.setdefault((tenant, sid), len(self.sent) + len(commands))

    def deliver(self, event: SagaEvent) -> None:
        self.delivered.append(event)
        book, commands = handle(self.types, self.book(event.tenant_id), event)
        self.store(event.tenant_id, book, commands)
        self.execute(commands)

    def advance(self, seconds: float) -> None:
        self.clock += timedelta(seconds=seconds)
        for tenant in sorted(self.books):
            book, commands = fire(self.types, self.book(tenant), self.clock)
            self.store(tenant, book, commands)
            self.execute(commands)

    def execute(self, commands: list[SagaCommand]) -> None:
        for command in commands:
            self.sent.append((self.clock, command))
            if command.type in PROVISIONER_COMMANDS:
                self.provision(command)
                continue
            self.outcomes[command.command_id] = self.platform.handle(command.type, dict(command.data), command.tenant_id, self.clock, command.command_id)
        self.collect()

    def provision(self, command: SagaCommand) -> None:
        if command.type == "TeardownTenant":
            self.torn_down.append(command.tenant_id)
        elif self.provisioner != "silent":
            ok = self.provisioner == "ok"
            self.platform.handle("RecordTenantPreparation", {"succeeded": ok, "reason": None if ok else "disk full"}, command.tenant_id, self.clock, f"prov:{command.command_id}")

    # --- looking -------------------------------------------------------------------------
    def saga(self, saga_id: str, tenant: str = "acme") -> Any:
        book = self.book(tenant)
        if saga_id not in book.sagas:
            return None
        kind, state = book.sagas[saga_id]
        return next(t for t in self.types if t.name == kind).state_model.model_validate(state)

    def ended(self, saga_id: str, tenant: str = "acme") -> str | None:
        return self.book(tenant).ended(saga_id)

    def commands(self, saga_id: str) -> list[tuple[float, str, dict[str, Any]]]:
        """(seconds since T0, type, data) of what ``saga_id`` sent."""
        return [((at - T0).total_seconds(), c.type, dict(c.data)) for at, c in self.sent if c.saga_id == saga_id]

    def run_until(self, seconds: float, step: float = 1.0) -> None:
        while (self.clock - T0).total_seconds() < seconds:
            self.advance(step)


def tenant_with_agents(world: World, agents: dict[str, str], tenant: str = "acme", **quota: int) -> None:
    """A ready pro tenant with ``agents`` (id -> type) created and running, and optional limits."""
    assert isinstance(world.do("CreateTenant", {"name": tenant, "plan": "pro"}, tenant), list)
    if quota:
        assert isinstance(world.do("SetTenantQuota", quota, tenant), list)
    for agent_id, agent_type in agents.items():
        assert isinstance(world.do("CreateAgent", {"agent_id": agent_id, "name": agent_id, "agent_type": agent_type}, tenant), list)
        assert isinstance(world.do("StartAgent", {"agent_id": agent_id}, tenant), list)


def assign(world: World, task: str, agent: str, tenant: str = "acme", **extra: Any) -> Any:
    return world.do("AssignTask", {"task_id": task, "agent_id": agent, "task_type": "summarise", **extra}, tenant)


# ====================================================================== the parts
def test_command_ids_are_deterministic_and_fit() -> None:
    assert command_id("task", "task:t1", "reassign", 2) == "saga:task:task:t1:reassign:2"
    long = command_id("task", "task:" + "x" * 300, "reassign", 1)
    assert len(long) == MAX_COMMAND_ID and long == command_id("task", "task:" + "x" * 300, "reassign", 1)
    assert long != command_id("task", "task:" + "x" * 300, "reassign", 2)


def test_deadline_queue() -> None:
    q = DeadlineQueue().schedule([Deadline(30, "s1", "start"), Deadline(10, "s2", "start"), Deadline(20, "s1", "retry")])
    assert q.next_due_ms() == 10 and len(q) == 3
    q2 = q.schedule([Deadline(5, "s1", "start", 1)])  # replaces s1's start
    assert [(d.due_ms, d.saga_id, d.name) for d in q2.items] == [(5, "s1", "start"), (10, "s2", "start"), (20, "s1", "retry")]
    rest, due = q2.due(10)
    assert [d.due_ms for d in due] == [5, 10] and rest.items == (Deadline(20, "s1", "retry"),)
    assert q2.cancel("s1", ["retry"]).pending("s1") == [Deadline(5, "s1", "start", 1)]
    assert q2.cancel("s1").pending("s1") == [] and q2.cancel("s1", []) is q2
    assert DeadlineQueue.load(json.loads(json.dumps(q2.dump()))) == q2
    assert DeadlineQueue().next_due_ms() is None and q.due(0) == (q, [])


def test_backoff() -> None:
    b = Backoff(5, 2, 30)
    assert [b.delay_ms(n) for n in range(5)] == [5000, 10000, 20000, 30000, 30000]


# ====================================================================== task life cycle
def test_task_started_in_time_then_completed() -> None:
    w = World()
    tenant_with_agents(w, {"a1": "llm"})
    assign(w, "t1", "a1", start_within_s=20)
    state = w.saga("task:t1")
    assert (state.status, state.agent_type, state.start_within_s) == ("waiting_start", "llm", 20)
    assert w.book().deadlines.pending("task:t1") == [Deadline(to_ms(T0) + 20_000, "task:t1", "start", 0)]
    w.run_until(19)
    assert w.do("StartTask", {"task_id": "t1", "agent_id": "a1"})
    assert w.saga("task:t1").status == "running" and w.book().deadlines.pending("task:t1") == []
    w.run_until(300)
    w.do("CompleteTask", {"task_id": "t1", "cost": 0.05})
    assert w.ended("task:t1") == "completed" and w.saga("task:t1") is None and w.commands("task:t1") == []
    assert next_due_ms(w.book()) is None


def test_not_started_in_time_is_reassigned_to_another_agent_of_its_type() -> None:
    w = World()
    tenant_with_agents(w, {"a1": "llm", "a2": "llm", "r1": "retriever"})
    assign(w, "t1", "a1", start_within_s=10)
    w.run_until(14)
    assert w.saga("task:t1").status == "reassigning" and w.commands("task:t1") == []
    w.run_until(15)  # 10 s start time + 5 s backoff
    assert w.commands("task:t1") == [(15.0, "ReassignTask", {"task_id": "t1", "agent_id": "a2", "attempt": 1})]
    assert w.sent[-1][1].command_id == "saga:task:task:t1:reassign:1"
    assert w.platform.state("acme", "task-t1").agent_id == "a2" and w.saga("task:t1").agent_id == "a2"
    assert isinstance(w.do("StartTask", {"task_id": "t1", "agent_id": "a1"}), Rejection)  # no longer a1's
    w.do("StartTask", {"task_id": "t1", "agent_id": "a2"})
    w.do("CompleteTask", {"task_id": "t1", "cost": 0.01})
    assert w.ended("task:t1") == "completed"


def test_nobody_starts_it_reassignments_then_compensation_on_schedule() -> None:
    w = World()
    tenant_with_agents(w, {"a1": "llm", "a2": "llm"})
    assign(w, "t1", "a1", start_within_s=10, max_cost=300_000)
    assert w.platform.row("acme").concurrent_tasks == 1 and w.platform.row("acme").reserved_micros == 300_000
    w.run_until(200)
    assert [(t, kind, d.get("agent_id")) for t, kind, d in w.commands("task:t1")] == [
        (15.0, "ReassignTask", "a2"),  # start deadline at 10, backoff 5
        (35.0, "ReassignTask", "a1"),  # start deadline at 25, backoff 10
        (45.0, "FailTask", None),  # start deadline at 45: both reassignments used
    ]
    task = w.platform.state("acme", "task-t1")
    assert task.status == "failed" and "not started within 10 s" in task.error and task.cost == 0.0
    assert w.ended("task:t1") == "compensated"
    row = w.platform.row("acme")
    assert (row.concurrent_tasks, row.reserved_micros, row.spent_micros) == (0, 0, 0)  # slot and reservation released


def test_with_no_other_agent_each_attempt_is_used_up_then_compensated() -> None:
    w = World()
    tenant_with_agents(w, {"a1": "llm", "r1": "retriever"})
    assign(w, "t1", "a1", start_within_s=10)
    w.run_until(100)
    assert [kind for _, kind, _ in w.commands("task:t1")] == ["FailTask"]
    assert w.ended("task:t1") == "compensated"
    assert "2 reassignments used" in w.platform.state("acme", "task-t1").error


def test_an_agent_stopping_before_the_start_counts_as_a_timeout() -> None:
    w = World()
    tenant_with_agents(w, {"a1": "llm", "a2": "llm"})
    assign(w, "t1", "a1", start_within_s=100)
    w.advance(3)
    w.do("StopAgent", {"agent_id": "a1"})
    assert w.saga("task:t1").status == "reassigning"
    assert w.platform.row("acme").concurrent_tasks == 0  # the stop freed the slot
    w.advance(5)
    assert [(kind, d["agent_id"]) for _, kind, d in w.commands("task:t1")] == [("ReassignTask", "a2")]
    assert w.platform.row("acme").tasks["t1"].slot  # taken back by the reassignment


def test_a_failed_task_is_retried_as_a_new_task_that_the_same_saga_follows() -> None:
    w = World()
    tenant_with_agents(w, {"a1": "llm", "a2": "llm"})
    assign(w, "t1", "a1", start_within_s=30, max_cost=200_000)
    w.do("StartTask", {"task_id": "t1", "agent_id": "a1"})
    w.do("FailTask", {"task_id": "t1", "error": "model crashed", "cost": 0.05})
    assert w.saga("task:t1").status == "retry_wait"
    w.advance(10)
    (_, kind, data), = w.commands("task:t1")
    assert kind == "AssignTask" and data["task_id"] == "t1.retry1" and data["retry_of"] == "t1" and data["max_cost"] == 200_000
    state = w.saga("task:t1")
    assert (state.status, state.task_id, state.retries) == ("waiting_start", "t1.retry1", 1)
    assert list(w.book().sagas) == ["task:t1"]  # the retry started no saga of its own
    w.do("StartTask", {"task_id": "t1.retry1", "agent_id": data["agent_id"]})
    w.do("CompleteTask", {"task_id": "t1.retry1", "cost": 0.1})
    assert w.ended("task:t1") == "completed"
    assert w.platform.row("acme").spent_micros == 150_000


def test_a_second_failure_with_no_retry_left_ends_failed() -> None:
    w = World()
    tenant_with_agents(w, {"a1": "llm"})
    assign(w, "t1", "a1")
    w.do("FailTask", {"task_id": "t1", "error": "boom"})
    w.advance(10)
    w.do("FailTask", {"task_id": "t1.retry1", "error": "boom again"})
    assert w.ended("task:t1") == "failed" and [kind for _, kind, _ in w.commands("task:t1")] == ["AssignTask"]


def test_a_retry_the_quota_refuses_is_released_and_the_saga_fails() -> None:
    w = World()
    tenant_with_agents(w, {"a1": "llm"}, max_concurrent_tasks=1)
    assign(w, "t1", "a1", start_within_s=20)
    w.do("FailTask", {"task_id": "t1", "error": "boom"})
    assign(w, "t2", "a1", start_within_s=1000)  # takes the only slot
    w.advance(10)
    assert isinstance(w.outcomes["saga:task:task:t1:retry:1"], QuotaExceeded)
    w.advance(20)
    assert [kind for _, kind, _ in w.commands("task:t1")] == ["AssignTask", "FailTask"]
    assert w.ended("task:t1") == "failed"


def test_a_compensation_the_rate_refuses_is_sent_again_until_it_lands() -> None:
    w = World(policy=TaskPolicy(max_reassignments=0, compensation_backoff=Backoff(600, 2, 3600)))
    tenant_with_agents(w, {"a1": "llm"})
    assign(w, "t1", "a1", start_within_s=10)
    used = w.platform.row("acme").rate_count(to_ms(w.clock))
    w.do("SetTenantQuota", {"api_rate_per_hour": used})  # the hour is full from now on
    w.run_until(10)
    assert isinstance(w.outcomes["saga:task:task:t1:compensate:0"], QuotaExceeded)
    assert w.saga("task:t1").status == "compensating"
    w.run_until(4300, step=100)  # the full hour is over at 3,660 s; the fourth attempt (at 4,210 s) lands
    ids = [c.command_id for _, c in w.sent if c.saga_id == "task:t1"]
    assert ids[:2] == ["saga:task:task:t1:compensate:0", "saga:task:task:t1:compensate:1"]
    assert w.ended("task:t1") == "compensated"


def test_deadlines_that_fell_due_while_nobody_owned_the_partition_fire_at_once() -> None:
    w = World()
    tenant_with_agents(w, {"a1": "llm", "a2": "llm"})
    assign(w, "t1", "a1", start_within_s=10)
    w.advance(3600)  # the worker was down for an hour
    assert w.saga("task:t1").status == "reassigning"
    w.advance(5)
    assert [round(t) for t, _, _ in w.commands("task:t1")] == [3605]


def test_a_late_answer_to_a_step_the_saga_moved_past_changes_nothing() -> None:
    w = World()
    tenant_with_agents(w, {"a1": "llm", "a2": "llm"})
    assign(w, "t1", "a1", start_within_s=10)
    w.run_until(15)  # reassigned to a2
    stale = Deadline(to_ms(T0) + 10_000, "task:t1", "start", 0)
    kind = w.types[0]
    state = w.saga("task:t1")
    assert kind.on_deadline(state, stale, w.clock, {}).state == state


# ====================================================================== onboarding
def test_onboarding_sets_the_plan_defaults_prepares_and_is_ready() -> None:
    w = World()
    w.do("CreateTenant", {"name": "Acme", "plan": "pro"})
    assert [kind for _, kind, _ in w.commands("onboarding:acme")] == ["SetTenantQuota", "PrepareTenant", "CompleteTenantOnboarding"]
    assert w.ended("onboarding:acme") == "ready"
    tenant = w.platform.state("acme", "tenant")
    assert tenant.onboarding == "ready" and tenant.quota == PLANS.plans["pro"].model_dump()
    assert w.platform.row("acme").overrides == PLANS.plans["pro"].model_dump()
    assert w.sent[0][1].command_id == "saga:onboarding:onboarding:acme:quota:0"


@pytest.mark.parametrize(("provisioner", "reason"), [("fail", "preparation failed: disk full"), ("silent", "step prepare got no answer within 30 s")])
def test_a_failing_step_is_undone_and_onboarding_fails_with_the_reason(provisioner: str, reason: str) -> None:
    w = World(provisioner=provisioner)
    w.do("CreateTenant", {"name": "Acme", "plan": "pro"})
    w.run_until(60)
    assert [kind for _, kind, _ in w.commands("onboarding:acme")] == [
        "SetTenantQuota", "PrepareTenant", "TeardownTenant", "SetTenantQuota", "FailTenantOnboarding",
    ]
    assert w.ended("onboarding:acme") == "failed" and w.torn_down == ["acme"]
    tenant = w.platform.state("acme", "tenant")
    assert tenant.onboarding == "failed"
    failed = [e for _, _, _, e, _, _ in w.platform.appended if e.type == "TenantOnboardingFailed"]
    assert failed == [Event("TenantOnboardingFailed", {"reason": reason})]
    refused = w.do("CreateAgent", {"agent_id": "a1", "name": "n", "agent_type": "llm"})
    assert isinstance(refused, QuotaExceeded) and refused.quota in ("api_rate_per_hour", "max_agents")
    # a late answer from the provisioner is refused: onboarding ended once
    assert isinstance(w.do("RecordTenantPreparation", {"succeeded": True}), Rejection)


def test_a_quota_step_with_no_answer_is_undone() -> None:
    onboarding = TenantOnboarding(OnboardingPolicy(PLANS, step_timeout_s=30))
    created = SagaEvent("TenantCreated", {"name": "A", "region": "r", "plan": "free"}, "acme", "tenant", 1, T0, "c1")
    book, sent = handle([onboarding], SagaBook(), created)
    assert [c.type for c in sent] == ["SetTenantQuota"]
    admin = SagaEvent("TenantQuotaSet", {"max_agents": 9}, "acme", "tenant", 2, T0, "someone-else")
    book, sent = handle([onboarding], book, admin)
    assert sent == [] and book.sagas["onboarding:acme"][1]["status"] == "setting_quota"  # not the saga's own answer
    book, sent = fire([onboarding], book, T0 + timedelta(seconds=30))
    assert [c.type for c in sent] == ["SetTenantQuota", "FailTenantOnboarding"]
    assert all(v == 0 for k, v in sent[0].data.items())
    book, sent = fire([onboarding], book, T0 + timedelta(seconds=60))  # no TenantOnboardingFailed seen: sent again
    assert [(c.type, c.attempt) for c in sent] == [("FailTenantOnboarding", 1)]
    done = SagaEvent("TenantOnboardingFailed", {"reason": "x"}, "acme", "tenant", 3, T0 + timedelta(seconds=61), sent[0].command_id)
    book, sent = handle([onboarding], book, done)
    assert book.ended("onboarding:acme") == "failed" and not book.sagas and len(book.deadlines) == 0


def test_an_unknown_saga_type_in_a_book_is_a_clear_error() -> None:
    book = SagaBook(sagas={"x:1": ("nope", {})}, follows={"tenant": ("x:1",)})
    from streams.sagas.book import SagaRoutingError

    with pytest.raises(SagaRoutingError, match="type 'nope'"):
        handle([TaskLifecycle()], book, SagaEvent("TenantConfigured", {}, "acme", "tenant", 1, T0))


# ====================================================================== random orders and duplicates
TENANTS = ("x", "y")
AGENTS = {"a1": "llm", "a2": "llm", "a3": "llm", "r1": "retriever"}
ops = st.lists(
    st.one_of(
        st.tuples(st.just("assign"), st.sampled_from(TENANTS), st.sampled_from(sorted(AGENTS)), st.sampled_from([5, 10, 30])),
        st.tuples(st.sampled_from(["start", "complete", "fail", "start_wrong"]), st.sampled_from(TENANTS), st.integers(0, 40)),
        st.tuples(st.sampled_from(["stop", "restart"]), st.sampled_from(TENANTS), st.sampled_from(sorted(AGENTS))),
        st.tuples(st.just("advance"), st.integers(1, 40)),
        st.tuples(st.just("deliver"), st.integers(0, 40)),
        st.tuples(st.just("deliver"), st.integers(0, 40)),
        st.tuples(st.just("dup"), st.integers(0, 1000)),
    ),
    min_size=5,
    max_size=80,
)


def deliver_one(w: World, pick: int) -> None:
    """Deliver the oldest pending event of one stream (streams stay in order, their interleaving does not)."""
    streams = sorted({(e.tenant_id, e.stream_id) for e in w.pending})
    if not streams:
        return
    tenant, stream = streams[pick % len(streams)]
    index = next(i for i, e in enumerate(w.pending) if (e.tenant_id, e.stream_id) == (tenant, stream))
    w.deliver(w.pending.pop(index))


def open_tasks(w: World, tenant: str) -> list[Any]:
    return sorted(
        (row["loaded"] for (t, stream), row in w.platform.rows.items() if t == tenant and stream.startswith("task-") and row["loaded"].status in ("assigned", "started")),
        key=lambda s: s.task_id,
    )


def play(w: World, op: tuple, counter: list[int]) -> None:
    kind = op[0]
    if kind == "assign":
        counter[0] += 1
        assign(w, f"k{counter[0]}", op[2], op[1], start_within_s=op[3])
    elif kind in ("start", "complete", "fail", "start_wrong"):
        tasks = open_tasks(w, op[1])
        if not tasks:
            return
        task = tasks[op[2] % len(tasks)]
        if kind == "start":
            w.do("StartTask", {"task_id": task.task_id, "agent_id": task.agent_id}, op[1])
        elif kind == "start_wrong":
            w.do("StartTask", {"task_id": task.task_id, "agent_id": "a1" if task.agent_id != "a1" else "a2"}, op[1])
        elif kind == "complete":
            w.do("CompleteTask", {"task_id": task.task_id, "cost": 0.01}, op[1])
        else:
            w.do("FailTask", {"task_id": task.task_id, "error": "boom", "cost": 0.0}, op[1])
    elif kind in ("stop", "restart"):
        w.do("StopAgent" if kind == "stop" else "StartAgent", {"agent_id": op[2]}, op[1])
    elif kind == "advance":
        w.advance(op[1])
    elif kind == "deliver":
        deliver_one(w, op[1])
    elif kind == "dup" and w.delivered:
        w.deliver(w.delivered[op[1] % len(w.delivered)])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=ops)
def test_random_orders_and_duplicates_send_one_command_per_step_and_end_every_saga_once(program: list[tuple]) -> None:
    w = World()
    for tenant in TENANTS:
        tenant_with_agents(w, AGENTS, tenant)
    w.auto = False
    counter = [0]
    for op in program:
        play(w, op, counter)
    # drain: every event delivered, started tasks finish, the clock runs until nothing is pending
    for _ in range(400):
        w.pump()
        for tenant in TENANTS:
            for task in open_tasks(w, tenant):
                if task.status == "started":
                    w.do("CompleteTask", {"task_id": task.task_id, "cost": 0.01}, tenant)
        w.pump()
        if all(not w.book(t).sagas for t in TENANTS):
            break
        w.advance(60)
    ids = [c.command_id for _, c in w.sent]
    assert len(ids) == len(set(ids)), "a command id was sent twice"
    for tenant in TENANTS:
        book = w.book(tenant)
        assert not book.sagas and len(book.deadlines) == 0
        ended = [sid for sid, _ in book.finished]
        assert len(ended) == len(set(ended)), "a saga ended twice"
        roots = {e.data["task_id"] for t, _, _, e, _, _ in w.platform.appended if t == tenant and e.type == "TaskAssigned" and not e.data.get("retry_of")}
        assert set(ended) == {f"task:{r}" for r in roots} | {f"onboarding:{tenant}"}
        for sid, status in book.finished:
            after = [c for _, c in w.sent[w.ended_at[(tenant, sid)] :] if c.saga_id == sid and c.tenant_id == tenant]
            assert after == [], f"{sid} sent {after} after it ended"
            if sid.startswith("task:"):
                assert status in ("completed", "failed", "compensated")
        row = w.platform.row(tenant)
        assert row.tasks == {} and row.reserved_micros == 0  # every slot and reservation released
        for task in (r["loaded"] for (t, s), r in w.platform.rows.items() if t == tenant and s.startswith("task-")):
            assert task.status in ("completed", "failed")
    steps = [(c.tenant_id, c.saga_id, c.step, c.attempt) for _, c in w.sent]
    assert len(steps) == len(set(steps)), "two commands for one step and attempt"


def test_a_batch_decides_as_the_same_events_one_by_one() -> None:
    w = World()
    tenant_with_agents(w, {"a1": "llm", "a2": "llm"})
    for n in range(5):
        assign(w, f"t{n}", "a1", start_within_s=10)
    w.do("StartTask", {"task_id": "t1", "agent_id": "a1"})
    w.do("FailTask", {"task_id": "t2", "error": "boom"})
    w.do("StopAgent", {"agent_id": "a1"})
    events = list(w.delivered)
    one_by_one, sent = SagaBook(), []
    for event in events:
        one_by_one, commands = handle(w.types, one_by_one, event)
        sent += commands
    from streams.sagas import handle_batch

    batched, batch_sent = handle_batch(w.types, SagaBook(), events)
    assert batched.dump() == one_by_one.dump() and batch_sent == sent and sent
    fired_one, cmds_one = fire(w.types, one_by_one, T0 + timedelta(seconds=30))
    fired_two, cmds_two = fire(w.types, batched, T0 + timedelta(seconds=30))
    assert fired_one.dump() == fired_two.dump() and cmds_one == cmds_two
    assert one_by_one.dump() == batched.dump()  # firing changed neither book it was given


def test_saga_events_and_commands_meet_the_envelopes() -> None:
    from schemas.messages import EventMeta

    meta = EventMeta(event_id="e1", tenant_id="acme", stream_id="task-t1", version=3, occurred_at=T0, command_id="c9")
    event = SagaEvent.of("TaskStarted", {"task_id": "t1", "agent_id": "a1"}, meta)
    assert (event.tenant_id, event.stream_id, event.version, event.at, event.command_id) == ("acme", "task-t1", 3, T0, "c9")
    command = SagaCommand("saga:task:task:t1:reassign:1", "ReassignTask", "acme", {}, "task:t1", "reassign", 1)
    envelope = command.meta(T0)
    assert (envelope.command_id, envelope.tenant_id, envelope.principal, envelope.expected_version) == ("saga:task:task:t1:reassign:1", "acme", "saga:task:t1", None)
