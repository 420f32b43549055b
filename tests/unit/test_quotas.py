"""Quotas (streams/domain/quotas.py): each rule by example, then properties over random histories.

The histories run the real deciders (streams/domain) and the real Avro encoding for the byte
counts, with the quota row checked and updated exactly as the command processor is to do it
(``tests/unit/platform_sim.py``: ``with_defaults`` before deciding, ``admit`` after encoding, the
row through JSON every time).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.topology import QuotaLimits
from streams.domain import Command, Event, Rejection
from streams.domain import quotas
from streams.domain.quotas import HOUR_MS, QUOTAS, QuotaExceeded, QuotaState, micros, month_of, to_ms
from tests.unit.platform_sim import PLANS, REG, Platform

T0 = datetime(2026, 1, 31, 22, 0, tzinfo=UTC)  # two hours before a month ends


def limits(**overrides: int) -> QuotaLimits:
    base = dict(max_agents=2, max_concurrent_tasks=2, api_rate_per_hour=10, storage_limit_bytes=10_000, monthly_budget_micros=1_000_000,
                task_max_cost_micros=300_000, task_start_within_s=60)
    return QuotaLimits(**{**base, **overrides})


def cmd(kind: str, at: datetime = T0, **data: Any) -> Command:
    return Command(kind, data, "acme", at=at)


# ====================================================================== rules by example
def test_plans_cover_every_tenant_plan_and_defaults_apply() -> None:
    symbols = {s for f in REG.get("TenantCreated").schema["fields"] if f["name"] == "plan" for s in f["type"]["symbols"]}
    assert symbols <= set(PLANS.plans)
    row = QuotaState(plan="pro", overrides={"max_agents": 7})
    assert quotas.limits_of(row, PLANS) == PLANS.plans["pro"].model_copy(update={"max_agents": 7})
    assert quotas.limits_of(QuotaState(plan="nope"), PLANS) == PLANS.plans["free"]
    with pytest.raises(KeyError, match="declared: enterprise, free, pro"):
        PLANS.limits("nope")


def test_with_defaults_fills_only_what_assign_task_leaves_out() -> None:
    lim = limits()
    filled = quotas.with_defaults(cmd("AssignTask", task_id="t", max_cost=None, start_within_s=None), lim)
    assert (filled.data["max_cost"], filled.data["start_within_s"]) == (300_000, 60)
    kept = quotas.with_defaults(cmd("AssignTask", task_id="t", max_cost=5, start_within_s=9), lim)
    assert (kept.data["max_cost"], kept.data["start_within_s"]) == (5, 9)
    other = cmd("CreateAgent", agent_id="a")
    assert quotas.with_defaults(other, lim) is other


def test_max_agents() -> None:
    row = quotas.accept(QuotaState(), T0, [Event("AgentCreated", {"agent_id": "a1"}), Event("AgentCreated", {"agent_id": "a2"})])
    refused = quotas.check(cmd("CreateAgent", agent_id="a3"), row, limits(), T0)
    assert refused == QuotaExceeded("max_agents", 2, 2)
    assert "max_agents" in refused.message and "limit 2" in refused.message
    assert quotas.check(cmd("StartAgent", agent_id="a1"), row, limits(), T0) is None


def assigned(row: QuotaState, task: str, agent: str = "a1", cost: int = 100_000, at: datetime = T0) -> QuotaState:
    return quotas.accept(row, at, [Event("TaskAssigned", {"task_id": task, "agent_id": agent, "max_cost": cost})])


def test_slots_are_held_until_the_task_ends_or_its_agent_stops() -> None:
    row = assigned(assigned(QuotaState(), "t1"), "t2", agent="a2")
    assign = cmd("AssignTask", task_id="t3", max_cost=1)
    assert quotas.check(assign, row, limits(), T0) == QuotaExceeded("max_concurrent_tasks", 2, 2)
    freed = quotas.apply(row, Event("TaskCompleted", {"task_id": "t1", "cost": 0.05}), T0)
    assert freed.concurrent_tasks == 1 and quotas.check(assign, freed, limits(), T0) is None
    stopped = quotas.apply(row, Event("AgentStopped", {"agent_id": "a2"}), T0)
    assert stopped.concurrent_tasks == 1 and stopped.reserved_micros == 200_000  # the reservation stays
    # a task whose slot its agent's stop freed needs a slot again to be reassigned
    full = assigned(stopped, "t4")
    reassign = cmd("ReassignTask", task_id="t2", agent_id="a3")
    assert quotas.check(reassign, full, limits(), T0) == QuotaExceeded("max_concurrent_tasks", 2, 2)
    assert quotas.check(reassign, stopped, limits(), T0) is None
    back = quotas.apply(stopped, Event("TaskReassigned", {"task_id": "t2", "agent_id": "a3"}), T0)
    assert back.tasks["t2"].slot and back.tasks["t2"].agent_id == "a3" and back.concurrent_tasks == 2


def test_budget_counts_spent_and_reserved_and_settles_at_the_end() -> None:
    row = assigned(QuotaState(), "t1", cost=600_000)
    assert quotas.check(cmd("AssignTask", task_id="t2", max_cost=400_000), row, limits(max_concurrent_tasks=9), T0) is None
    refused = quotas.check(cmd("AssignTask", task_id="t2", max_cost=400_001), row, limits(max_concurrent_tasks=9), T0)
    assert refused == QuotaExceeded("monthly_budget_micros", 1_000_000, 600_000, 400_001)
    settled = quotas.apply(row, Event("TaskCompleted", {"task_id": "t1", "cost": 0.25}), T0)
    assert (settled.spent_micros, settled.reserved_micros, settled.month) == (250_000, 0, "2026-01")
    assert settled.usage(T0)["monthly_budget_micros"] == 250_000
    # a new month starts from nothing spent; a reservation carries over
    feb = T0 + timedelta(hours=3)
    carried = assigned(settled, "t9", cost=100_000)
    assert carried.usage(feb)["monthly_budget_micros"] == 100_000
    ended = quotas.apply(carried, Event("TaskFailed", {"task_id": "t9", "cost": 0.1}), feb)
    assert (ended.month, ended.spent_micros, ended.reserved_micros) == ("2026-02", 100_000, 0)


def test_storage_counts_the_bytes_of_appended_events() -> None:
    row = quotas.accept(QuotaState(), T0, [], append_bytes=9_990)
    assert quotas.check(cmd("StartAgent", agent_id="a"), row, limits(), T0, append_bytes=10) is None
    assert quotas.check(cmd("StartAgent", agent_id="a"), row, limits(), T0, append_bytes=11) == QuotaExceeded("storage_limit_bytes", 10_000, 9_990, 11)


def test_set_tenant_quota_is_never_refused_and_not_rated() -> None:
    row = quotas.accept(QuotaState(), T0, [], append_bytes=10_000)
    for _ in range(10):
        row = quotas.accept(row, T0, [])
    lift = cmd("SetTenantQuota", storage_limit_bytes=20_000)
    assert quotas.check(cmd("StartAgent", agent_id="a"), row, limits(), T0) is not None
    assert quotas.check(lift, row, limits(), T0, append_bytes=50) is None
    after = quotas.admit(lift, [Event("TenantQuotaSet", {"storage_limit_bytes": 20_000, "max_agents": None})], row, limits(), T0, 50)
    assert isinstance(after, QuotaState)
    assert after.rate_count(to_ms(T0)) == row.rate_count(to_ms(T0)) == 11 and after.overrides == {"storage_limit_bytes": 20_000} and after.stored_bytes == 10_050


def test_tenant_created_sets_the_plan() -> None:
    row = quotas.apply(QuotaState(), Event("TenantCreated", {"name": "A", "region": "r", "plan": "enterprise"}), T0)
    assert quotas.limits_of(row, PLANS) == PLANS.plans["enterprise"]


def test_no_burst_of_twice_the_limit_at_an_hour_edge() -> None:
    """Ten commands at 10:59:59 fill the hour: at 11:00:01 a fixed hourly window would admit ten more."""
    lim = limits(api_rate_per_hour=10)
    edge = datetime(2026, 3, 2, 10, 59, 59, tzinfo=UTC)
    row = QuotaState()
    for _ in range(10):
        assert quotas.check(cmd("StartAgent", at=edge, agent_id="a"), row, lim, edge) is None
        row = quotas.accept(row, edge, [])
    after_edge = edge + timedelta(seconds=2)
    assert quotas.check(cmd("StartAgent", agent_id="a"), row, lim, after_edge) == QuotaExceeded("api_rate_per_hour", 10, 10)
    # a full hour (plus the minute bucket it started in) later, the whole hour is free again
    later = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)
    assert quotas.check(cmd("StartAgent", agent_id="a"), row, lim, later) is None
    assert quotas.check(cmd("StartAgent", agent_id="a"), row, lim, later - timedelta(seconds=1)) is not None


def test_an_earlier_command_time_counts_as_the_latest() -> None:
    late = T0 + timedelta(hours=5)
    row = quotas.accept(QuotaState(), late, [])
    row = quotas.accept(row, T0, [])  # a clock that went back: counted at `late`
    assert row.last_at_ms == to_ms(late) and row.rate == [(to_ms(late) // 60_000, 2)]
    assert row.rate_count(to_ms(T0)) == 2


def test_helpers() -> None:
    assert to_ms(datetime(1970, 1, 1, 0, 0, 1)) == 1000
    assert month_of(to_ms(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))) == "2026-12"
    assert micros(0.1) == 100_000 and micros(1e-6) == 1
    assert quotas.roundtrip(assigned(QuotaState(), "t1")) == assigned(QuotaState(), "t1")


# ====================================================================== random histories
TENANTS = ("t-a", "t-b", "t-c")
AGENTS = ("a1", "a2", "a3", "a4")

limit_sets = st.fixed_dictionaries(
    {
        "max_agents": st.integers(1, 4),
        "max_concurrent_tasks": st.integers(0, 4),
        "api_rate_per_hour": st.integers(1, 40),
        "storage_limit_bytes": st.integers(500, 20_000),
        "monthly_budget_micros": st.integers(0, 8_000_000),
        "task_max_cost_micros": st.integers(0, 1_500_000),
    }
)
#: Task actions name a task by an index into the tenant's tasks so far (resolved when played).
pick = st.integers(0, 50)
assign = st.tuples(st.just("AssignTask"), st.sampled_from(AGENTS), st.one_of(st.none(), st.integers(0, 1_200_000)))
end = st.tuples(st.sampled_from(["CompleteTask", "FailTask"]), pick, st.floats(0, 2.0, allow_nan=False))
actions = st.one_of(
    st.tuples(st.just("CreateAgent"), st.sampled_from(AGENTS)),
    st.tuples(st.just("StartAgent"), st.sampled_from(AGENTS)),
    st.tuples(st.just("StopAgent"), st.sampled_from(AGENTS)),
    assign, assign, assign,
    st.tuples(st.just("StartTask"), pick, st.sampled_from(AGENTS)),
    end, end, end,
    st.tuples(st.just("ReassignTask"), pick, st.sampled_from(AGENTS)),
)
#: (tenant, action, seconds the clock moves first: negative = a clock that went back)
steps = st.lists(st.tuples(st.sampled_from(TENANTS), actions, st.integers(-60, 600)), min_size=10, max_size=150)
#: Every tenant first creates and starts its agents (as far as its quotas let it).
SETUP = [(tenant, (kind, agent), 1) for tenant in TENANTS for agent in AGENTS[:3] for kind in ("CreateAgent", "StartAgent")]


def payload(action: tuple, tasks: list[str]) -> tuple[str, dict[str, Any]]:
    """The command an action stands for; ``tasks`` are the tenant's task ids so far (a new one is added for AssignTask)."""
    kind = action[0]
    if kind in ("StartTask", "ReassignTask", "CompleteTask", "FailTask") and not tasks:
        kind, action = "AssignTask", ("AssignTask", AGENTS[action[1] % 3], None)  # nothing to end yet: assign first
    if kind == "CreateAgent":
        return kind, {"agent_id": action[1], "name": "n", "agent_type": "llm"}
    if kind in ("StartAgent", "StopAgent"):
        return kind, {"agent_id": action[1]}
    if kind == "AssignTask":
        tasks.append(f"k{len(tasks)}-{action[1]}")
        return kind, {"task_id": tasks[-1], "agent_id": action[1], "task_type": "x", "max_cost": action[2]}
    task = tasks[action[1] % len(tasks)]
    if kind in ("StartTask", "ReassignTask"):
        return kind, {"task_id": task, "agent_id": action[2]}
    if kind == "CompleteTask":
        return kind, {"task_id": task, "cost": action[2]}
    return kind, {"task_id": task, "error": "e", "cost": action[2]}


def run(tenant_limits: dict[str, dict[str, int]], history: list) -> tuple[Platform, list[Any]]:
    """Set each tenant's limits, then play the history on a clock that moves by each step's seconds."""
    platform = Platform()
    at = T0
    for tenant, lim in tenant_limits.items():
        assert not isinstance(platform.handle("CreateTenant", {"name": tenant, "plan": "free"}, tenant, at), (Rejection, QuotaExceeded))
        assert not isinstance(platform.handle("SetTenantQuota", lim, tenant, at), (Rejection, QuotaExceeded))
    decisions = []
    tasks: dict[str, list[str]] = {tenant: [] for tenant in TENANTS}
    for tenant, action, seconds in [*SETUP, *history]:
        at += timedelta(seconds=seconds)
        known = len(tasks[tenant])
        kind, data = payload(action, tasks[tenant])
        decisions.append(platform.handle(kind, data, tenant, at))
        if len(tasks[tenant]) > known and not isinstance(decisions[-1], list):
            tasks[tenant].pop()  # only assigned tasks are picked later
    return platform, decisions


def implied(platform: Platform, tenant: str) -> dict[str, Any]:
    """Usage as the accepted events imply it, recomputed here from the accepted list alone."""
    agents, stored, times = 0, 0, []
    open_tasks: dict[str, list[Any]] = {}  # task -> [agent, reserved, holds a slot]
    spent: dict[str, int] = {}
    clock = 0
    for who, kind, at, events, size in platform.accepted:
        if who != tenant:
            continue
        clock = max(clock, to_ms(at))
        stored += size
        if kind not in quotas.EXEMPT:
            times.append(clock)
        for event in events:
            d = event.data
            if event.type == "AgentCreated":
                agents += 1
            elif event.type == "TaskAssigned":
                open_tasks[d["task_id"]] = [d["agent_id"], d["max_cost"], True]
            elif event.type == "TaskReassigned":
                open_tasks[d["task_id"]][0], open_tasks[d["task_id"]][2] = d["agent_id"], True
            elif event.type == "AgentStopped":
                for held in open_tasks.values():
                    if held[0] == d["agent_id"]:
                        held[2] = False
            elif event.type in ("TaskCompleted", "TaskFailed"):
                open_tasks.pop(d["task_id"])
                spent[month_of(clock)] = spent.get(month_of(clock), 0) + micros(d["cost"])
    return {"agents": agents, "stored": stored, "times": times, "open": open_tasks, "spent": spent, "clock": clock}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tenant_limits=st.fixed_dictionaries({t: limit_sets for t in TENANTS}), history=steps)
def test_random_interleavings_never_pass_a_limit_and_usage_is_what_the_events_imply(tenant_limits, history) -> None:
    platform, decisions = run(tenant_limits, history)
    for decision in decisions:
        if isinstance(decision, QuotaExceeded):
            assert decision.quota in QUOTAS and decision.usage + decision.requested > decision.limit
    for tenant, lim in tenant_limits.items():
        facts = implied(platform, tenant)
        row = platform.row(tenant)
        quota_set_bytes = sum(size for who, kind, _, _, size in platform.accepted if who == tenant and kind in ("SetTenantQuota", "CreateTenant"))
        # never past a limit
        assert facts["agents"] <= lim["max_agents"]
        assert sum(1 for held in facts["open"].values() if held[2]) <= lim["max_concurrent_tasks"]
        assert facts["stored"] - quota_set_bytes <= lim["storage_limit_bytes"]
        times = facts["times"]
        for i, t in enumerate(times):  # every interval of one hour ending at an accepted command
            assert sum(1 for u in times[: i + 1] if u > t - HOUR_MS) <= lim["api_rate_per_hour"]
        month = month_of(facts["clock"])
        reserved = sum(held[1] for held in facts["open"].values())
        assert facts["spent"].get(month, 0) + reserved <= lim["monthly_budget_micros"]
        # the row holds exactly what the events imply
        assert row.agents == facts["agents"] and row.stored_bytes == facts["stored"]
        assert {t: (h.agent_id, h.reserved_micros, h.slot) for t, h in row.tasks.items()} == {t: tuple(v) for t, v in facts["open"].items()}
        assert row.spent_in(facts["clock"]) == facts["spent"].get(month, 0)
        assert row.reserved_micros == reserved and row.concurrent_tasks == sum(1 for held in facts["open"].values() if held[2])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tenant_limits=st.fixed_dictionaries({t: limit_sets for t in TENANTS}), history=steps)
def test_decisions_are_identical_on_replay(tenant_limits, history) -> None:
    first, decisions = run(tenant_limits, history)
    second, again = run(tenant_limits, history)
    assert again == decisions and second.quota == first.quota


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 12),
    gaps=st.lists(st.one_of(st.integers(-30, 900), st.sampled_from([0, 0, 1, 59, 60, 61, 3_540, 3_599, 3_600, 3_601, 3_660])), min_size=1, max_size=200),
)
def test_the_rate_rule_alone(limit, gaps) -> None:
    """Never more than the limit in an hour; a command is refused only when the 61 counted minutes are full."""
    lim = limits(api_rate_per_hour=limit)
    row, at, admitted = QuotaState(), T0, []
    for gap in gaps:
        at += timedelta(seconds=gap)
        now = max(to_ms(at), row.last_at_ms)
        refused = quotas.check(cmd("StartAgent", at=at, agent_id="a"), row, lim, at)
        counted = sum(1 for t in admitted if t // 60_000 > now // 60_000 - 61)
        assert (refused is None) == (counted < limit)
        if refused is None:
            row = quotas.roundtrip(quotas.accept(row, at, []))
            admitted.append(now)
        assert all(sum(1 for u in admitted if t - HOUR_MS < u <= t) <= limit for t in admitted)
        assert len(row.rate) <= 61


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 8),
    storage=st.integers(0, 400),
    steps=st.lists(
        st.tuples(
            # ms to the next command: same minute, minute and hour edges, backwards, across the month's end
            st.one_of(st.integers(-90_000, 90_000), st.sampled_from([0, 1, 59_999, 60_000, 3_600_000, 3_660_000, 2 * 3_600_000, 40 * 86_400_000])),
            st.sampled_from(["StartAgent", "StartAgent", "SetTenantQuota", "CompleteTask"]),
            st.integers(0, 60),
        ),
        min_size=1,
        max_size=120,
    ),
)
def test_a_ledger_kept_for_many_commands_decides_as_a_fresh_row_per_command(limit, storage, steps) -> None:
    """The command handler keeps one ledger per tenant for a batch (its O(1) same-minute rate count
    and cached month end included); every decision and the final row equal those of the immutable
    functions, which build a fresh ledger from the row for each command."""
    lim = limits(api_rate_per_hour=limit, storage_limit_bytes=storage)
    kept, row, at_ms = quotas.QuotaLedger(QuotaState()), QuotaState(), to_ms(T0)
    for gap, kind, size in steps:
        at_ms += gap
        at = datetime.fromtimestamp(at_ms / 1000, UTC)
        data = {"task_id": "k", "cost": 0.25} if kind == "CompleteTask" else {}
        events = [Event("TaskCompleted", data)] if kind == "CompleteTask" else []
        fresh = quotas.admit(cmd(kind, at=at, **data), events, row, lim, at, size)
        assert kept.admit(cmd(kind, at=at, **data), events, lim, to_ms(at), size) == (fresh if isinstance(fresh, QuotaExceeded) else None)
        row = row if isinstance(fresh, QuotaExceeded) else fresh
        assert kept.state() == row
        assert kept.state().usage(at) == row.usage(at)


def test_a_ledgers_limits_follow_its_plan_and_own_limits() -> None:
    """The ledger keeps its effective limits between commands; TenantCreated and TenantQuotaSet change them."""
    ledger = quotas.QuotaLedger(QuotaState())
    assert ledger.limits(PLANS) is ledger.limits(PLANS) == PLANS.plans["free"]
    ledger.apply(Event("TenantCreated", {"name": "Acme", "plan": "pro"}), to_ms(T0))
    assert ledger.limits(PLANS) == PLANS.plans["pro"]
    ledger.apply(Event("TenantQuotaSet", {"max_agents": 7, "api_rate_per_hour": None}), to_ms(T0))
    assert ledger.limits(PLANS) == PLANS.plans["pro"].model_copy(update={"max_agents": 7}) == quotas.limits_of(ledger.state(), PLANS)


def test_a_quota_rejection_carries_quota_limit_and_usage_as_fields() -> None:
    from schemas.messages import CommandRejected, compact_result, expand_result, parse_result

    refused = QuotaExceeded("max_agents", 3, 3)
    result = CommandRejected(command_id="c1", tenant_id="acme", code="QuotaExceeded", message=refused.message, quota=refused.quota, limit=refused.limit, usage=refused.usage)
    assert parse_result(result.model_dump_json().encode()) == result
    assert expand_result(compact_result(result), "c1", "acme", "agent-a4") == result  # a retry is answered with the same fields
    plain = CommandRejected(command_id="c2", tenant_id="acme", code="NotFound", message="no")
    assert compact_result(plain) == ["r", "NotFound", "no", None] and expand_result(compact_result(plain), "c2", "acme", "s") == plain


def test_the_quota_row_is_no_aggregate_stream() -> None:
    from streams.domain import aggregate_for_stream

    assert aggregate_for_stream(quotas.QUOTA_ROW) is None


def test_events_outside_quota_events_change_nothing_but_the_clock():
    """``accept`` skips events not in QUOTA_EVENTS once the clock has rolled: ``apply`` must agree."""
    from schemas import default_registry
    from schemas.registry import _named_types, _namespace, _sample

    registry = default_registry()
    at = datetime(2026, 11, 30, 12, tzinfo=UTC)
    state = quotas.count_command(quotas.QuotaState(agents=2, stored_bytes=10), at)
    for name in registry.names("event"):
        raw = registry.get(name).raw
        event = Event(name, registry.validate(name, _sample(raw, _named_types(raw, _namespace(raw)), _namespace(raw), False, set())).model_dump())
        if name not in quotas.QUOTA_EVENTS:
            assert quotas.apply(state, event, at) == state, name


def test_row_data_is_written_and_read_as_the_dump():
    """The table keeps ``row_data`` (no copy) and orjson writes it: the same JSON as ``dump``, and
    ``load`` reads both the written row and the in-memory one back to the state."""
    import json

    import orjson

    at = datetime(2026, 11, 30, 12, tzinfo=UTC)
    state = quotas.count_command(QuotaState(plan="pro", overrides={"max_agents": 7}, agents=2), at, 120)
    state = quotas.apply(state, Event("TaskAssigned", {"task_id": "t1", "agent_id": "a", "max_cost": 300}), at)
    state = quotas.apply(state, Event("AgentStopped", {"agent_id": "a"}), at)
    assert orjson.loads(orjson.dumps(quotas.row_data(state))) == json.loads(json.dumps(quotas.dump(state)))
    assert quotas.load(orjson.loads(orjson.dumps(quotas.row_data(state)))) == state
    assert quotas.load(quotas.row_data(state)) == state
