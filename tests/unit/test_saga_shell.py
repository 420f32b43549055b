"""The saga shell (streams/saga_agent.py) over in-memory tables: batches in, commands out, ticks.

No broker: the runtime's ``Batch``/``Outputs``/``PartitionTable`` are driven by hand, with
records carrying the real Avro payloads and envelope headers. Redis is not reachable here (port
1), so the view's documents wait, as they do in an outage, and the sagas carry on.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas import default_registry
from schemas.messages import CommandMeta, EventMeta, new_id
from schemas.settings import Settings
from schemas.topics import COMMANDS, PROVISIONING
from schemas.topology import load_topology
from streams import projections as pj
from streams import saga_view
from streams.runtime import AgentContext, Batch, Outputs, PartitionTable
from streams.saga_agent import SagaShell
from streams.sagas import SagaBook

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


class Record:
    """What the processor reads of a confluent-kafka message."""

    def __init__(self, offset: int, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        self._offset, self._value, self._headers = offset, value, headers

    def offset(self) -> int:
        return self._offset

    def partition(self) -> int:
        return 0

    def value(self) -> bytes:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers


class Stream:
    """Events of one tenant as the command handler would write them (versions per stream)."""

    def __init__(self, tenant: str = "acme") -> None:
        self.tenant, self.versions, self.offset = tenant, {}, 0
        self.registry = default_registry()

    def event(self, stream: str, kind: str, data: dict[str, Any], at: datetime, command_id: str = "client") -> Record:
        self.versions[stream] = self.versions.get(stream, 0) + 1
        value, headers = self.registry.encode(kind, data)
        meta = EventMeta(event_id=new_id(), tenant_id=self.tenant, stream_id=stream, version=self.versions[stream], occurred_at=at, command_id=command_id)
        self.offset += 1
        return Record(self.offset, value, headers + meta.to_headers())


@pytest.fixture
def shell() -> SagaShell:
    return _shell(saga_max_reassignments=1, saga_backoff_s=5.0)


def _shell(**settings: Any) -> SagaShell:
    """A shell whose Redis is unreachable; the tests' clock is in the past, so no start horizon by default."""
    values = {"redis_url": "redis://127.0.0.1:1/0", "saga_start_horizon_s": 0, **settings}
    return SagaShell(AgentContext(Settings(**values), load_topology(REPO / "topology.yaml")))


def _run(shell: SagaShell, tables: dict[str, PartitionTable], records: list[Record]) -> Outputs:
    out = Outputs()
    shell.process(Batch("events.platform", 0, records, tables), out)
    for table in tables.values():
        table.commit()
    return out


def _tick(shell: SagaShell, tables: dict[str, PartitionTable], at: datetime) -> Outputs:
    out = Outputs()
    shell.tick(0, tables, out, at.timestamp())
    for table in tables.values():
        table.commit()
    return out


def _commands(out: Outputs) -> list[tuple[str, str, dict[str, Any], CommandMeta]]:
    registry = default_registry()
    found = []
    for topic, key, value, headers, _ in out.records:
        kind, payload = registry.decode(value, headers)
        found.append((topic, kind, payload.model_dump(mode="json"), CommandMeta.from_headers(headers)))
    return found


def _agents(s: Stream, at: datetime) -> list[Record]:
    out = []
    for a in ("a1", "a2"):
        out.append(s.event(f"agent-{a}", "AgentCreated", {"agent_id": a, "name": a, "agent_type": "llm", "region": "eu", "config": {}}, at))
        out.append(s.event(f"agent-{a}", "AgentStarted", {"agent_id": a}, at))
    return out


def test_a_task_nobody_starts_is_reassigned_by_tick_then_compensated(shell):
    tables = {"saga_books": PartitionTable("saga_books", 0)}
    shell.assigned([0], {0: tables})
    s = Stream()
    assigned = s.event("task-k1", "TaskAssigned", {"task_id": "k1", "agent_id": "a1", "task_type": "x", "input": {}, "start_within_s": 10}, T0)
    assert _run(shell, tables, [*_agents(s, T0), assigned]).records == []  # nothing is due yet
    assert _tick(shell, tables, T0 + timedelta(seconds=9)).records == []
    assert not tables["saga_books"].changed
    _tick(shell, tables, T0 + timedelta(seconds=10))  # start deadline: a reassignment is planned
    sent = _commands(_tick(shell, tables, T0 + timedelta(seconds=15)))
    assert [(topic, kind, data["agent_id"]) for topic, kind, data, _ in sent] == [(COMMANDS, "ReassignTask", "a2")]
    assert sent[0][3].command_id == "saga:task:task:k1:reassign:1" and sent[0][3].tenant_id == "acme"
    moved = s.event("task-k1", "TaskReassigned", {"task_id": "k1", "from_agent_id": "a1", "agent_id": "a2", "attempt": 1}, T0 + timedelta(seconds=16))
    _run(shell, tables, [moved])
    sent = _commands(_tick(shell, tables, T0 + timedelta(seconds=26)))  # one reassignment allowed: compensate
    assert [(kind, data["task_id"], data["cost"]) for _, kind, data, _ in sent] == [("FailTask", "k1", 0.0)]
    failed = s.event("task-k1", "TaskFailed", {"task_id": "k1", "agent_id": "a2", "error": "x", "cost": 0.0}, T0 + timedelta(seconds=27), command_id=sent[0][3].command_id)
    _run(shell, tables, [failed])
    book = SagaBook.load(tables["saga_books"].get("acme"))
    assert not book.sagas and book.ended("task:k1") == "compensated" and len(book.deadlines) == 0
    assert _tick(shell, tables, T0 + timedelta(hours=1)).records == []


def test_a_new_owner_fires_what_fell_due_while_nobody_owned_the_partition(shell):
    s = Stream()
    first = {"saga_books": PartitionTable("saga_books", 0)}
    shell.assigned([0], {0: first})
    _run(shell, first, [*_agents(s, T0), s.event("task-k1", "TaskAssigned", {"task_id": "k1", "agent_id": "a1", "task_type": "x", "input": {}, "start_within_s": 10}, T0)])
    row = json.loads(json.dumps(first["saga_books"].get("acme")))  # through the changelog
    owner = _shell(saga_max_reassignments=0)
    restored = {"saga_books": PartitionTable("saga_books", 0, {"acme": row})}
    owner.assigned([0], {0: restored})
    sent = _commands(_tick(owner, restored, T0 + timedelta(minutes=5)))  # long after the deadline
    assert [kind for _, kind, _, _ in sent] == ["FailTask"]


def test_onboarding_sends_preparation_to_the_provisioner_topic(shell):
    tables = {"saga_books": PartitionTable("saga_books", 0)}
    shell.assigned([0], {0: tables})
    s = Stream()
    out = _run(shell, tables, [s.event("tenant", "TenantCreated", {"name": "Acme", "region": "eu", "plan": "pro"}, T0)])
    (topic, kind, data, meta), = _commands(out)
    assert (topic, kind) == (COMMANDS, "SetTenantQuota") and data["max_agents"] == 50
    out = _run(shell, tables, [s.event("tenant", "TenantQuotaSet", dict(data), T0, command_id=meta.command_id)])
    assert [(topic, kind) for topic, kind, _, _ in _commands(out)] == [(PROVISIONING, "PrepareTenant")]


def test_an_aborted_batch_leaves_no_view_document_and_a_committed_one_does(shell, monkeypatch):
    written: list[dict[str, Any]] = []
    monkeypatch.setattr(saga_view, "write", lambda r, docs: written.extend(docs))
    tables = {"saga_books": PartitionTable("saga_books", 0)}
    shell.assigned([0], {0: tables})
    s = Stream()
    assigned = s.event("task-k1", "TaskAssigned", {"task_id": "k1", "agent_id": "a1", "task_type": "x", "input": {}, "start_within_s": 10}, T0)
    shell.process(Batch("events.platform", 0, [assigned], tables), Outputs())
    tables["saga_books"].abort()
    _tick(shell, tables, T0)
    assert written == []
    _run(shell, tables, [assigned])
    _tick(shell, tables, T0)
    assert [(d["saga_id"], d["status"], d["deadlines"][0]["name"]) for d in written] == [("task:k1", "waiting_start", "start")]


def test_a_reassignment_moves_the_open_task_between_agent_summaries():
    def meta(stream: str, version: int) -> EventMeta:
        return EventMeta(event_id="e", tenant_id="acme", stream_id=stream, version=version, occurred_at=T0, command_id="c")

    agents: dict[str, Any] = {}
    tenant = None
    for kind, data, m in [
        ("TaskAssigned", {"task_id": "k1", "agent_id": "a1", "task_type": "x", "input": {}}, meta("task-k1", 1)),
        ("TaskReassigned", {"task_id": "k1", "from_agent_id": "a1", "agent_id": "a2", "attempt": 1}, meta("task-k1", 2)),
        ("TaskFailed", {"task_id": "k1", "agent_id": "a2", "error": "x", "cost": 0.0}, meta("task-k1", 3)),
    ]:
        ids = pj.agent_ids_of(kind, data)
        changed, tenant = pj.apply_to_agents({a: agents.get(a) for a in ids}, tenant, kind, data, m)
        agents.update(changed)
    assert {a: (s["tasks_assigned"], s["open_tasks"], s["tasks_failed"]) for a, s in agents.items()} == {"a1": (1, 0, 0), "a2": (1, 0, 1)}
    assert "TaskReassigned" in pj.PROJECTED_EVENTS


def test_an_old_start_event_starts_no_saga_and_a_recent_one_does():
    shell = _shell(saga_start_horizon_s=3600)
    tables = {"saga_books": PartitionTable("saga_books", 0)}
    shell.assigned([0], {0: tables})
    s = Stream()
    long_ago = datetime.now(UTC) - timedelta(days=2)
    _run(shell, tables, [s.event("tenant", "TenantCreated", {"name": "Acme", "region": "eu", "plan": "pro"}, long_ago)])
    _run(shell, tables, [s.event("task-old", "TaskAssigned", {"task_id": "old", "agent_id": "a1", "task_type": "x", "input": {}}, long_ago)])
    assert not SagaBook.load(tables["saga_books"].get("acme")).sagas
    now = datetime.now(UTC)
    _run(shell, tables, [s.event("task-new", "TaskAssigned", {"task_id": "new", "agent_id": "a1", "task_type": "x", "input": {}}, now)])
    assert list(SagaBook.load(tables["saga_books"].get("acme")).sagas) == ["task:new"]


def test_view_documents_show_changes_and_keep_an_ended_sagas_last_state(shell):
    tables = {"saga_books": PartitionTable("saga_books", 0)}
    shell.assigned([0], {0: tables})
    s = Stream()
    _run(shell, tables, [s.event("task-k1", "TaskAssigned", {"task_id": "k1", "agent_id": "a1", "task_type": "x", "input": {}, "start_within_s": 10}, T0)])
    before = SagaBook.load(tables["saga_books"].get("acme"))
    (doc,) = saga_view.documents("acme", SagaBook(), before, 1.0)
    assert (doc["saga_id"], doc["status"], doc["terminal"], doc["attempts"]["reassignments"]) == ("task:k1", "waiting_start", False, 0)
    assert doc["deadlines"] == [{"name": "start", "due_ms": int(T0.timestamp() * 1000) + 10_000, "attempt": 0}]
    assert saga_view.documents("acme", before, before, 2.0) == []  # nothing changed
    _run(shell, tables, [s.event("task-k1", "TaskCompleted", {"task_id": "k1", "agent_id": "a1", "output": {}, "cost": 0.1}, T0 + timedelta(seconds=3))])
    after = SagaBook.load(tables["saga_books"].get("acme"))
    (ended,) = saga_view.documents("acme", before, after, 3.0)
    assert (ended["status"], ended["terminal"], ended["deadlines"], "_nx" in ended) == ("completed", True, [], False)
    assert ended["history"][0][1] == "assigned to a1" and ended["history"][-1][1] == "ended: completed"
    (restored,) = saga_view.documents("acme", SagaBook(), after, 4.0)  # a new owner knows only that it ended
    assert restored["_nx"] and restored["status"] == "completed"


def test_after_an_aborted_tick_the_deadline_still_fires(shell):
    tables = {"saga_books": PartitionTable("saga_books", 0)}
    shell.assigned([0], {0: tables})
    s = Stream()
    _run(shell, tables, [*_agents(s, T0), s.event("task-k1", "TaskAssigned", {"task_id": "k1", "agent_id": "a1", "task_type": "x", "input": {}, "start_within_s": 10}, T0)])
    _tick(shell, tables, T0 + timedelta(seconds=10))  # start deadline: reassignment planned at +15
    out = Outputs()
    shell.tick(0, tables, out, (T0 + timedelta(seconds=15)).timestamp())
    assert [kind for _, kind, _, _ in _commands(out)] == ["ReassignTask"]
    tables["saga_books"].abort()  # the tick's transaction failed: nothing of it happened
    sent = _commands(_tick(shell, tables, T0 + timedelta(seconds=16)))
    assert [(kind, meta.command_id) for _, kind, _, meta in sent] == [("ReassignTask", "saga:task:task:k1:reassign:1")]
