"""The event store API over Kafka, as the plan names it.

- ``append_events`` goes through the command handler (an ``AppendEvents`` command keyed by the
  tenant), so the partition's single writer checks the expected version: there is no second
  write path.
- Fast reads: when the events archive in ClickHouse answers (``sinks.events_archive``, through
  the sink's query API or a ClickHouse server; see ``QueryClient``), ``get_events`` and
  ``get_events_by_type`` take the matching events from it and read from Kafka only the tail of
  each partition after the archive's position there. The archive of a partition is a prefix of
  it, so archive + tail is every event up to the end of the topic now. Without the archive
  (no sink running, ClickHouse failing) they fall back to Kafka alone, as below.
- ``get_events`` from Kafka reads the one partition that holds the tenant. Cost: without a
  snapshot it scans that partition from its start (all tenants hashed there); ``from_version``
  at or past the stream's latest snapshot starts at the snapshot's time instead
  (``offsets_for_times``), which bounds the scan to what came after the snapshot.
- ``get_events_by_type`` from Kafka starts every partition at ``offsets_for_times(from_timestamp)``.
- ``create_snapshot``/``latest_snapshot`` use the compacted ``snapshots.<aggregate>`` topics;
  ``load`` rehydrates a stream as snapshot + later events.

Reads are ``read_committed``: aborted transactions are never seen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, AsyncIterator, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from connectors.kafka_config import aiokafka_config
from connectors.kafka_topics import topic_partitions
from schemas import SchemaError, SchemaRegistry, default_registry
from sinks.events_archive import archive_headers
from sinks.query_client import QueryClient
from sinks.query_errors import QueryError, QueryFailed, QueryUnavailable
from streams.client import CommandClient
from streams.command_processor import APPEND_EVENTS
from streams.domain import Event, aggregate_for_stream, replay
from schemas.messages import CommandAccepted, CommandRejected, EnvelopeError, EventMeta, Snapshot, utcnow
from schemas.settings import Settings
from schemas.wire import bind

log = logging.getLogger(__name__)

EVENTS_TOPIC = "events.platform"
#: Margin before a snapshot's time when seeking by time (producer clocks are not the decider's).
_SEEK_MARGIN = timedelta(seconds=5)


class AppendRejected(RuntimeError):
    """The append was refused (WrongExpectedVersion, ValidationFailed...): nothing was written."""

    def __init__(self, rejection: CommandRejected) -> None:
        super().__init__(f"{rejection.code}: {rejection.message}")
        self.rejection = rejection


@dataclass(frozen=True)
class StoredEvent:
    """An event as read back from the store, with where it sits in Kafka."""

    type: str
    data: dict[str, Any]
    meta: EventMeta
    partition: int
    offset: int
    timestamp_ms: int


class EventStore:
    """Append to and read from the ``events.platform`` topic, tenant by tenant.

    Reads use the ClickHouse events archive when it answers (``use_archive``) and Kafka for the
    rest; the result is the same either way (module docstring).
    """

    def __init__(self, settings: Settings, registry: SchemaRegistry | None = None, *, use_archive: bool = True) -> None:
        self.settings = settings
        self.registry = registry or default_registry()
        bind(self.registry, settings, eager=False)  # ids of the records it reads, fetched once each
        # Never opens an embedded chdb path itself: that belongs to the sink process.
        self._archive = QueryClient(settings, open_embedded=False, timeout=60.0) if use_archive else None
        #: How the last read found its events: "archive+kafka" or "kafka".
        self.last_read: str | None = None

    # -- writing ---------------------------------------------------------------------

    async def append_events(self, tenant_id: str, stream_id: str, events: Sequence[Event], expected_version: int, timeout: float = 30.0) -> CommandAccepted:
        """Append ``events`` to a stream at ``expected_version``; AppendRejected when refused."""
        payload = {"stream_id": stream_id, "events": [{"type": e.type, "data_json": json.dumps(dict(e.data))} for e in events]}
        async with CommandClient(self.settings, self.registry) as client:
            outcome = await client.send(APPEND_EVENTS, tenant_id, payload, expected_version=expected_version, timeout=timeout)
        if isinstance(outcome, CommandRejected):
            raise AppendRejected(outcome)
        assert isinstance(outcome, CommandAccepted)
        return outcome

    async def create_snapshot(self, tenant_id: str, stream_id: str, data: dict[str, Any], version: int) -> Snapshot:
        """Record ``data`` as the stream's state at ``version`` (the latest snapshot per stream is kept)."""
        aggregate = aggregate_for_stream(stream_id)
        if aggregate is None:
            raise ValueError(f"no aggregate owns stream '{stream_id}'")
        snapshot = Snapshot(tenant_id=tenant_id, stream_id=stream_id, aggregate=aggregate.name, version=version, state=data, taken_at=utcnow())
        producer = AIOKafkaProducer(**aiokafka_config(self.settings), acks="all", enable_idempotence=True)
        await producer.start()
        try:
            await producer.send_and_wait(Snapshot.topic_for(aggregate.name), key=snapshot.key, value=snapshot.model_dump_json().encode())
        finally:
            await producer.stop()
        return snapshot

    # -- reading ---------------------------------------------------------------------

    async def latest_snapshot(self, tenant_id: str, stream_id: str) -> Snapshot | None:
        """The newest snapshot of a stream, or None. Scans the key's partition of a compacted topic."""
        aggregate = aggregate_for_stream(stream_id)
        if aggregate is None:
            return None
        key = f"{tenant_id}/{stream_id}".encode()
        latest: Snapshot | None = None
        async for record in self._scan(Snapshot.topic_for(aggregate.name), key=key):
            if record.key == key:
                candidate = Snapshot.model_validate_json(record.value)
                if latest is None or candidate.version >= latest.version:
                    latest = candidate
        return latest

    async def get_events(self, tenant_id: str, stream_id: str, from_version: int = 0) -> list[StoredEvent]:
        """The events of one stream with version > ``from_version``, in version order."""
        archived = await self._archived(tenant=tenant_id, stream_id=stream_id, from_version=from_version)
        if archived is not None:
            events, positions = archived
            tail = [
                e
                async for e in self._events(key=tenant_id.encode(), start_ms=None, start_offsets=positions)
                if e.meta.tenant_id == tenant_id and e.meta.stream_id == stream_id and e.meta.version > from_version
            ]
            return sorted(_union(events, tail), key=lambda e: e.meta.version)
        start_ms = None
        snapshot = await self.latest_snapshot(tenant_id, stream_id) if from_version > 0 else None
        if snapshot is not None and from_version >= snapshot.version:
            start_ms = int((snapshot.taken_at - _SEEK_MARGIN).timestamp() * 1000)
        events = [
            e
            async for e in self._events(key=tenant_id.encode(), start_ms=start_ms)
            if e.meta.tenant_id == tenant_id and e.meta.stream_id == stream_id and e.meta.version > from_version
        ]
        return sorted(events, key=lambda e: e.meta.version)

    async def get_events_by_type(self, event_types: Sequence[str], from_timestamp: datetime, tenant_id: str | None = None) -> list[StoredEvent]:
        """Events of the given types appended at or after ``from_timestamp`` (one tenant's, if given),
        in append-time order (then partition and offset)."""
        wanted = set(event_types)
        start_ms = int(from_timestamp.timestamp() * 1000)
        archived = await self._archived(tenant=tenant_id, types=sorted(wanted), since=from_timestamp)
        events, positions = archived if archived is not None else ([], None)
        key = tenant_id.encode() if tenant_id else None
        tail = [
            e
            async for e in self._events(key=key, start_ms=start_ms, types=wanted, start_offsets=positions)
            if (tenant_id is None or e.meta.tenant_id == tenant_id) and e.timestamp_ms >= start_ms
        ]
        return sorted(_union(events, tail), key=lambda e: (e.timestamp_ms, e.partition, e.offset))

    async def load(self, tenant_id: str, stream_id: str) -> tuple[Any, int]:
        """A stream's current (state, version): its latest snapshot plus the events after it."""
        aggregate = aggregate_for_stream(stream_id)
        if aggregate is None:
            raise ValueError(f"no aggregate owns stream '{stream_id}'")
        snapshot = await self.latest_snapshot(tenant_id, stream_id)
        base_version = snapshot.version if snapshot else 0
        state = aggregate.load(snapshot.state) if snapshot else None
        tail = await self.get_events(tenant_id, stream_id, from_version=base_version)
        state = replay(aggregate, [Event(e.type, e.data) for e in tail], state)
        return state, tail[-1].meta.version if tail else base_version

    async def _archived(self, **filters: Any) -> tuple[list[StoredEvent], dict[int, int]] | None:
        """(events, next offset to read per partition) from the archive, or None to read Kafka alone."""
        self.last_read = "kafka"
        if self._archive is None:
            return None
        try:
            table, positions = await asyncio.to_thread(self._archive.events, **filters)
        except (QueryError, QueryFailed, QueryUnavailable) as exc:
            log.debug("event store: archive not used (%s); reading Kafka", exc)
            return None
        events = []
        for row in table.to_pylist():
            try:
                headers = archive_headers(row)
                name, payload = self.registry.decode(row["value"], headers)
                meta = EventMeta.from_headers(headers)
            except (SchemaError, EnvelopeError):
                continue  # as in Kafka reads: the store only returns what it can read
            appended_ms = int(row["appended_at"].timestamp() * 1000)
            events.append(StoredEvent(name, payload.model_dump(), meta, row["kafka_partition"], row["kafka_offset"], appended_ms))
        self.last_read = "archive+kafka"
        return events, {p: o + 1 for p, o in positions.items()}

    async def _events(
        self, key: bytes | None, start_ms: int | None, types: set[str] | None = None, start_offsets: Mapping[int, int] | None = None
    ) -> AsyncIterator[StoredEvent]:
        for_types = {t.encode() for t in types} if types else None
        async for record in self._scan(EVENTS_TOPIC, key=key, start_ms=start_ms, start_offsets=start_offsets):
            headers = dict(record.headers or [])
            if for_types is not None and headers.get("agentstream.schema") not in for_types:
                continue
            try:
                name, payload = self.registry.decode(record.value, record.headers)
                meta = EventMeta.from_headers(record.headers)
            except (SchemaError, EnvelopeError):
                continue  # not an event of ours; the store only returns what it can read
            yield StoredEvent(name, payload.model_dump(), meta, record.partition, record.offset, record.timestamp)

    async def _scan(
        self, topic: str, key: bytes | None = None, start_ms: int | None = None, settle_s: float = 5.0, start_offsets: Mapping[int, int] | None = None
    ):
        """Every committed record of ``topic`` up to its end now (only the key's partition if given).

        A partition starts at ``start_offsets[partition]`` when given, else at ``start_ms``
        (``offsets_for_times``) when given, else at its beginning.

        "Its end now" is the high watermark when the scan starts, so whatever was acknowledged
        before the call is read (Kafka writes a transaction's commit markers to each partition
        shortly after the commit returns). Records still in an open transaction after
        ``settle_s`` are left out.
        """
        consumer = AIOKafkaConsumer(**aiokafka_config(self.settings), enable_auto_commit=False, isolation_level="read_committed")
        try:
            await consumer.start()  # inside: a consumer that failed to start is closed too
            ordered = await topic_partitions(consumer, topic)
            if key is not None:
                ordered = [DefaultPartitioner()(key, ordered, ordered)]
            tps = [TopicPartition(topic, p) for p in ordered]
            consumer.assign(tps)
            ends = await self._high_watermarks(tps)
            starts = await consumer.offsets_for_times({tp: start_ms for tp in tps}) if start_ms is not None else {}
            for tp in tps:
                found = starts.get(tp)
                if start_offsets is not None and tp.partition in start_offsets:
                    consumer.seek(tp, start_offsets[tp.partition])
                elif found is not None:
                    consumer.seek(tp, found.offset)
                elif start_ms is not None:
                    consumer.seek(tp, ends[tp])
                else:
                    await consumer.seek_to_beginning(tp)
            pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
            idle_until = time.monotonic() + settle_s
            while pending and time.monotonic() < idle_until:
                batch = await consumer.getmany(*pending, timeout_ms=200)
                if batch:
                    idle_until = time.monotonic() + settle_s
                for tp, records in batch.items():
                    for record in records:
                        if record.offset < ends[tp]:
                            yield record
                for tp in list(pending):
                    if await consumer.position(tp) >= ends[tp]:
                        pending.discard(tp)
        finally:
            await consumer.stop()

    async def _high_watermarks(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        consumer = AIOKafkaConsumer(**aiokafka_config(self.settings), enable_auto_commit=False, isolation_level="read_uncommitted")
        try:
            await consumer.start()
            # Metadata first: without it end_offsets waits a retry backoff (100 ms) to learn the leaders.
            for topic in {tp.topic for tp in tps}:
                await topic_partitions(consumer, topic)
            return await consumer.end_offsets(tps)
        finally:
            await consumer.stop()


def _union(archived: list[StoredEvent], tail: list[StoredEvent]) -> list[StoredEvent]:
    """Archive rows and Kafka tail without repeats (a batch archived between the two reads is in both)."""
    return list({(e.partition, e.offset): e for e in [*archived, *tail]}.values())
