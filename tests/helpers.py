"""Helpers for integration tests: run the CLI as a user would, read topics as a consumer would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from connectors.kafka_config import aiokafka_config
from connectors.kafka_topics import topic_partitions
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[1]


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


def read_topic(settings: Settings, topic: str, *, committed: bool = True, timeout: float = 60.0) -> list[ConsumerRecord]:
    """Every record of ``topic`` up to its high watermark now (read_committed by default), in
    partition/offset order. A read_committed read waits (up to ``timeout``) for transactions that
    are open below the high watermark to end."""

    async def go() -> list[ConsumerRecord]:
        config = {**aiokafka_config(settings), "enable_auto_commit": False}
        probe = AIOKafkaConsumer(**config, isolation_level="read_uncommitted")
        await probe.start()
        try:
            tps = [TopicPartition(topic, p) for p in await topic_partitions(probe, topic)]
            ends = await probe.end_offsets(tps)
        finally:
            await probe.stop()
        consumer = AIOKafkaConsumer(**config, isolation_level="read_committed" if committed else "read_uncommitted")
        await consumer.start()
        records: list[ConsumerRecord] = []
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            pending = {tp for tp in tps if ends[tp] > 0}
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


def headers_of(record: ConsumerRecord) -> dict[str, str]:
    """A record's headers as text."""
    return {k: v.decode(errors="replace") for k, v in (record.headers or [])}
