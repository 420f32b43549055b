"""Exactly once under crashes: SIGKILL a worker mid-stream, restart it, audit the event store."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from typing import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer

from connectors.kafka_config import aiokafka_config
from schemas import default_registry
from streams.client import CommandClient
from schemas.messages import CommandAccepted, CommandMeta, parse_result
from streams.supervisor import WorkerProcess
from tests.helpers import headers_of, produce_task_events, read_topic, tenant

pytestmark = pytest.mark.integration

TENANTS = 12
CONFIGURES = 250  # per tenant: 12 x (1 create + 250 configures) = 3,012 commands


def _commands(tenants: list[str]) -> list[tuple[str, str, dict, str]]:
    """(tenant, type, payload, command id), interleaved across tenants as real traffic is."""
    out = [(t, "CreateAgent", {"agent_id": "bot", "name": "Bot", "agent_type": "llm"}, f"{t}-create") for t in tenants]
    for i in range(CONFIGURES):
        out += [(t, "ConfigureAgent", {"agent_id": "bot", "config": {"step": str(i)}}, f"{t}-cfg-{i}") for t in tenants]
    return out


async def _produce(settings, commands, retry_every: int) -> None:
    """Produce every command (and re-send every Nth one, as a client retry would)."""
    registry = default_registry()
    producer = AIOKafkaProducer(**aiokafka_config(settings), acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        for n, (t, kind, data, cid) in enumerate(commands):
            value, headers = registry.encode(kind, data)
            headers += CommandMeta(command_id=cid, tenant_id=t).to_headers()
            copies = 2 if n % retry_every == 0 else 1
            for _ in range(copies):
                await producer.send("commands.platform", key=t.encode(), value=value, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


def _results(settings, wanted: set[str]) -> dict[str, list]:
    found: dict[str, list] = defaultdict(list)
    for record in read_topic(settings, "results.commands"):
        cid = record.key.decode()
        if cid in wanted:
            found[cid].append(parse_result(record.value))
    return found


def _sigkill_a_worker_mid_load(settings, tmp_path, load: Callable[[], Awaitable[None]], done: Callable[[], int], total: int) -> WorkerProcess:
    """Start a second worker (it takes partitions from the session worker), run ``load``, SIGKILL
    the second worker once a third of ``total`` is ``done``, restart it and wait (up to 180 s) until
    all of it is; returns the killed worker, for its log."""
    env = {"AGENTSTREAM_WEB_PORT": str(settings.web_port + 1)}
    victim = WorkerProcess(tmp_path / "victim.log", env=env).start()
    time.sleep(12)  # let it join the group and take partitions before the load starts
    try:
        asyncio.run(load())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and done() < total // 3:
            time.sleep(0.5)
        victim.kill()  # SIGKILL mid-stream: no commit, no leaving the group; its open transactions are aborted
        restarted = WorkerProcess(tmp_path / "victim.log", env=env).start()
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and done() < total:
                time.sleep(2)
        finally:
            restarted.stop()
    finally:
        victim.kill()
    return victim


def test_sigkill_mid_stream_then_restart_keeps_exactly_one_event_set_per_command(worker, applied, tmp_path):
    tenants = [tenant() for _ in range(TENANTS)]
    commands = _commands(tenants)
    ids = {cid for *_, cid in commands}
    victim = _sigkill_a_worker_mid_load(
        applied, tmp_path, lambda: _produce(applied, commands, retry_every=97), lambda: len(_results(applied, ids)), len(ids)
    )

    results = _results(applied, ids)
    unanswered = sorted(ids - set(results))
    assert not unanswered, f"{len(unanswered)} commands never answered, e.g. {unanswered[:5]}\n{victim.log_tail()}"
    firsts = {cid: outcomes[0] for cid, outcomes in results.items()}
    assert all(isinstance(r, CommandAccepted) for r in firsts.values()), {r.code for r in firsts.values() if not isinstance(r, CommandAccepted)}
    def decision(outcome):  # what was decided, not the ids and times minted for it
        return (outcome.stream_id, outcome.new_version, [e.type for e in outcome.events])

    for cid, outcomes in results.items():  # a retried id, or a redone one, is answered the same way
        assert all(decision(o) == decision(outcomes[0]) for o in outcomes), cid

    # A transaction left open by the SIGKILLed worker holds back what read_committed readers see
    # on its partitions until it is fenced by the new owner or times out: wait, bounded.
    wanted = set(tenants)
    deadline = time.monotonic() + 90
    while True:
        per_stream: dict[tuple[str, str], list[int]] = defaultdict(list)
        per_command: dict[str, int] = defaultdict(int)
        for record in read_topic(applied, "events.platform"):
            h = headers_of(record)
            if h.get("agentstream.tenant_id") in wanted:
                per_stream[(h["agentstream.tenant_id"], h["agentstream.stream_id"])].append(int(h["agentstream.version"]))
                per_command[h["agentstream.command_id"]] += 1
        if set(per_command) == ids or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert set(per_command) == ids  # every accepted command has its event set...
    assert set(per_command.values()) == {1}  # ...exactly once
    for stream, versions in per_stream.items():  # contiguous, no gap, no duplicate
        assert versions == list(range(1, CONFIGURES + 2)), stream


def _facts(settings, tenants: set[str]) -> Counter:
    """How often each (tenant, task id) appears in facts.tasks (read_committed)."""
    found: Counter = Counter()
    for record in read_topic(settings, "facts.tasks"):
        fact = json.loads(record.value)
        if fact["tenant"] in tenants:
            found[(fact["tenant"], fact["task_id"])] += 1
    return found


def test_sigkill_while_folding_task_events_keeps_one_fact_per_task(worker, applied, tmp_path):
    tenants = {tenant() for _ in range(4)}
    tasks = 8000
    start = datetime.now(UTC) - timedelta(hours=4)
    victim = _sigkill_a_worker_mid_load(
        applied, tmp_path, lambda: produce_task_events(applied, sorted(tenants), tasks, start), lambda: len(_facts(applied, tenants)), tasks
    )
    facts = _facts(applied, tenants)
    assert len(facts) == tasks, f"{tasks - len(facts)} tasks have no fact\n{victim.log_tail()}"
    assert set(facts.values()) == {1}, [k for k, n in facts.items() if n > 1][:5]


def test_a_worker_that_lost_its_local_state_recovers_it_from_the_changelog(worker, applied):
    """A worker keeps no local state: stopped, its directory wiped and started again, its aggregates
    come back from the changelog topic."""
    import shutil

    t = tenant()

    async def send(kind, data, **kw):
        async with CommandClient(applied) as client:
            return await client.send(kind, t, data, timeout=120, **kw)

    assert isinstance(asyncio.run(send("CreateAgent", {"agent_id": "keeper", "name": "K", "agent_type": "llm"})), CommandAccepted)
    for i in range(5):
        asyncio.run(send("ConfigureAgent", {"agent_id": "keeper", "config": {"i": str(i)}}))
    worker.stop()
    shutil.rmtree(applied.data_dir / "workers")
    worker.start()
    after = asyncio.run(send("StartAgent", {"agent_id": "keeper"}, expected_version=6))
    assert isinstance(after, CommandAccepted) and after.new_version == 7, after
    retry = asyncio.run(send("CreateAgent", {"agent_id": "keeper", "name": "K", "agent_type": "llm"}))
    assert retry.code == "InvariantViolated"  # the state, not an empty table, decided it


def test_a_batch_with_poison_an_oversize_result_and_an_unknown_stream_is_handled_once_and_the_worker_stays_up(worker, applied, tmp_path):
    """All in the first batch of a fresh worker whose record limit is small: each bad command gets its
    typed answer (and a dead letter where the input is kept), the good ones around them are decided,
    nothing is redone, and the worker keeps running."""
    from schemas.messages import CommandRejected

    t = tenant()
    registry = default_registry()
    good = registry.encode("CreateAgent", {"agent_id": "ok", "name": "Ok", "agent_type": "llm"})
    huge = registry.encode("CreateAgent", {"agent_id": "big", "name": "Big", "agent_type": "llm", "config": {"blob": "x" * 30_000}})
    unknown_stream = registry.encode("AppendEvents", {"stream_id": "nope-1", "events": []})
    after = registry.encode("StartAgent", {"agent_id": "ok"})
    records = [
        ("good", *good, None),
        ("poison", good[0][:5] + b"\xde\xad\xbe\xef", good[1], None),  # a real schema id, then no such record
        ("huge", *huge, None),
        ("unknown-stream", *unknown_stream, 0),
        ("after", *after, None),
    ]

    async def produce() -> None:
        producer = AIOKafkaProducer(**aiokafka_config(applied), acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for cid, value, headers, expected in records:
                meta = CommandMeta(command_id=f"{t}-{cid}", tenant_id=t, expected_version=expected)
                await producer.send("commands.platform", key=t.encode(), value=value, headers=headers + meta.to_headers())
            await producer.flush()
        finally:
            await producer.stop()

    worker.stop()  # the records wait in the topic, then form the first batch of the worker below
    small = WorkerProcess(tmp_path / "small.log", env={"AGENTSTREAM_KAFKA_MAX_RECORD_BYTES": "20000", "AGENTSTREAM_WORKER_ID": "small-limit"}, restart=False)
    try:
        asyncio.run(produce())
        small.start()
        ids = {f"{t}-{cid}" for cid, *_ in records}
        deadline = time.monotonic() + 120
        while len(_results(applied, ids)) < len(ids) and time.monotonic() < deadline:
            time.sleep(1)
        results = _results(applied, ids)
        assert {cid: len(r) for cid, r in results.items()} == {cid: 1 for cid in ids}, small.log_tail()
        answer = {cid.removeprefix(f"{t}-"): r[0] for cid, r in results.items()}
        assert isinstance(answer["good"], CommandAccepted) and answer["good"].new_version == 1
        assert isinstance(answer["poison"], CommandRejected) and answer["poison"].code == "ValidationFailed"
        assert isinstance(answer["huge"], CommandRejected) and answer["huge"].code == "ValidationFailed" and "over the limit" in answer["huge"].message
        assert isinstance(answer["unknown-stream"], CommandRejected) and answer["unknown-stream"].code == "ValidationFailed"
        assert isinstance(answer["after"], CommandAccepted) and answer["after"].new_version == 2
        streams = {headers_of(r).get("agentstream.stream_id") for r in read_topic(applied, "events.platform") if headers_of(r).get("agentstream.tenant_id") == t}
        assert streams == {"agent-ok"}  # the oversize command changed nothing
        reasons = [headers_of(r)["agentstream.dlq_reason"] for r in read_topic(applied, "deadletter.commands") if (r.key or b"").decode() == t]
        assert sorted(reasons) == ["oversize-output", "undecodable", "unknown-stream"]
        assert small.proc.poll() is None and "aborted" not in small.log_tail(100_000)
    finally:
        small.stop()
        worker.start()
