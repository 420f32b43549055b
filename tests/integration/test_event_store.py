"""The event store API over the real broker: append with expected version, reads, snapshots, versions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer

from connectors.kafka_config import aiokafka_config
from schemas import default_registry
from streams.client import CommandClient
from streams.command_processor import SNAPSHOT_EVERY
from streams.domain import AGENT, Event, replay
from streams.event_store import AppendRejected, EventStore
from schemas.messages import CommandAccepted, EventMeta, new_id
from tests.helpers import tenant

pytestmark = pytest.mark.integration


def test_append_read_and_optimistic_concurrency(worker, applied):
    t = tenant()
    store = EventStore(applied)
    since = datetime.now(UTC) - timedelta(seconds=1)

    async def scenario():
        async with CommandClient(applied) as client:
            created = await client.send("CreateAgent", t, {"agent_id": "a1", "name": "A", "agent_type": "llm"})
            assert isinstance(created, CommandAccepted)
        appended = await store.append_events(t, "agent-a1", [Event("AgentStarted", {"agent_id": "a1"}), Event("AgentStopped", {"agent_id": "a1", "reason": "x"})], expected_version=1)
        assert appended.new_version == 3
        with pytest.raises(AppendRejected, match="WrongExpectedVersion"):
            await store.append_events(t, "agent-a1", [Event("AgentStarted", {"agent_id": "a1"})], expected_version=1)
        with pytest.raises(AppendRejected, match="ValidationFailed"):
            await store.append_events(t, "agent-a1", [Event("TenantCreated", {"name": "x"})], expected_version=3)
        events = await store.get_events(t, "agent-a1")
        assert [(e.type, e.meta.version) for e in events] == [("AgentCreated", 1), ("AgentStarted", 2), ("AgentStopped", 3)]
        assert [e.meta.version for e in await store.get_events(t, "agent-a1", from_version=2)] == [3]
        by_type = await store.get_events_by_type(["AgentStopped"], since, tenant_id=t)
        assert [(e.type, e.meta.stream_id) for e in by_type] == [("AgentStopped", "agent-a1")]
        assert await store.get_events_by_type(["AgentStopped"], datetime.now(UTC) + timedelta(minutes=5), tenant_id=t) == []
        assert await store.get_events(tenant(), "agent-a1") == []  # another tenant sees nothing

    asyncio.run(scenario())


def test_snapshot_plus_tail_equals_full_replay(worker, applied):
    t = tenant()
    store = EventStore(applied)

    async def scenario():
        async with CommandClient(applied) as client:
            await client.send("CreateAgent", t, {"agent_id": "a1", "name": "A", "agent_type": "llm"})
            for i in range(SNAPSHOT_EVERY + 7):  # crosses the automatic snapshot at version 50
                outcome = await client.send("ConfigureAgent", t, {"agent_id": "a1", "config": {f"k{i % 5}": str(i)}})
                assert isinstance(outcome, CommandAccepted)
        snapshot = await store.latest_snapshot(t, "agent-a1")
        assert snapshot is not None and snapshot.version == SNAPSHOT_EVERY
        everything = await store.get_events(t, "agent-a1")
        full = replay(AGENT, [Event(e.type, e.data) for e in everything])
        state, version = await store.load(t, "agent-a1")
        assert version == SNAPSHOT_EVERY + 8 and state == full
        manual = await store.create_snapshot(t, "agent-a1", AGENT.dump(full), version)
        assert (await store.latest_snapshot(t, "agent-a1")).version == manual.version == version
        state_again, _ = await store.load(t, "agent-a1")
        assert state_again == full

    asyncio.run(scenario())


def test_events_written_as_v1_are_read_as_v2(applied):
    """Old events stay readable: AgentCreated v1 by resolution, TaskCompleted v1 by its upcaster."""
    t = tenant()
    registry = default_registry()

    async def write_v1_events():
        producer = AIOKafkaProducer(**aiokafka_config(applied), acks="all")
        await producer.start()
        try:
            for version, (kind, data, stream) in enumerate(
                [
                    ("AgentCreated", {"agent_id": "old", "name": "Old", "agent_type": "llm", "region": "eu-west-1", "config": {}}, "agent-old"),
                    ("TaskCompleted", {"task_id": "t1", "agent_id": "old", "output": {}, "cost": 1.0, "duration_ms": 2500}, "task-t1"),
                ],
                start=1,
            ):
                value, headers = registry.encode(kind, data, version=1)
                meta = EventMeta(event_id=new_id(), tenant_id=t, stream_id=stream, version=1, occurred_at=datetime.now(UTC), command_id="legacy")
                await producer.send_and_wait("events.platform", key=t.encode(), value=value, headers=headers + meta.to_headers())
        finally:
            await producer.stop()

    asyncio.run(write_v1_events())
    store = EventStore(applied)
    created = asyncio.run(store.get_events(t, "agent-old"))[0]
    assert created.data["capabilities"] == []  # v2 field, default filled in
    completed = asyncio.run(store.get_events(t, "task-t1"))[0]
    assert completed.data["duration_s"] == 2.5 and "duration_ms" not in completed.data
