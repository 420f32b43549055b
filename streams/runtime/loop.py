"""The batched exactly-once loop of one agent: a consumer group member and a transactional producer.

Each turn takes the records that are there (``consume`` returns at once with what the client
has fetched, so a batch grows with load and an idle partition never waits for a timer), hands
each input partition's records to the agent's processor in offset order, and commits what they
caused in one Kafka transaction. ``_commit`` owns the order:

1. the records the batch caused (events, results, snapshots, dead letters, facts...);
2. one changelog record per table row the batch changed, to the row's partition;
3. the input offsets, with the consumer group's metadata (KIP-447: a worker that lost the
   partition in a rebalance has a stale generation, and the broker refuses its offsets);
4. ``commit_transaction``: everything above becomes visible to ``read_committed`` readers at
   once, or (any failure) the transaction is aborted, the batch's table changes are dropped and
   the consumer is sent back to the batch's first offsets, so the batch is redone whole.

An agent with a ``tick_interval_s`` is also called on wall-clock time for every partition it
owns, whether records arrive or not (a saga's due deadlines); what a tick causes commits the
same way, without input offsets.

The commit is the only network wait of a turn. On assignment the loop fetches the committed
offsets (``read_committed`` consumers ask for *stable* offsets, so an offset commit still
pending in another worker's transaction is waited for), then restores the partitions' tables
from their changelogs up to the last stable offset, then resumes from those offsets: the
tables and the offsets are always those of the same committed transactions. On revocation
nothing is in flight (callbacks run inside ``consume``, between turns), so the tables of the
revoked partitions are dropped. The transactional id is stable per worker and agent, so a
restarted worker fences its previous incarnation and aborts the transaction it left open.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from connectors.kafka_config import confluent_config
from schemas.messages import ERROR_HEADER, REASON_HEADER
from streams.runtime.agent import AgentContext, Batch, BatchProcessor, Outputs, RuntimeAgent
from streams.runtime.tables import PartitionTable, changelog_topic, restore

log = logging.getLogger(__name__)


class OversizeRow(RuntimeError):
    """A table row larger than the broker takes: the agent must keep its rows smaller (logged, batch redone)."""


@dataclass
class LoopStats:
    """What a loop has done since it started (read by the status page and the demo)."""

    batches: int = 0
    records: int = 0
    aborted: int = 0
    restored_rows: int = 0
    partitions: list[int] = field(default_factory=list)
    first_batch_at: float | None = None  # time.monotonic() of this process
    last_commit_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready values."""
        return asdict(self)


class ExactlyOnceLoop:
    """Runs one agent on this worker until ``stop`` is set; see the module docstring for the protocol."""

    def __init__(self, agent: RuntimeAgent, context: AgentContext, instance: str, stop: threading.Event, max_batch: int = 5000) -> None:
        self.agent = agent
        self.context = context
        self.settings = context.settings
        self.instance = instance
        self.stop = stop
        self.max_batch = max_batch
        self.stats = LoopStats()
        self.group_id = agent.group_id(self.settings.app_id)
        self.transactional_id = f"{self.group_id}-{instance}"
        self.sources = [*agent.inputs, *agent.internal_topics]  # an agent consumes its internal topics too
        self.changelogs = {table: changelog_topic(self.settings.app_id, table) for table in agent.tables}
        self.max_record_bytes = self.settings.kafka_max_record_bytes
        self._base = confluent_config(self.settings)
        self._processor: BatchProcessor | None = None
        self._tables: dict[int, dict[str, PartitionTable]] = {}
        self._owned: set[tuple[str, int]] = set()

    # --- running -------------------------------------------------------------------------

    def run(self) -> None:
        """The thread body: a session of clients, built again after a fatal client error."""
        backoff = 0.5
        while not self.stop.is_set():
            try:
                self._session()
                backoff = 0.5
            except Exception:
                log.exception("%s: the loop failed; starting it again in %.1fs", self.agent.name, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _session(self) -> None:
        self._processor = self.agent.build(self.context)
        self._tables.clear()
        self._owned.clear()
        producer = Producer(
            {
                **self._base,
                "transactional.id": self.transactional_id,
                "enable.idempotence": True,
                "transaction.timeout.ms": int(self.settings.kafka_transaction_timeout_s * 1000),
                "partitioner": "murmur2_random",  # the partitioner of Java clients and aiokafka
                "linger.ms": 2,
                "message.max.bytes": self.max_record_bytes + 64 * 1024,
                "logger": log,
            }
        )
        producer.init_transactions(60)  # fences a previous incarnation and aborts what it left open
        consumer = Consumer(
            {
                **self._base,
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "range",  # co-partitioned inputs land together
                "session.timeout.ms": int(self.settings.kafka_session_timeout_s * 1000),
                "heartbeat.interval.ms": max(500, int(self.settings.kafka_session_timeout_s * 200)),
                "max.poll.interval.ms": 300_000,
                "fetch.wait.max.ms": 100,
                "logger": log,
            }
        )
        consumer.subscribe(self.sources, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)
        log.info("%s: consuming %s as %s (transactional id %s)", self.agent.name, ", ".join(self.sources), self.group_id, self.transactional_id)
        tick = self.agent.tick_interval_s
        next_tick = time.monotonic() + (tick or 0)
        try:
            while not self.stop.is_set():
                messages = self._take(consumer)
                if messages:
                    self._turn(consumer, producer, messages)
                if tick is not None and time.monotonic() >= next_tick:
                    self._tick(consumer, producer)
                    next_tick = time.monotonic() + tick
        finally:
            consumer.close()  # leaves the group: the partitions move at once (revocation runs here)
            producer.flush(5)

    def _take(self, consumer: Consumer) -> list[Message]:
        """The records that are there: wait for one (briefly), then take what has been fetched."""
        first = consumer.consume(1, timeout=0.2)
        if not first:
            return []
        return first + consumer.consume(self.max_batch - 1, timeout=0)

    # --- one turn ------------------------------------------------------------------------

    def _turn(self, consumer: Consumer, producer: Producer, messages: list[Message]) -> None:
        by_partition: dict[tuple[str, int], list[Message]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s: consumer: %s", self.agent.name, error)
                continue
            tp = (message.topic(), message.partition())
            if tp in self._owned:
                by_partition.setdefault(tp, []).append(message)
        if not by_partition:
            return
        if self.stats.first_batch_at is None:
            self.stats.first_batch_at = time.monotonic()
        assert self._processor is not None
        out = Outputs()
        touched: list[dict[str, PartitionTable]] = []
        producer.begin_transaction()
        try:
            for (topic, partition), batch in by_partition.items():
                tables = self._tables[partition]
                self._processor.process(Batch(topic, partition, batch, tables), out)
                touched.append(tables)
            self._commit(consumer, producer, out, touched, by_partition)
        except Exception as exc:
            self._abort(consumer, producer, touched, by_partition, exc)
            return
        for tables in touched:
            for table in tables.values():
                table.commit()
        self.stats.batches += 1
        self.stats.records += sum(map(len, by_partition.values()))
        self.stats.last_commit_at = time.monotonic()

    def _tick(self, consumer: Consumer, producer: Producer) -> None:
        """Let the processor act on wall-clock time (due deadlines) for every partition it owns.

        What the ticks cause commits in one transaction with no input offsets; if it fails, the
        table changes are dropped and the next tick decides again from the committed rows.
        """
        assert self._processor is not None
        out = Outputs()
        now = time.time()
        touched = []
        for partition, tables in list(self._tables.items()):
            self._processor.tick(partition, tables, out, now)
            touched.append(tables)
        if not out.records and not any(t.changed for tables in touched for t in tables.values()):
            return
        producer.begin_transaction()
        try:
            self._commit(consumer, producer, out, touched, {})
        except Exception as exc:
            for tables in touched:
                for table in tables.values():
                    table.abort()
            log.warning("%s: tick aborted (%s); the next tick decides again", self.agent.name, exc)
            if isinstance(exc, KafkaException) and exc.args and exc.args[0].fatal():
                raise
            try:
                producer.abort_transaction(60)
            except KafkaException as abort_error:
                if abort_error.args and abort_error.args[0].fatal():
                    raise
            return
        for tables in touched:
            for table in tables.values():
                table.commit()

    def _commit(
        self,
        consumer: Consumer,
        producer: Producer,
        out: Outputs,
        touched: list[dict[str, PartitionTable]],
        by_partition: dict[tuple[str, int], list[Message]],
    ) -> None:
        produce = producer.produce
        limit = self.max_record_bytes
        near = limit - 64 * 1024  # below this, our own keys and headers cannot take a record over the limit
        deadletter = self.agent.deadletter  # carries the input's own headers, whatever their size
        # 1. What the batch caused.
        for topic, key, value, headers, partition in out.records:
            if len(value or b"") > near or topic == deadletter:
                size = len(value or b"") + len(key or b"") + sum(len(k) + len(v or b"") for k, v in headers or ())
                if size > limit:  # the broker would refuse it and the batch would be redone forever
                    topic, key, value, headers, partition = self._oversize(topic, key, size)
                    if topic is None:
                        continue
            self._produce(produce, producer, topic, key, value, headers, -1 if partition is None else partition)
        # 2. One changelog record per changed row.
        for tables in touched:
            for name, table in tables.items():
                if table.changed:
                    for key, value in table.changes():
                        if value is not None and len(value) > limit:
                            # A state row cannot be dead-lettered: stop this batch loudly rather than lose the change.
                            raise OversizeRow(f"row {key.decode()!r} of table {name} is {len(value)} bytes, over the record limit of {limit}")
                        self._produce(produce, producer, self.changelogs[name], key, value, None, table.partition)
        # 3. The input offsets, fenced by the group's generation (a tick has none).
        if by_partition:
            offsets = [TopicPartition(topic, partition, batch[-1].offset() + 1) for (topic, partition), batch in by_partition.items()]
            producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 60)
        # 4. Commit (flushes what is still buffered); retried while the broker says it may be.
        while True:
            try:
                producer.commit_transaction(60)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.retriable() and not self.stop.is_set():
                    log.warning("%s: commit: %s; retrying", self.agent.name, error)
                    continue
                raise

    def _oversize(self, topic: str, key: bytes | None, size: int) -> tuple[Any, bytes | None, bytes | None, Any, int | None]:
        """What to write instead of a record the broker would refuse: a dead letter saying so, or nothing."""
        reason = f"a record of {size} bytes for {topic} is over the limit of {self.max_record_bytes}"
        log.error("%s: %s; %s", self.agent.name, reason, f"dead-lettered to {self.agent.deadletter}" if self.agent.deadletter else "dropped")
        if not self.agent.deadletter:
            return None, None, None, None, None
        headers = [(REASON_HEADER, b"oversize-output"), (ERROR_HEADER, reason.encode())]
        return self.agent.deadletter, key, None, headers, None

    @staticmethod
    def _produce(produce: Callable[..., None], producer: Producer, topic: str, key: Any, value: Any, headers: Any, partition: int) -> None:
        while True:
            try:
                produce(topic, value, key, partition=partition, headers=headers)
                return
            except BufferError:  # the client's queue is full: let it send, then try again
                producer.poll(0.05)

    def _abort(
        self,
        consumer: Consumer,
        producer: Producer,
        touched: list[dict[str, PartitionTable]],
        by_partition: dict[tuple[str, int], list[Message]],
        exc: Exception,
    ) -> None:
        for tables in self._tables.values():
            for table in tables.values():
                table.abort()
        fatal = isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError) and exc.args[0].fatal()
        if fatal:
            raise exc  # e.g. fenced by another process with this transactional id: start a new session
        (log.error if isinstance(exc, OversizeRow) else log.warning)(
            "%s: batch of %d records aborted (%s); redoing it from its first offsets", self.agent.name, sum(map(len, by_partition.values())), exc
        )
        self.stats.aborted += 1
        try:
            producer.abort_transaction(60)
        except KafkaException as abort_error:
            if abort_error.args and abort_error.args[0].fatal():
                raise
            log.warning("%s: abort: %s", self.agent.name, abort_error)
        for (topic, partition), batch in by_partition.items():
            if (topic, partition) in self._owned:
                try:
                    consumer.seek(TopicPartition(topic, partition, batch[0].offset()))
                except KafkaException as seek_error:  # taken away meanwhile: its new owner redoes it
                    log.info("%s: %s[%d] not sought back: %s", self.agent.name, topic, partition, seek_error)
        if not isinstance(exc, KafkaException):
            self.stop.wait(1.0)  # a processor error: do not spin on it

    # --- rebalances ----------------------------------------------------------------------

    def _committed(self, consumer: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
        waited = 0.0
        while True:
            try:
                return consumer.committed(partitions, timeout=10)
            except KafkaException as exc:
                waited += 10
                log.warning("%s: committed offsets not stable yet after %.0fs (%s): a transaction of the previous owner is still open", self.agent.name, waited, exc.args[0])
                if self.stop.is_set():
                    raise

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        started = time.monotonic()
        committed = self._committed(consumer, partitions) if partitions else []
        fresh = sorted({tp.partition for tp in partitions} - set(self._tables))
        restored = {table: restore(self._base, topic, fresh) for table, topic in self.changelogs.items()}
        for partition in fresh:
            self._tables[partition] = {table: PartitionTable(table, partition, restored[table][partition]) for table in self.agent.tables}
        self.stats.restored_rows += sum(len(rows) for per_table in restored.values() for rows in per_table.values())
        assert self._processor is not None
        self._processor.assigned(fresh, {p: self._tables[p] for p in fresh})
        self._owned |= {(tp.topic, tp.partition) for tp in partitions}
        self.stats.partitions = sorted({p for _, p in self._owned})
        consumer.assign([TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING) for tp in committed])
        log.info(
            "%s: assigned %s in %.2fs (offsets %s)",
            self.agent.name,
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing",
            time.monotonic() - started,
            {f"{tp.topic}[{tp.partition}]": tp.offset for tp in committed},
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._owned -= gone
        dropped = sorted({p for _, p in gone} - {p for _, p in self._owned})
        for partition in dropped:
            self._tables.pop(partition, None)
        if self._processor is not None and dropped:
            self._processor.revoked(dropped)
        self.stats.partitions = sorted({p for _, p in self._owned})
        log.info("%s: revoked %s", self.agent.name, ", ".join(f"{t}[{p}]" for t, p in sorted(gone)) or "nothing")
