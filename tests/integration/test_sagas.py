"""Sagas on the real broker: reassignment then compensation on schedule, and many sagas through crashes.

The session worker is stopped for this module: a worker started here with short saga backoffs
(``SAGA_ENV``) is the only member of the groups, so its deadlines are the ones audited. Every
check reads the topics ``read_committed``: the commands the sagas sent, the events they caused
and the last saga book of each tenant in the ``saga_books`` changelog.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any, Iterator

import pytest
from aiokafka import AIOKafkaProducer

from connectors.kafka_config import aiokafka_config
from connectors.redis_store import redis_client
from schemas import default_registry
from schemas.messages import CommandMeta, EventMeta
from schemas.settings import Settings
from schemas.topics import COMMANDS, EVENTS
from streams import saga_view
from streams.provisioner_agent import record_key
from streams.queries import get_agent_summary
from streams.runtime import changelog_topic
from streams.supervisor import WorkerProcess
from tests.helpers import headers_of, read_topic, run_cli, tenant

pytestmark = pytest.mark.integration

MAX_REASSIGNMENTS = 2
BACKOFF_S = 1.0
SAGA_ENV = {
    "AGENTSTREAM_SAGA_MAX_REASSIGNMENTS": str(MAX_REASSIGNMENTS),
    "AGENTSTREAM_SAGA_BACKOFF_S": str(BACKOFF_S),
    "AGENTSTREAM_SAGA_MAX_RETRIES": "0",
}
#: How many concurrent sagas the crash test runs (raise it with the environment variable).
SAGAS = int(os.environ.get("AGENTSTREAM_SAGA_TEST_COUNT", "1000"))


def backoff_ms(n: int) -> int:
    """The policy's n-th wait (TaskPolicy with ``BACKOFF_S``)."""
    return int(min(300.0, BACKOFF_S * 2.0**n) * 1000)


@pytest.fixture(scope="module")
def saga_worker(worker: WorkerProcess, applied: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """The module's only worker (all agents, short saga backoffs); the session worker comes back afterwards."""
    worker.stop()
    env = {**SAGA_ENV, "AGENTSTREAM_WEB_PORT": str(applied.web_port + 31), "AGENTSTREAM_WORKER_ID": "sagas-1"}
    proc = WorkerProcess(tmp_path_factory.mktemp("sagas") / "saga-worker.log", env=env, restart=False).start()
    try:
        yield proc
    finally:
        proc.stop()
        worker.start()


async def _send(settings: Settings, commands: list[tuple[str, str, dict[str, Any], str]]) -> None:
    """Produce (tenant, type, payload, command id) in order, keyed by tenant."""
    registry = default_registry()
    producer = AIOKafkaProducer(**aiokafka_config(settings), acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        for t, kind, data, cid in commands:
            value, headers = registry.encode(kind, data)
            await producer.send(COMMANDS, key=t.encode(), value=value, headers=headers + CommandMeta(command_id=cid, tenant_id=t).to_headers())
        await producer.flush()
    finally:
        await producer.stop()


def _setup(t: str, agents: list[str]) -> list[tuple[str, str, dict[str, Any], str]]:
    out = [(t, "CreateTenant", {"name": t, "region": "eu-west-1", "plan": "enterprise"}, f"{t}-create")]
    for a in agents:
        out.append((t, "CreateAgent", {"agent_id": a, "name": a, "agent_type": "llm", "region": "eu-west-1"}, f"{t}-create-{a}"))
        out.append((t, "StartAgent", {"agent_id": a}, f"{t}-start-{a}"))
    return out


def _assign(t: str, task: str, agent: str, within: int) -> tuple[str, str, dict[str, Any], str]:
    return (t, "AssignTask", {"task_id": task, "agent_id": agent, "task_type": "summarise", "input": {}, "start_within_s": within}, f"{t}-assign-{task}")


def _saga_commands(settings: Settings, tenants: set[str]) -> list[tuple[dict[str, str], str, dict[str, Any]]]:
    """(headers, type, payload) of every command the sagas sent for ``tenants``, in partition order."""
    registry = default_registry()
    out = []
    for record in read_topic(settings, COMMANDS):
        h = headers_of(record)
        if h.get("agentstream.tenant_id") in tenants and (h.get("agentstream.principal") or "").startswith("saga:"):
            kind, payload = registry.decode(record.value, list(record.headers))
            out.append((h, kind, payload.model_dump(mode="json")))
    return out


def _events(settings: Settings, tenants: set[str]) -> list[tuple[str, dict[str, Any], EventMeta]]:
    registry = default_registry()
    out = []
    for record in read_topic(settings, EVENTS):
        h = headers_of(record)
        if h.get("agentstream.tenant_id") in tenants:
            kind, payload = registry.decode(record.value, list(record.headers))
            out.append((kind, payload.model_dump(mode="json"), EventMeta.from_headers(list(record.headers))))
    return out


def _books(settings: Settings, tenants: set[str]) -> dict[str, dict[str, Any]]:
    """The last committed saga book of each of ``tenants`` (from the table's changelog)."""
    books: dict[str, dict[str, Any]] = {}
    for record in read_topic(settings, changelog_topic(settings.app_id, "saga_books")):
        key = record.key.decode()
        if key in tenants:
            books[key] = json.loads(record.value) if record.value is not None else {}
    return books


def _wait(what, timeout: float, step: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(step)
    return bool(what())


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def test_a_task_nobody_starts_is_reassigned_then_compensated_on_schedule(saga_worker, applied):
    t = tenant()
    agents = ["a1", "a2", "a3"]
    within = 2
    commands = _setup(t, agents) + [
        _assign(t, "idle", "a1", within),
        _assign(t, "done", "a1", within),
        (t, "StartTask", {"task_id": "done", "agent_id": "a1"}, f"{t}-start-done"),
        (t, "CompleteTask", {"task_id": "done", "cost": 0.5, "output": {}}, f"{t}-complete-done"),
    ]
    asyncio.run(_send(applied, commands))
    r = redis_client(applied)

    def ended() -> bool:
        return all(r.get(saga_view.doc_key(t, s)) and json.loads(r.get(saga_view.doc_key(t, s)))["terminal"] for s in ("task:idle", "task:done", f"onboarding:{t}"))

    assert _wait(ended, 120), f"sagas did not end: {saga_view.list_sagas(r, t)}\n{saga_worker.log_tail()}"

    sent = _saga_commands(applied, {t})
    about_idle = [(h, kind, data) for h, kind, data in sent if data.get("task_id") == "idle"]
    kinds = [(kind, data.get("agent_id"), data.get("attempt")) for _, kind, data in about_idle]
    # Two reassignments (to the other running agents, in id order), then one compensation.
    assert kinds[:3] == [("ReassignTask", "a2", 1), ("ReassignTask", "a3", 2), ("FailTask", None, None)], kinds
    assert all(kind == "FailTask" for kind, *_ in kinds[3:])  # a resend only if the answer was slow
    ids = [h["agentstream.command_id"] for h, *_ in sent]
    assert len(ids) == len(set(ids))  # no command twice
    assert not [data for *_, data in sent if data.get("task_id") == "done"]  # a started task is left alone

    events = _events(applied, {t})
    idle = [(kind, data, meta) for kind, data, meta in events if data.get("task_id") == "idle"]
    assert [kind for kind, *_ in idle] == ["TaskAssigned", "TaskReassigned", "TaskReassigned", "TaskFailed"]
    assert "not started" in idle[-1][1]["error"] and idle[-1][1]["agent_id"] == "a3"
    # On schedule, never early: start deadline + backoff before each reassignment, start time before compensating.
    assigned_ms = idle[0][2].occurred_at.timestamp() * 1000
    reassigned_ms = [meta.occurred_at.timestamp() * 1000 for kind, _, meta in idle if kind == "TaskReassigned"]
    issued = [_ms(h["agentstream.issued_at"]) for h, *_ in about_idle[:3]]
    assert issued[0] >= assigned_ms + within * 1000 + backoff_ms(0)
    assert issued[1] >= reassigned_ms[0] + within * 1000 + backoff_ms(1)
    assert issued[2] >= reassigned_ms[1] + within * 1000

    # The read models moved the open task with each reassignment and closed it on the failure.
    summaries = {a: get_agent_summary(r, t, a) for a in agents}
    assert {a: (s.tasks_assigned, s.open_tasks, s.tasks_failed) for a, s in summaries.items()} == {"a1": (2, 0, 0), "a2": (1, 0, 0), "a3": (1, 0, 1)}

    # Onboarding ran to the end: quota, the provisioner's preparation, ready.
    tenant_events = [kind for kind, _, meta in events if meta.stream_id == "tenant"]
    assert tenant_events == ["TenantCreated", "TenantQuotaSet", "TenantPrepared", "TenantReady"], tenant_events
    assert r.hgetall(record_key(t))["plan"] == "enterprise"

    # The CLI shows them.
    shown = run_cli("sagas", "show", "task:idle", "--tenant", t, "--json", env={"AGENTSTREAM_REDIS_URL": applied.redis_url.get_secret_value()})
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["status"] == "compensated" and doc["attempts"]["reassignments"] == 2
    listed = run_cli("sagas", "list", "--tenant", t, "--state", "completed", "--json")
    assert [d["saga_id"] for d in json.loads(listed.stdout)] == ["task:done"]
    assert run_cli("sagas", "show", "task:nothing", "--tenant", t).returncode == 1


def test_many_sagas_through_two_sigkills_end_once_with_no_duplicate_and_no_lost_deadline(saga_worker, applied):
    rng = random.Random(9)
    tenants = [tenant() for _ in range(max(4, SAGAS // 250))]  # a book remembers 1,000 ended sagas
    agents = ["a1", "a2", "a3"]
    setup = [c for t in tenants for c in _setup(t, agents)]
    plan: dict[tuple[str, str], str] = {}
    load = []
    for n in range(SAGAS):
        t, task = tenants[n % len(tenants)], f"k{n}"
        roll = rng.random()
        load.append(_assign(t, task, agents[n % 3], rng.randint(3, 12)))
        if roll < 0.25:
            plan[(t, task)] = "completed"
            load += [(t, "StartTask", {"task_id": task, "agent_id": agents[n % 3]}, f"{t}-start-{task}"), (t, "CompleteTask", {"task_id": task, "cost": 0.1, "output": {}}, f"{t}-end-{task}")]
        elif roll < 0.35:
            plan[(t, task)] = "failed"
            load += [(t, "StartTask", {"task_id": task, "agent_id": agents[n % 3]}, f"{t}-start-{task}"), (t, "FailTask", {"task_id": task, "error": "boom", "cost": 0.0}, f"{t}-end-{task}")]
        else:
            plan[(t, task)] = "compensated"
    asyncio.run(_send(applied, setup + load))
    r = redis_client(applied)

    def terminal() -> int:
        return sum(1 for t in tenants for d in saga_view.list_sagas(r, t, limit=10**6) if d["terminal"] and d["type"] == "task")

    # Two crashes while deadlines are pending and falling due; each time nobody owns the
    # partitions for a few seconds, so deadlines fall due unowned.
    for pause in (8, 12):
        time.sleep(pause)
        saga_worker.kill()
        time.sleep(4)
        saga_worker.start()
    finished = _wait(lambda: terminal() >= SAGAS, 300, step=3)
    assert finished, f"{terminal()} of {SAGAS} sagas ended\n{saga_worker.log_tail()}"

    # Exactly one terminal state per saga, the planned one, from the last committed books.
    books = _books(applied, set(tenants))
    assert all(not any(sid.startswith("task:") for sid in book["sagas"]) for book in books.values())
    ended = Counter((t, sid) for t, book in books.items() for sid, _ in book["finished"] if sid.startswith("task:"))
    assert set(ended.values()) == {1} and len(ended) == SAGAS
    statuses = {(t, sid.removeprefix("task:")): status for t, book in books.items() for sid, status in book["finished"] if sid.startswith("task:")}
    assert statuses == plan, Counter((plan[k], v) for k, v in statuses.items() if plan[k] != v)

    # No command twice; each planned reassignment and one compensation per unstarted task.
    sent = _saga_commands(applied, set(tenants))
    ids = Counter(h["agentstream.command_id"] for h, *_ in sent)
    assert set(ids.values()) == {1}, [i for i, n in ids.items() if n > 1][:5]
    per_task: dict[tuple[str, str], list[tuple[str, int | None]]] = defaultdict(list)
    for h, kind, data in sent:
        if h["agentstream.principal"].startswith("saga:task:"):  # the onboardings' commands are the others
            per_task[(h["agentstream.tenant_id"], data["task_id"])].append((kind, data.get("attempt")))
    assert len(per_task) == sum(1 for outcome in plan.values() if outcome == "compensated")
    for key, outcome in plan.items():
        if outcome == "compensated":
            got = per_task[key]
            assert got[:MAX_REASSIGNMENTS + 1] == [*(("ReassignTask", n) for n in range(1, MAX_REASSIGNMENTS + 1)), ("FailTask", None)], (key, got)
        else:
            assert not per_task[key], (key, per_task[key])

    # No compensation ran twice: one ending event per task, and the compensated ones failed by the saga.
    ends: Counter = Counter()
    reasons: dict[tuple[str, str], str] = {}
    for kind, data, meta in _events(applied, set(tenants)):
        if kind in ("TaskCompleted", "TaskFailed"):
            ends[(meta.tenant_id, data["task_id"])] += 1
            reasons[(meta.tenant_id, data["task_id"])] = meta.command_id
    assert set(ends) == set(plan) and set(ends.values()) == {1}
    assert all(reasons[k].startswith("saga:task:") == (v == "compensated") for k, v in plan.items())
