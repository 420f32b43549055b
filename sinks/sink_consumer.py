"""The ClickHouse sink process (``agentstream sink``): facts into the cube, events into the archive, usage.

A Kafka consumer group of its own (``<app id>-clickhouse-sink``) reads ``facts.tasks`` (into the
cube's facts table, ``FactsSink``) and, when ``topology.yaml`` declares them, ``events.platform``
(the events archive, ``ArchiveSink``), ``alerts.drift`` (the drift alerts, ``AlertsSink``) and
``billing.usage`` (the usage table, ``UsageSink``),
all with ``read_committed``. One ``TableSink`` per topic;
offsets are committed only after ClickHouse has acknowledged the rows below them
(``TableSink.committable``). On a rebalance the revoked partitions are flushed and committed
before they are given up. While ClickHouse is down the sink waits and retries with backoff
(nothing is dropped, nothing is committed); the command path does not depend on it and keeps
running.

The same process serves cube, SQL and archive queries over HTTP (``sinks.query_server``) on
``web_host:sink_port``: with embedded ClickHouse (chdb) it is the one process that may open the
database, so everyone else queries through it. Every use of the ClickHouse client holds one lock
(``lock``), held per call: while the sinks wait to retry an insert, queries still run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from connectors.clickhouse import clickhouse_client
from connectors.kafka_config import aiokafka_config
from sinks.clickhouse_schema import SchemaError, ensure_schema
from sinks.clickhouse_sink import FactsSink, InvalidRow, RetryInfo, SinkClosed, TableSink, retry_forever
from sinks.billing_usage import BILLING_TOPIC, UsageSink, ensure_usage, usage_table
from sinks.drift_alerts import ALERTS_TOPIC, AlertsSink, alerts_table, ensure_alerts
from sinks.events_archive import EVENTS_TOPIC, ArchiveSink, archive_table, ensure_archive
from schemas import default_registry
from schemas.settings import Settings
from schemas.wire import bind
from schemas.topology import CubeSpec, Topology

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

    def __init__(self, runner: "SinkConsumer") -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        for topic, sink in self.runner.sinks.items():
            partitions = [tp.partition for tp in revoked if tp.topic == topic]
            if partitions:
                await self.runner.commit(topic, await asyncio.to_thread(self.runner.with_sinks, sink.flush, partitions))
                await asyncio.to_thread(self.runner.with_sinks, sink.revoke, partitions)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("sink: assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))
        consumer = self.runner.consumer
        if consumer is None:
            return
        for topic, sink in self.runner.sinks.items():
            partitions = [tp.partition for tp in assigned if tp.topic == topic]
            if not partitions or not sink.keeps_prefix:
                continue
            held = await asyncio.to_thread(self.runner.with_sinks, sink.resume_offsets, partitions)
            for partition in partitions:
                tp = TopicPartition(topic, partition)
                start = rewind_to(await consumer.committed(tp), held.get(partition))
                if start is not None:
                    log.warning("sink: %s holds %s below the committed offset of %s:%s; re-reading from %s",
                                sink.table, "nothing" if partition not in held else f"offsets up to {held[partition]}", topic, partition, start or "the beginning")
                    if start == 0:
                        await consumer.seek_to_beginning(tp)
                    else:
                        consumer.seek(tp, start)


def rewind_to(committed: int | None, held: int | None) -> int | None:
    """Where to start a partition whose committed offset is ``committed`` when ClickHouse holds
    offsets up to ``held``: None to start at the commit, else the offset to re-read from.

    The commit never passes rows ClickHouse has not acknowledged, so a commit beyond ``held + 1``
    means ClickHouse lost rows or is another database (a new path, a restored backup): re-read
    from the first offset it lacks, so the table is again a prefix of the topic (the events
    archive relies on it; see ``TableSink.keeps_prefix``). The few records between (skipped or
    transaction markers) are read again and skipped again.
    """
    if committed is None:
        return None  # no commit: the consumer starts at the beginning anyway
    start = 0 if held is None else held + 1
    return start if start < committed else None


class SinkConsumer:
    """Consumes facts (and events, when archived) into ClickHouse and serves queries, until ``stop`` is set."""

    def __init__(self, settings: Settings, topology: Topology, *, batch_size: int = 10_000, max_delay_s: float = 1.0) -> None:
        self.settings = settings
        self.cube = facts_cube(topology)
        self.archive = archive_table(topology)
        self.usage = usage_table(topology)
        self.alerts = alerts_table(topology)
        #: Held around every use of the ClickHouse client (sinks, query API, exports).
        self.lock = threading.Lock()
        self._sinks_lock = threading.Lock()  # the sinks' buffers: one thread at a time
        self.client = clickhouse_client(settings)
        options = {"batch_size": batch_size, "max_delay_s": max_delay_s, "on_retry": self._retrying, "client_lock": self.lock}
        #: One exactly-once writer per input topic, and how a record becomes what it ``add``s.
        self.sinks: dict[str, TableSink] = {FACTS_TOPIC: FactsSink(self.client, self.cube, FACTS_TOPIC, **options)}
        self._inputs: dict[str, Callable[[Any], Any]] = {FACTS_TOPIC: lambda record: json.loads(record.value)}
        if self.archive is not None:
            bind(default_registry(), settings, eager=False)  # the ids of archived events, fetched once each
            self.sinks[EVENTS_TOPIC] = ArchiveSink(self.client, self.archive, **options)
            self._inputs[EVENTS_TOPIC] = lambda record: record
        if self.usage is not None:
            self.sinks[BILLING_TOPIC] = UsageSink(self.client, self.usage, **options)
            self._inputs[BILLING_TOPIC] = lambda record: record.value
        if self.alerts is not None:
            self.sinks[ALERTS_TOPIC] = AlertsSink(self.client, self.alerts, **options)
            self._inputs[ALERTS_TOPIC] = lambda record: json.loads(record.value)
        self.consumer: AIOKafkaConsumer | None = None
        self._committed: dict[tuple[str, int], int] = {}

    def with_sinks(self, call: Any, *args: Any) -> Any:
        """Run ``call`` holding the sinks' lock (from a worker thread); the sinks take the ClickHouse lock per call."""
        with self._sinks_lock:
            return call(*args)

    @staticmethod
    def _retrying(info: RetryInfo) -> None:
        log.warning("sink: ClickHouse %s failed (attempt %d): %s; retrying in %.1fs", info.operation, info.attempt, info.error, info.wait_s)

    def _take(self, batch: dict[TopicPartition, list]) -> dict[str, dict[int, int]]:
        """Add a fetched batch to the sinks; flush when due; return committable offsets per topic."""
        with self._sinks_lock:
            for tp, records in batch.items():
                sink, decode = self.sinks[tp.topic], self._inputs[tp.topic]
                for record in records:
                    try:
                        sink.add(tp.partition, record.offset, decode(record))
                    except (ValueError, InvalidRow) as exc:
                        log.error("sink: %s record at %s:%s rejected and skipped: %s", tp.topic, tp.partition, record.offset, exc)
                        sink.skip(tp.partition, record.offset)
            for sink in self.sinks.values():
                if sink.due():
                    sink.flush()
            return {topic: sink.committable() for topic, sink in self.sinks.items()}

    def _flush_all(self) -> dict[str, dict[int, int]]:
        with self._sinks_lock:
            return {topic: sink.flush() for topic, sink in self.sinks.items()}

    async def commit(self, topic: str, offsets: dict[int, int]) -> None:
        """Commit the offsets of ``topic`` that moved (all rows below them are in ClickHouse)."""
        moved = {TopicPartition(topic, p): o for p, o in offsets.items() if self._committed.get((topic, p)) != o}
        if not moved or self.consumer is None:
            return
        try:
            await self.consumer.commit(moved)
        except (CommitFailedError, IllegalStateError) as exc:  # rebalanced meanwhile: the new owner re-reads
            log.warning("sink: commit skipped: %s", exc)
            return
        self._committed.update({(tp.topic, tp.partition): o for tp, o in moved.items()})

    async def _commit_all(self, offsets: dict[str, dict[int, int]]) -> None:
        for topic, topic_offsets in offsets.items():
            await self.commit(topic, topic_offsets)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and serve until ``stop`` is set; then flush, commit and leave the group."""
        if not await self._ensure_tables(stop):
            return
        runner = await self._serve_queries()
        self.consumer = AIOKafkaConsumer(
            **aiokafka_config(self.settings),
            group_id=f"{self.settings.app_id}-clickhouse-sink",
            enable_auto_commit=False,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            session_timeout_ms=int(self.settings.kafka_session_timeout_s * 1000),
            heartbeat_interval_ms=int(self.settings.kafka_session_timeout_s * 200),
            max_poll_records=self.sinks[FACTS_TOPIC].batch_size,
        )
        self.consumer.subscribe(list(self.sinks), listener=_Handoff(self))
        await self.consumer.start()
        exports = asyncio.create_task(self._scheduled_exports(stop))
        closer = asyncio.create_task(self._close_after_stop(stop))
        try:
            while not stop.is_set():
                batch = await self.consumer.getmany(timeout_ms=200)
                await self._commit_all(await asyncio.to_thread(self._take, batch))
            await self._commit_all(await asyncio.to_thread(self._flush_all))
        except SinkClosed as exc:  # stopped while ClickHouse was failing: the next owner re-reads
            log.warning("sink: stopped without a final flush: %s", exc)
        finally:
            exports.cancel()
            closer.cancel()
            for sink in self.sinks.values():
                sink.close()
            await self.consumer.stop()
            if runner is not None:
                await runner.cleanup()

    async def _close_after_stop(self, stop: asyncio.Event, grace_s: float = 10.0) -> None:
        """Once stopped, give a flush ``grace_s`` to finish, then abandon retries (ClickHouse down)."""
        await stop.wait()
        await asyncio.sleep(grace_s)
        for sink in self.sinks.values():
            sink.close()

    async def _ensure_tables(self, stop: asyncio.Event) -> bool:
        """Create or migrate the ClickHouse objects, retrying while ClickHouse is down; False if stopped first."""

        def ensure() -> None:
            with self.lock:
                ensure_schema(self.client, self.cube)
                if self.archive is not None:
                    ensure_archive(self.client, self.archive)
                if self.usage is not None:
                    ensure_usage(self.client, self.usage)
                if self.alerts is not None:
                    ensure_alerts(self.client, self.alerts)

        closed = threading.Event()
        waiter = asyncio.create_task(stop.wait())
        waiter.add_done_callback(lambda _: closed.set())
        try:
            await asyncio.to_thread(retry_forever, "schema", ensure, closed, on_retry=self._retrying, fatal=(SchemaError,))
            return True
        except SinkClosed:
            return False
        finally:
            waiter.cancel()

    async def _scheduled_exports(self, stop: asyncio.Event, every_s: float = 60.0) -> None:
        """Run the exports that topology.yaml schedules, when they are due (checked every minute)."""
        from sinks.export_runner import default_state_path, run_due_exports

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

        from sinks.query_server import build_query_app

        runner = web.AppRunner(build_query_app(self.settings, self.client, self.lock))
        await runner.setup()
        await web.TCPSite(runner, self.settings.web_host, self.settings.sink_port).start()
        log.info("sink: query API on http://%s:%d", self.settings.web_host, self.settings.sink_port)
        return runner
