"""Helpers for integration tests: run the CLI as a user would, read topics as a consumer would."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from connectors.kafka_config import aiokafka_config
from connectors.kafka_topics import topic_partitions
from schemas import default_registry
from schemas.messages import EventMeta, new_id
from schemas.settings import Settings

REPO = Path(__file__).resolve().parents[1]
TYPES = ["llm", "retriever", "planner"]
REGIONS = ["eu-west-1", "us-east-1"]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``agentstream ARGS`` in a subprocess; returns the completed process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=REPO,
    )


def tenant() -> str:
    """A fresh tenant id, so tests never see each other's streams."""
    return f"t-{uuid.uuid4().hex[:10]}"


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The end offset of every partition of ``topic``."""

    async def go() -> dict[int, int]:
        consumer = AIOKafkaConsumer(**aiokafka_config(settings), enable_auto_commit=False)
        await consumer.start()
        try:
            parts = [TopicPartition(topic, p) for p in await topic_partitions(consumer, topic)]
            ends = await consumer.end_offsets(parts)
            return {tp.partition: offset for tp, offset in ends.items()}
        finally:
            await consumer.stop()

    return asyncio.run(go())


def read_topic(
    settings: Settings, topic: str, *, committed: bool = True, timeout: float = 60.0, since: dict[int, int] | None = None
) -> list[ConsumerRecord]:
    """Every record of ``topic`` up to its high watermark now (read_committed by default), in
    partition/offset order, from each partition's start or from the offsets ``since`` (partition
    -> offset, e.g. an earlier ``end_offsets``). A read_committed read waits (up to ``timeout``)
    for transactions that are open below the high watermark to end."""
    since = since or {}

    async def go() -> list[ConsumerRecord]:
        config = {**aiokafka_config(settings), "enable_auto_commit": False}
        probe = AIOKafkaConsumer(**config, isolation_level="read_uncommitted")
        await probe.start()
        try:
            tps = [TopicPartition(topic, p) for p in await topic_partitions(probe, topic)]
            ends = await probe.end_offsets(tps)
        finally:
            await probe.stop()
        pending = {tp for tp in tps if ends[tp] > since.get(tp.partition, 0)}
        if not pending:
            return []
        consumer = AIOKafkaConsumer(**config, isolation_level="read_committed" if committed else "read_uncommitted")
        await consumer.start()
        records: list[ConsumerRecord] = []
        try:
            consumer.assign(list(pending))
            from_start = [tp for tp in pending if tp.partition not in since]
            if from_start:
                await consumer.seek_to_beginning(*from_start)
            for tp in pending:
                if tp.partition in since:
                    consumer.seek(tp, since[tp.partition])
            deadline = time.monotonic() + timeout
            while pending and time.monotonic() < deadline:
                batch = await consumer.getmany(*pending, timeout_ms=500)
                for tp, msgs in batch.items():
                    records.extend(m for m in msgs if m.offset < ends[tp])
                pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        finally:
            await consumer.stop()
        return sorted(records, key=lambda r: (r.partition, r.offset))

    return asyncio.run(go())


def encode_old_format(name: str, data: dict, version: int | None = None) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A record as agentstream wrote it before the wire format: schemaless Avro, schema name and version in headers."""
    import io

    import fastavro

    from schemas.registry import SCHEMA_HEADER, VERSION_HEADER

    registry = default_registry()
    sv = registry.get(name, version)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, sv.schema, registry.validate(name, data, sv.version).model_dump())
    return buf.getvalue(), [(SCHEMA_HEADER, name.encode()), (VERSION_HEADER, str(sv.version).encode())]


def headers_of(record: ConsumerRecord) -> dict[str, str]:
    """A record's headers as text."""
    return {k: v.decode(errors="replace") for k, v in (record.headers or [])}


async def produce_task_events(settings: Settings, tenants: list[str], tasks: int, start: datetime) -> None:
    """Straight onto events.platform: AgentCreated for 4 agents per tenant, then per task a
    TaskAssigned and a TaskCompleted (9 in 10) or TaskFailed, spread over 3 hours after ``start``."""
    registry = default_registry()
    rng = random.Random(11)
    producer = AIOKafkaProducer(**aiokafka_config(settings), acks="all", linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    versions: dict[tuple[str, str], int] = defaultdict(int)

    async def emit(t: str, stream: str, kind: str, data: dict, at: datetime) -> None:
        versions[(t, stream)] += 1
        value, headers = registry.encode(kind, data)
        meta = EventMeta(event_id=new_id(), tenant_id=t, stream_id=stream, version=versions[(t, stream)], occurred_at=at, command_id="load")
        await producer.send("events.platform", key=t.encode(), value=value, headers=headers + meta.to_headers())

    try:
        for t in tenants:
            for a in range(4):
                await emit(t, f"agent-a{a}", "AgentCreated", {"agent_id": f"a{a}", "name": "A", "agent_type": TYPES[a % 3], "region": REGIONS[a % 2], "config": {}}, start)
        for n in range(tasks):
            t = tenants[n % len(tenants)]
            agent = f"a{rng.randrange(4)}"
            begun = start + timedelta(seconds=rng.uniform(0, 3 * 3600))
            await emit(t, f"task-{n}", "TaskAssigned", {"task_id": str(n), "agent_id": agent, "task_type": "x", "input": {}}, begun)
            ended = begun + timedelta(milliseconds=rng.lognormvariate(6, 0.8))
            if rng.random() < 0.9:
                await emit(t, f"task-{n}", "TaskCompleted", {"task_id": str(n), "agent_id": agent, "output": {}, "cost": round(rng.uniform(0, 0.05), 4)}, ended)
            else:
                await emit(t, f"task-{n}", "TaskFailed", {"task_id": str(n), "agent_id": agent, "error": "timeout", "cost": 0.001}, ended)
        await producer.flush()
    finally:
        await producer.stop()
