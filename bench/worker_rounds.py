"""Timing one worker process at a time by its own ``/runtime`` figures (shared by the runtime benchmarks)."""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def produce(producer: Any, topic: str, value: bytes, key: bytes, headers: Any = None) -> None:
    """``producer.produce``, waiting while the client's queue is full (pre-loading as fast as it goes)."""
    while True:
        try:
            producer.produce(topic, value, key, headers=headers)
            break
        except BufferError:
            producer.poll(0.1)
    producer.poll(0)


def take(consumer: Any, most: int = 5000) -> list[Any]:
    """What a bare loop takes per turn, as the runtime does: wait briefly for one record, then everything already fetched."""
    first = consumer.consume(1, timeout=0.2)
    return first + consumer.consume(most - 1, timeout=0) if first else []


def read_to_end(settings: Any, topic: str) -> Iterator[Any]:
    """Every committed record of ``topic``, read ``read_committed`` from each partition's start to its end."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    from connectors.kafka_config import confluent_config

    consumer = Consumer(
        {**confluent_config(settings), "group.id": f"bench-read-{uuid.uuid4().hex[:6]}", "isolation.level": "read_committed", "enable.partition.eof": True, "enable.auto.commit": False}
    )
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        waiting = set(parts)
        while waiting:
            for m in consumer.consume(10_000, timeout=1):
                error = m.error()
                if error is None:
                    yield m
                elif error.code() == KafkaError._PARTITION_EOF:
                    waiting.discard(m.partition())
    finally:
        consumer.close()


def runtime_status(port: int) -> dict[str, Any]:
    """The worker's ``/runtime`` page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/runtime", timeout=5) as response:
        return json.loads(response.read())


def time_worker(
    settings: Any, agent: str, records: int, web_port: int, env: dict[str, str] | None = None, timeout: float = 600, app_id: str | None = None
) -> dict[str, Any]:
    """Run ``agentstream worker --agents AGENT`` under a fresh app id (its group starts at the
    beginning, or where offsets committed for ``app_id`` beforehand say; its tables empty) until
    it has committed ``records`` input records.

    Returns the rate from its first batch to the commit covering the last record, and its CPU
    µs per record over the same span (read from /proc when the first batch shows up and at the end).
    """
    from streams.supervisor import WorkerProcess

    app_id = app_id or f"bench-{uuid.uuid4().hex[:6]}"
    env = {"AGENTSTREAM_APP_ID": app_id, "AGENTSTREAM_WEB_PORT": str(web_port), "AGENTSTREAM_LOG_LEVEL": "warn", **(env or {})}
    worker = WorkerProcess(settings.data_dir / f"{app_id}.log", env=env, args=["worker", "--agents", agent], restart=False).start()
    try:
        cpu_start = first = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                stats = runtime_status(web_port)["agents"][0]
            except (OSError, IndexError, KeyError):
                time.sleep(0.2)
                continue
            if first is None and stats.get("first_batch_at"):
                first, cpu_start = stats["first_batch_at"], cpu_seconds(worker.pid)
            if stats.get("records", 0) >= records:
                cpu = cpu_seconds(worker.pid) - (cpu_start or 0)
                elapsed = stats["last_commit_at"] - first
                return {"rate": records / elapsed, "seconds": elapsed, "cpu_us": cpu / records * 1e6, "batches": stats["batches"], "app_id": app_id}
            time.sleep(0.05)
        raise RuntimeError(f"the worker did not finish: {worker.log_tail()}")
    finally:
        worker.stop()
