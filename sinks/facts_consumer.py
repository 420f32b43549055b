"""The ClickHouse sink process (``agentstream sink``): ``facts.tasks`` into the cube, exactly once.

A Kafka consumer group of its own (``<app id>-clickhouse-sink``) reads the facts with
``read_committed`` and hands them to ``FactsSink``; offsets are committed only after ClickHouse
has acknowledged the rows below them (``FactsSink.committable``). On a rebalance the revoked
partitions are flushed and committed before they are given up. While ClickHouse is down the sink
waits and retries with backoff (nothing is dropped, nothing is committed); the command path
does not depend on it and keeps running.

The same process serves cube and SQL queries over HTTP (``sinks.query_api``) on
``web_host:sink_port``: with embedded ClickHouse (chdb) it is the one process that may open the
database, so everyone else queries through it. Every use of the ClickHouse client holds one lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from connectors.clickhouse import clickhouse_client
from connectors.kafka_config import aiokafka_config
from sinks.clickhouse_schema import ensure_schema
from sinks.clickhouse_sink import FactsSink, InvalidFact, RetryInfo
from streams.settings import Settings
from streams.topology import CubeSpec, Topology

log = logging.getLogger(__name__)

FACTS_TOPIC = "facts.tasks"


def facts_cube(topology: Topology) -> CubeSpec:
    """The cube fed by the sink that reads ``facts.tasks``."""
    for sink in topology.sinks:
        if sink.kind == "clickhouse" and FACTS_TOPIC in sink.inputs:
            for cube in topology.cubes:
                if cube.source == sink.name:
                    return cube
    raise LookupError(f"topology.yaml declares no cube fed from a clickhouse sink of '{FACTS_TOPIC}'")


class _Handoff(ConsumerRebalanceListener):
    """Flush and commit revoked partitions before giving them up."""

    def __init__(self, runner: "FactsConsumer") -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        partitions = [tp.partition for tp in revoked]
        if partitions:
            await self.runner.commit(await asyncio.to_thread(self.runner.locked, self.runner.sink.flush, partitions))
            await asyncio.to_thread(self.runner.locked, self.runner.sink.revoke, partitions)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("sink: assigned %s", sorted(tp.partition for tp in assigned))


class FactsConsumer:
    """Consumes task facts into ClickHouse and serves queries, until ``stop`` is set."""

    def __init__(self, settings: Settings, cube: CubeSpec, *, batch_size: int = 10_000, max_delay_s: float = 1.0) -> None:
        self.settings = settings
        self.cube = cube
        self.lock = threading.Lock()
        self.client = clickhouse_client(settings)
        self.sink = FactsSink(self.client, cube, FACTS_TOPIC, batch_size=batch_size, max_delay_s=max_delay_s, on_retry=self._retrying)
        self.consumer: AIOKafkaConsumer | None = None
        self._committed: dict[int, int] = {}
        self.rows_seen = 0
        self.rejected = 0

    def locked(self, call: Any, *args: Any) -> Any:
        """Run ``call`` holding the ClickHouse lock (from a worker thread)."""
        with self.lock:
            return call(*args)

    @staticmethod
    def _retrying(info: RetryInfo) -> None:
        log.warning("sink: ClickHouse %s failed (attempt %d): %s; retrying in %.1fs", info.operation, info.attempt, info.error, info.wait_s)

    def _take(self, batch: dict[TopicPartition, list]) -> dict[int, int]:
        """Add a fetched batch to the sink (under the lock); flush when due; return committable offsets."""
        with self.lock:
            for tp, records in batch.items():
                for record in records:
                    self.rows_seen += 1
                    try:
                        self.sink.add(tp.partition, record.offset, json.loads(record.value))
                    except (ValueError, InvalidFact) as exc:
                        self.rejected += 1
                        log.error("sink: fact at %s:%s rejected and skipped: %s", tp.partition, record.offset, exc)
                        self.sink.skip(tp.partition, record.offset)
            if self.sink.due():
                self.sink.flush()
            return self.sink.committable()

    async def commit(self, offsets: dict[int, int]) -> None:
        """Commit the offsets that moved (all rows below them are in ClickHouse)."""
        moved = {TopicPartition(FACTS_TOPIC, p): o for p, o in offsets.items() if self._committed.get(p) != o}
        if not moved or self.consumer is None:
            return
        try:
            await self.consumer.commit(moved)
        except (CommitFailedError, IllegalStateError) as exc:  # rebalanced meanwhile: the new owner re-reads
            log.warning("sink: commit skipped: %s", exc)
            return
        self._committed.update({tp.partition: o for tp, o in moved.items()})

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and serve until ``stop`` is set; then flush, commit and leave the group."""
        await asyncio.to_thread(self.locked, ensure_schema, self.client, self.cube)
        runner = await self._serve_queries()
        self.consumer = AIOKafkaConsumer(
            **aiokafka_config(self.settings),
            group_id=f"{self.settings.app_id}-clickhouse-sink",
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            session_timeout_ms=int(self.settings.kafka_session_timeout_s * 1000),
            heartbeat_interval_ms=int(self.settings.kafka_session_timeout_s * 200),
            max_poll_records=self.sink.batch_size,
        )
        self.consumer.subscribe([FACTS_TOPIC], listener=_Handoff(self))
        await self.consumer.start()
        exports = asyncio.create_task(self._scheduled_exports(stop))
        try:
            while not stop.is_set():
                batch = await self.consumer.getmany(timeout_ms=200)
                await self.commit(await asyncio.to_thread(self._take, batch))
            await self.commit(await asyncio.to_thread(self.locked, self.sink.flush))
        finally:
            exports.cancel()
            self.sink.close()
            await self.consumer.stop()
            if runner is not None:
                await runner.cleanup()

    async def _scheduled_exports(self, stop: asyncio.Event, every_s: float = 60.0) -> None:
        """Run the exports that topology.yaml schedules, when they are due (checked every minute)."""
        from sinks.query_api import default_state_path, run_due_exports

        while not stop.is_set():
            try:
                for result in await asyncio.to_thread(run_due_exports, self.settings, self.client, self.lock, default_state_path(self.settings)):
                    log.info("sink: scheduled export %s", result)
            except Exception as exc:  # an export must not stop the sink
                log.error("sink: scheduled exports failed: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), every_s)
            except asyncio.TimeoutError:
                pass

    async def _serve_queries(self) -> Any:
        from aiohttp import web

        from sinks.query_api import build_query_app

        runner = web.AppRunner(build_query_app(self.settings, self.client, self.lock))
        await runner.setup()
        await web.TCPSite(runner, self.settings.web_host, self.settings.sink_port).start()
        log.info("sink: query API on http://%s:%d", self.settings.web_host, self.settings.sink_port)
        return runner
