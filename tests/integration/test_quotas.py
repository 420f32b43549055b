"""Quotas, metering and billing on the real broker, under worker and sink SIGKILLs and client retries.

120 tenants with low limits; several producers send each tenant's commands concurrently (so the
commands that race for a tenant's last agent, slot or budget come from different clients); a
second worker is SIGKILLed mid-run and restarted, and the ClickHouse sink is SIGKILLed twice.
Everything is then read back ``read_committed`` and checked against the limits and against each
other - never against the handler's own counters:

- from ``events.platform``: agents <= max_agents, peak concurrent tasks <= max_concurrent_tasks,
  spent <= budget and spent + reserved <= budget at every event, for every tenant; every command
  message answered once; the quota rejections carry quota, limit and usage;
- ``billing.usage`` holds exactly the usage records the events imply (one per key);
- the ClickHouse usage table equals ``billing.usage``;
- each tenant's invoice total equals the sum of its TaskCompleted and TaskFailed costs, its
  ``task_cost`` line the sum of its TaskCompleted costs, to the micro-unit.

And isolation: every command type sent with another tenant's stream or id is refused (or, for a
creation, creates the sender's own stream) and changes nothing of the other tenant.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from connectors.kafka_config import aiokafka_config
from schemas import default_registry
from schemas.billing import UsageRecord
from schemas.messages import CommandAccepted, CommandMeta, CommandRejected, EventMeta, parse_result
from schemas.topology import load_topology
from sinks.query_client import QueryClient
from streams.client import CommandClient
from streams.domain.quotas import micros, to_ms
from streams.supervisor import WorkerProcess
from streams.tenant_admin import read_invoice
from tests.helpers import headers_of, read_topic, run_cli, tenant

pytestmark = pytest.mark.integration

TENANTS = 120
PRODUCERS = 3
TASKS = 6  # per producer and tenant
RATE = 150.0  # messages per second per producer: the load lasts long enough to crash things in it
LIMITS = {"max_agents": 2, "max_concurrent_tasks": 2, "monthly_budget_micros": 450_000, "task_max_cost_micros": 100_000}


# --- the workload -----------------------------------------------------------------------------


def _created(tenants: list[str]) -> list[tuple[str, str, dict, str]]:
    return [(t, "CreateTenant", {"name": t.upper(), "plan": "free"}, f"{t}-create") for t in tenants]


def _limited(tenants: list[str]) -> list[tuple[str, str, dict, str]]:
    return [(t, "SetTenantQuota", dict(LIMITS), f"{t}-limits") for t in tenants]


def _wait_onboarded(settings, tenants: set[str], timeout: float = 180) -> None:
    """Wait until the onboarding saga has made every tenant ready: it sets the plan's defaults as
    the tenant's own limits first, so a test's own limits must come after it."""
    deadline = time.monotonic() + timeout
    while True:
        ready = {headers_of(r)["agentstream.tenant_id"] for r in read_topic(settings, "events.platform")
                 if headers_of(r).get("agentstream.schema") == "TenantReady" and headers_of(r).get("agentstream.tenant_id") in tenants}
        if ready >= tenants:
            return
        assert time.monotonic() < deadline, f"{len(tenants - ready)} tenants not onboarded"
        time.sleep(2)


def _load(rng: random.Random, tenants: list[str], producer: int) -> list[tuple[str, str, dict, str]]:
    """One producer's commands: per tenant two agents of its own (only two of the tenant's six
    fit), tasks on them with ends whose costs sometimes pass the reservation, and a stop."""
    per_tenant: dict[str, list[tuple[str, dict]]] = {}
    for t in tenants:
        agents = [f"a{producer}x", f"a{producer}y"]
        steps: list[tuple[str, dict]] = [("CreateAgent", {"agent_id": a, "name": a, "agent_type": "llm"}) for a in agents]
        steps += [("StartAgent", {"agent_id": a}) for a in agents]
        for pair in range(0, TASKS, 2):  # two tasks at once per producer: more than the tenant's slots
            tasks = [f"k{producer}-{i}" for i in (pair, pair + 1)]
            steps += [("AssignTask", {"task_id": task, "agent_id": rng.choice(agents), "task_type": "summarise"}) for task in tasks]
            for task in tasks:
                if rng.random() < 0.8:
                    steps.append(("CompleteTask", {"task_id": task, "cost": round(rng.uniform(0.01, 0.15), 6), "output": {"tokens": str(rng.randint(1, 5000))}}))
                else:
                    steps.append(("FailTask", {"task_id": task, "error": "timeout", "cost": 0.02}))
        steps.append(("StopAgent", {"agent_id": agents[0]}))
        per_tenant[t] = steps
    out = []
    for n in range(max(map(len, per_tenant.values()))):  # interleaved across tenants, as real traffic is
        for t in tenants:
            if n < len(per_tenant[t]):
                kind, data = per_tenant[t][n]
                out.append((t, kind, data, f"{t}-p{producer}-{n}"))
    return out


async def _produce(settings, commands: list[tuple[str, str, dict, str]], rng: random.Random, rate: float | None = None) -> int:
    """Send every command (at ``rate`` a second), re-sending about 3% (a client retry: the same id
    again); returns the messages sent."""
    registry = default_registry()
    producer = AIOKafkaProducer(**aiokafka_config(settings), acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    sent = 0
    started = time.monotonic()
    try:
        for n, (t, kind, data, cid) in enumerate(commands):
            ahead = 0.0 if rate is None else n / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
            value, headers = registry.encode(kind, data)
            headers += CommandMeta(command_id=cid, tenant_id=t).to_headers()
            for _ in range(2 if rng.random() < 0.03 else 1):
                await producer.send("commands.platform", key=t.encode(), value=value, headers=headers)
                sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def _answers(settings, ids: set[str]) -> dict[str, list]:
    found: dict[str, list] = defaultdict(list)
    for record in read_topic(settings, "results.commands"):
        cid = record.key.decode()
        if cid in ids:
            found[cid].append(parse_result(record.value))
    return found


def _wait_answered(settings, ids: set[str], timeout: float) -> dict[str, list]:
    deadline = time.monotonic() + timeout
    while True:
        found = _answers(settings, ids)
        if set(found) >= ids or time.monotonic() > deadline:
            return found
        time.sleep(2)


# --- reading back -----------------------------------------------------------------------------


def _events(settings, tenants: set[str]) -> dict[str, list[tuple[str, dict, Any]]]:
    """Per tenant, its events in order: (type, payload, record)."""
    registry = default_registry()
    out: dict[str, list] = defaultdict(list)
    for record in read_topic(settings, "events.platform"):
        h = headers_of(record)
        if h.get("agentstream.tenant_id") in tenants:
            name, payload = registry.decode(record.value, record.headers)
            out[h["agentstream.tenant_id"]].append((name, payload.model_dump(), record))
    return out


def _audit_limits(t: str, events: list[tuple[str, dict, Any]]) -> list[str]:
    """Replays the tenant's events as a ledger (independently of the quota core) and reports any limit passed."""
    problems = []
    agents = sum(1 for name, *_ in events if name == "AgentCreated")
    if agents > LIMITS["max_agents"]:
        problems.append(f"{t}: {agents} agents")
    holds: dict[str, tuple[str, int, bool]] = {}  # task -> (agent, reserved, holds a slot)
    spent = peak = 0
    for name, data, _ in events:
        if name == "TaskAssigned":
            holds[data["task_id"]] = (data["agent_id"], int(data["max_cost"]), True)
        elif name in ("TaskCompleted", "TaskFailed"):
            holds.pop(data["task_id"], None)
            spent += micros(data["cost"])
        elif name == "AgentStopped":
            holds = {k: (a, r, s and a != data["agent_id"]) for k, (a, r, s) in holds.items()}
        elif name == "TaskReassigned" and data["task_id"] in holds:  # the task saga moved it: it holds a slot again
            holds[data["task_id"]] = (data["agent_id"], holds[data["task_id"]][1], True)
        slots = sum(1 for *_, s in holds.values() if s)
        peak = max(peak, slots)
        if spent + sum(r for _, r, _ in holds.values()) > LIMITS["monthly_budget_micros"]:
            problems.append(f"{t}: spent {spent} + reserved passes the budget after {name}")
    if peak > LIMITS["max_concurrent_tasks"]:
        problems.append(f"{t}: {peak} tasks at once")
    return problems


def _expected_usage(events: list[tuple[str, dict, Any]]) -> dict[str, int]:
    """The usage records the tenant's events imply: key -> quantity (see streams/billing.py)."""
    out: dict[str, int] = {}
    started: dict[str, int] = {}
    for name, data, record in events:
        h = headers_of(record)
        event_id = h["agentstream.event_id"]
        out[f"{event_id}:storage"] = len(record.value)
        if name == "TaskCompleted":
            out[f"{event_id}:task_cost"] = micros(data["cost"])
            out[f"{event_id}:tokens"] = int(data["output"]["tokens"])
        elif name == "TaskFailed":
            out[f"{event_id}:failed_task_cost"] = micros(data["cost"])
        elif name == "AgentStarted":
            started[data["agent_id"]] = to_ms(EventMeta.from_headers(record.headers).occurred_at)
        elif name == "AgentStopped" and data["agent_id"] in started:
            out[f"{event_id}:agent_runtime"] = to_ms(EventMeta.from_headers(record.headers).occurred_at) - started.pop(data["agent_id"])
    return out


def _usage_topic(settings, tenants: set[str]) -> list[UsageRecord]:
    return [r for r in (UsageRecord.model_validate_json(m.value) for m in read_topic(settings, "billing.usage")) if r.tenant in tenants]


def _usage_table(queries: QueryClient, tenants: set[str]) -> list[tuple[str, int]]:
    names = ",".join(f"'{t}'" for t in sorted(tenants))  # test-generated ids, not user input
    table = queries.sql_table(f"SELECT key, quantity FROM agentstream.billing_usage WHERE tenant IN ({names})")
    return list(zip(table.column("key").to_pylist(), table.column("quantity").to_pylist()))


def _start_sink(tmp: Path, env: dict[str, str]) -> WorkerProcess:
    return WorkerProcess(tmp / "sink.log", env=env, args=["sink", "--max-delay", "0.5"]).start()


# --- the test ---------------------------------------------------------------------------------


def test_limits_hold_and_billing_is_exact_under_crashes_and_retries(worker, applied, tmp_path: Path):
    tenants = [tenant() for _ in range(TENANTS)]
    wanted = set(tenants)
    env = {"AGENTSTREAM_CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}"}  # the sink's own chdb path
    sink = _start_sink(tmp_path, env)
    for setup in (_created(tenants), _limited(tenants)):
        asyncio.run(_produce(applied, setup, random.Random(0)))
        answered = _wait_answered(applied, {cid for *_, cid in setup}, timeout=120)
        assert all(isinstance(a[0], CommandAccepted) for a in answered.values()) and len(answered) == len(setup)
        if setup[0][1] == "CreateTenant":
            _wait_onboarded(applied, wanted)

    loads = [_load(random.Random(p), tenants, p) for p in range(PRODUCERS)]
    ids = {cid for load in loads for *_, cid in load}
    sent: list[int] = []

    async def produce_concurrently() -> None:
        sent.extend(await asyncio.gather(*(_produce(applied, load, random.Random(100 + p), RATE) for p, load in enumerate(loads))))

    victim_env = {"AGENTSTREAM_WEB_PORT": str(applied.web_port + 1)}  # a second worker: it takes half the partitions
    victim = WorkerProcess(tmp_path / "victim.log", env=victim_env).start()
    restarted: WorkerProcess | None = None
    try:
        time.sleep(12)  # let it join the groups and take partitions before the load starts
        loader = threading.Thread(target=lambda: asyncio.run(produce_concurrently()), daemon=True)
        loader.start()
        load_s = len(loads[0]) / RATE
        time.sleep(load_s * 0.2)
        sink.kill()  # SIGKILL the sink while it loads the usage...
        sink = _start_sink(tmp_path, env)
        time.sleep(load_s * 0.2)
        victim.kill()  # ...and the worker mid-run: its open transactions are aborted, its batches redone
        restarted = WorkerProcess(tmp_path / "victim.log", env=victim_env).start()
        time.sleep(load_s * 0.3)
        sink.kill()
        sink = _start_sink(tmp_path, env)
        loader.join()
        answers = _wait_answered(applied, ids, timeout=180)
        assert set(answers) == ids, f"{len(ids - set(answers))} commands unanswered\n{victim.log_tail()}"
        assert sum(map(len, answers.values())) == sum(sent)  # one answer per message, retries included
        rejected = [a[0] for a in answers.values() if isinstance(a[0], CommandRejected)]
        quota_hits = Counter(r.quota for r in rejected if r.code == "QuotaExceeded")
        assert set(quota_hits) >= {"max_agents", "max_concurrent_tasks", "monthly_budget_micros"}, quota_hits
        assert all(r.limit is not None and r.usage is not None for r in rejected if r.code == "QuotaExceeded")

        # Limits, from the event store read_committed (not from any handler's counter).
        events = _events(applied, wanted)
        problems = [p for t in tenants for p in _audit_limits(t, events[t])]
        assert not problems, problems[:20]
        assert sum(1 for t in tenants for name, *_ in events[t] if name == "TaskCompleted") > TENANTS  # the load did run

        # Metering: billing.usage holds exactly what the events imply, once per key.
        expected = {k: q for t in tenants for k, q in _expected_usage(events[t]).items()}
        records = _usage_topic(applied, wanted)
        assert Counter(r.key for r in records).most_common(1)[0][1] == 1
        assert {r.key: r.quantity for r in records} == expected

        # The usage table (loaded by the SIGKILLed sinks) equals the topic.
        queries = QueryClient(applied)
        deadline = time.monotonic() + 120
        while True:
            try:
                rows = _usage_table(queries, wanted)
            except Exception:  # noqa: BLE001 - the sink is (re)starting
                rows = []
            if len(rows) >= len(expected) or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert Counter(k for k, _ in rows).most_common(1)[0][1] == 1, "a usage record is in ClickHouse twice"
        assert dict(rows) == expected, f"{len(rows)} rows in ClickHouse, {len(expected)} records\n{sink.log_tail()}"

        # Invoices: the total of each tenant's month is its task costs, to the micro-unit.
        topology = load_topology(applied.topology_path)
        for t in tenants:
            per_month: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for name, data, record in events[t]:
                month = headers_of(record)["agentstream.occurred_at"][:7]
                if name in ("TaskCompleted", "TaskFailed"):
                    per_month[month][0] += micros(data["cost"])
                if name == "TaskCompleted":
                    per_month[month][1] += micros(data["cost"])
            for month, (total, completed) in per_month.items():
                bill = read_invoice(queries, topology, t, month)
                assert bill.total_micros == total, (t, month)
                assert sum(line.amount_micros for line in bill.lines if line.metric == "task_cost") == completed, (t, month)

        # The CLI shows the same: an invoice as JSON and CSV, usage against the limits.
        t = tenants[0]
        month = headers_of(events[t][0][2])["agentstream.occurred_at"][:7]
        shown = run_cli("billing", "invoice", "--tenant", t, "--month", month, "--format", "json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["total_micros"] == read_invoice(queries, topology, t, month).total_micros
        as_csv = run_cli("billing", "invoice", "--tenant", t, "--month", month, "--format", "csv")
        assert as_csv.returncode == 0 and as_csv.stdout.splitlines()[-1].endswith(f",{json.loads(shown.stdout)['total_micros']}")
        usage = run_cli("tenants", "usage", "--tenant", t, "--json")
        assert usage.returncode == 0, usage.stderr
        rows = {r["quota"]: r for r in json.loads(usage.stdout)["tenants"][t]}
        agents = sum(1 for name, *_ in events[t] if name == "AgentCreated")
        assert rows["max_agents"] == {"quota": "max_agents", "usage": agents, "limit": 2, "percent": 50.0 * agents}
    finally:
        victim.kill()
        if restarted is not None:
            restarted.stop()
        sink.stop()


def test_tenants_cli_sets_quotas_and_shows_them(worker, applied):
    t = tenant()
    assert run_cli("tenants", "quota", "set", "--tenant", t).returncode == 2  # no limit given
    created = run_cli("send", "CreateTenant", "--tenant", t, "--data", json.dumps({"name": "Cli Co", "plan": "pro"}))
    assert created.returncode == 0, created.stderr
    _wait_onboarded(applied, {t})  # the onboarding saga sets the plan's defaults first
    set_ = run_cli("tenants", "quota", "set", "--tenant", t, "--max-agents", "1", "--monthly-budget-micros", "2000000")
    assert set_.returncode == 0 and "accepted" in set_.stdout, set_.stderr
    assert run_cli("send", "CreateAgent", "--tenant", t, "--data", json.dumps({"agent_id": "a1", "name": "A", "agent_type": "llm"})).returncode == 0
    refused = run_cli("send", "CreateAgent", "--tenant", t, "--data", json.dumps({"agent_id": "a2", "name": "B", "agent_type": "llm"}))
    assert refused.returncode == 1 and "QuotaExceeded" in refused.stdout
    shown = json.loads(run_cli("tenants", "show", t, "--json").stdout)
    assert shown["plan"] == "pro" and {"max_agents": 1, "monthly_budget_micros": 2_000_000}.items() <= shown["overrides"].items()
    assert {r["quota"]: (r["usage"], r["limit"]) for r in shown["usage"]}["max_agents"] == (1, 1)
    listed = json.loads(run_cli("tenants", "list", "--json").stdout)
    assert {"tenant": t, "name": "Cli Co", "plan": "pro", "onboarding": "ready", "agents": 1}.items() <= next(r for r in listed if r["tenant"] == t).items()
    table = run_cli("tenants", "usage", "--tenant", t)
    assert table.returncode == 0 and "max_agents" in table.stdout and "monthly_budget_micros" in table.stdout
    assert run_cli("tenants", "show", tenant()).returncode == 1  # unknown tenant
    assert run_cli("billing", "invoice", "--tenant", t, "--month", "2026-1").returncode == 2


# --- isolation --------------------------------------------------------------------------------


def test_every_command_with_another_tenants_ids_is_refused_and_changes_nothing(worker, applied):
    owner, intruder = tenant(), tenant()

    async def run() -> tuple[list, list]:
        async with CommandClient(applied) as client:
            async def send(t: str, kind: str, data: dict, **kw: Any) -> Any:
                return await client.send(kind, t, data, timeout=60, **kw)

            for kind, data in [
                ("CreateTenant", {"name": "Owner"}), ("CreateAgent", {"agent_id": "a1", "name": "A", "agent_type": "llm"}),
                ("StartAgent", {"agent_id": "a1"}), ("AssignTask", {"task_id": "k1", "agent_id": "a1", "task_type": "x"}),
                ("AssignTask", {"task_id": "k2", "agent_id": "a1", "task_type": "x"}), ("StartTask", {"task_id": "k2", "agent_id": "a1"}),
                ("GrantAccess", {"principal": "alice", "role": "admin"}),
            ]:
                assert isinstance(await send(owner, kind, data), CommandAccepted), kind
            await asyncio.to_thread(_wait_onboarded, applied, {owner})  # the saga's steps are done before we look
            before = [e.meta.version for e in await _store_events(owner)]
            foreign = [
                ("ConfigureAgent", {"agent_id": "a1", "config": {"x": "y"}}, None),
                ("StartAgent", {"agent_id": "a1"}, None),
                ("StopAgent", {"agent_id": "a1"}, None),
                ("AssignTask", {"task_id": "k9", "agent_id": "a1", "task_type": "x"}, None),  # the owner's agent
                ("StartTask", {"task_id": "k1", "agent_id": "a1"}, None),
                ("ReassignTask", {"task_id": "k1", "agent_id": "a1"}, None),
                ("CompleteTask", {"task_id": "k1", "cost": 0.5}, None),
                ("FailTask", {"task_id": "k2", "error": "x", "cost": 0.5}, None),
                ("ConfigureTenant", {"settings": {"x": "y"}}, None),
                ("SetTenantQuota", {"max_agents": 100}, None),
                ("UpdateSecurityPolicy", {"policy_id": "p", "rules": {"a": "b"}}, None),
                ("GrantAccess", {"principal": "mallory", "role": "admin"}, None),
                ("RevokeAccess", {"principal": "alice", "role": "admin"}, None),
                ("RecordTenantPreparation", {"succeeded": True}, None),
                ("CompleteTenantOnboarding", {}, None),
                ("FailTenantOnboarding", {"reason": "x"}, None),
                ("AppendEvents", {"stream_id": "agent-a1", "events": [{"type": "AgentConfigured", "data_json": json.dumps({"agent_id": "a1", "config": {}})}]}, 3),
            ]
            refused = [(kind, await send(intruder, kind, data, expected_version=ev)) for kind, data, ev in foreign]
            # A creation names the intruder's own stream: its a1 is its own and cannot reach the owner's.
            own = await send(intruder, "CreateAgent", {"agent_id": "a1", "name": "Mine", "agent_type": "llm"})
            after = [e.meta.version for e in await _store_events(owner)]
            return refused, [before, after, own]

    async def _store_events(t: str) -> list:
        from streams.event_store import EventStore

        store = EventStore(applied, use_archive=False)
        out = []
        for stream in ("tenant", "agent-a1", "task-k1", "task-k2"):
            out += await store.get_events(t, stream)
        return out

    refused, (before, after, own) = asyncio.run(run())
    not_refused = [(kind, r) for kind, r in refused if not isinstance(r, CommandRejected)]
    assert not not_refused, not_refused
    assert {kind for kind, _ in refused} >= {"ConfigureAgent", "AssignTask", "CompleteTask", "SetTenantQuota", "AppendEvents"}
    assert before == after and len(before) >= 7  # the owner's streams did not move
    assert isinstance(own, CommandAccepted) and own.tenant_id != owner and own.new_version == 1
