"""The events archive in ClickHouse, fed by a running sink process, and the event store's fast reads.

A first sink archives the first 60 events of a stream and stops; a second one runs with batches
that never fill and a timer that never fires, so the next 20 events are only in Kafka: fast reads
must stitch archive and tail together and return exactly what a Kafka-only read returns.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from connectors.kafka_config import aiokafka_config
from sinks.query_client import QueryClient
from streams.client import CommandClient
from streams.event_store import EventStore
from schemas.messages import CommandAccepted
from streams.supervisor import WorkerProcess
from tests.helpers import run_cli, tenant

pytestmark = pytest.mark.integration

ARCHIVE = "agentstream.event_archive"


def _archived(queries: QueryClient, t: str) -> int:
    try:
        return int(queries.sql(f"SELECT count() AS n FROM {ARCHIVE} WHERE tenant = '{t}'")["n"][0])  # test-made id
    except Exception:
        return -1  # the sink is starting


def _start_sink(tmp_path: Path, *args: str) -> WorkerProcess:
    env = {"AGENTSTREAM_CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}"}  # the test process may hold the suite's path
    return WorkerProcess(tmp_path / "sink.log", env=env, args=["sink", *args]).start()


def _wait_archived(queries: QueryClient, t: str, want: int, sink: WorkerProcess) -> None:
    deadline, archived = time.monotonic() + 180, -1
    while time.monotonic() < deadline:
        if (archived := _archived(queries, t)) >= want:
            break
        time.sleep(0.5)
    assert archived == want, f"{archived} of the tenant's events archived, expected {want}\n{sink.log_tail()}"


async def _configure(settings, t: str, n: int, first: bool) -> None:
    async with CommandClient(settings) as client:
        if first:
            assert isinstance(await client.send("CreateAgent", t, {"agent_id": "a1", "name": "A", "agent_type": "llm"}), CommandAccepted)
        for i in range(n):
            assert isinstance(await client.send("ConfigureAgent", t, {"agent_id": "a1", "config": {"n": str(i)}}), CommandAccepted)


async def _produce_garbage(settings, t: str) -> None:
    producer = AIOKafkaProducer(**aiokafka_config(settings))
    await producer.start()
    try:  # no envelope, no schema: the archive skips it and nothing else
        await producer.send_and_wait("events.platform", key=t.encode(), value=b"\x00garbage")
    finally:
        await producer.stop()


def test_fast_reads_stitch_archive_and_kafka_tail(worker, applied, tmp_path: Path):
    t = tenant()
    since = datetime.now(UTC) - timedelta(seconds=1)
    queries = QueryClient(applied, open_embedded=False)  # only ever through the sink
    sink = _start_sink(tmp_path, "--max-delay", "0.2")
    try:
        asyncio.run(_produce_garbage(applied, t))
        asyncio.run(_configure(applied, t, 59, first=True))
        _wait_archived(queries, t, 60, sink)
        assert "rejected and skipped" in sink.log_tail(1_000_000)
        sink.stop()

        sink = _start_sink(tmp_path, "--batch-size", "1000000", "--max-delay", "3600")
        asyncio.run(_configure(applied, t, 20, first=False))  # versions 61..80 stay in the sink's buffer
        _wait_archived(queries, t, 60, sink)  # (and the sink answers again)
        fast, kafka = EventStore(applied), EventStore(applied, use_archive=False)

        async def compare() -> None:
            for from_version in (0, 30, 60, 79, 80):
                got = await fast.get_events(t, "agent-a1", from_version)
                assert fast.last_read == "archive+kafka"
                want = await kafka.get_events(t, "agent-a1", from_version)
                assert kafka.last_read == "kafka"
                assert got == want and [e.meta.version for e in got] == list(range(from_version + 1, 81))
            got = await fast.get_events_by_type(["AgentConfigured"], since, tenant_id=t)
            want = await kafka.get_events_by_type(["AgentConfigured"], since, tenant_id=t)
            assert len(got) == 79 and got == want
            assert await fast.get_events(tenant(), "agent-a1") == []
            state, version = await fast.load(t, "agent-a1")
            assert version == 80 and (state, version) == await kafka.load(t, "agent-a1")

        asyncio.run(compare())

        # The CLI reads the same way.
        out = run_cli("events", "stream", "agent-a1", "--tenant", t, "--from-version", "70", "--format", "json")
        assert out.returncode == 0, out.stderr
        assert [e["version"] for e in json.loads(out.stdout)] == list(range(71, 81))
        out = run_cli("events", "by-type", "AgentConfigured", "--since", since.isoformat(), "--tenant", t)
        assert out.returncode == 0 and "79 event(s), read via archive+kafka" in out.stdout, out.stdout + out.stderr

        # SQL on the archive: the payload is JSON text of the event at its newest schema.
        rows = queries.sql(
            f"SELECT version, event_type, JSONExtractString(payload, 'agent_id') AS agent FROM {ARCHIVE} "
            f"WHERE tenant = '{t}' ORDER BY version LIMIT 2"
        )
        assert rows.to_dict("records") == [
            {"version": 1, "event_type": "AgentCreated", "agent": "a1"},
            {"version": 2, "event_type": "AgentConfigured", "agent": "a1"},
        ]

        # Without the sink the store reads Kafka alone, with the same result.
        sink.stop()
        alone = asyncio.run(fast.get_events(t, "agent-a1"))
        assert fast.last_read == "kafka" and [e.meta.version for e in alone] == list(range(1, 81))
    finally:
        sink.stop()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["by-type", "Bogus", "--since", "2026-01-01"], "unknown event type(s) Bogus"),
        (["by-type", "TaskFailed", "--since", "yesterday"], "not an ISO-8601 time"),
        (["stream", "agent-a1", "--tenant", "bad tenant!"], "bad tenant id"),
        (["stream", "agent-a1", "--tenant", "ok", "--format", "xml"], "unknown format 'xml'"),
    ],
)
def test_events_cli_bad_input_exits_2(args, fragment):
    out = run_cli("events", *args)
    assert out.returncode == 2 and fragment in " ".join(out.stderr.split()), out.stderr
