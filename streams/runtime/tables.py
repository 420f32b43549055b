"""State of one input partition, in memory, restored from a compacted changelog topic.

A table partition holds the committed rows (what the changelog topic holds, read
``read_committed``) and, while a batch runs, the rows that batch changed. Reads see the batch's
own changes first. At the end of a batch the runtime writes one changelog record per changed
row (coalesced: ten changes to one row are one record) in the batch's transaction; when the
transaction commits the changes become committed rows, when it aborts they are dropped. So the
memory never holds a change that Kafka does not, and no local store has to be wiped or trusted
after a crash.

Rows are JSON values (orjson); keys are text. A ``None`` value deletes the row (a tombstone in
the changelog, which compaction then removes).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

log = logging.getLogger(__name__)

_DELETED = object()


def changelog_topic(app_id: str, table: str) -> str:
    """Name of the compacted topic that holds ``table`` (the name Faust gave it, kept for existing clusters)."""
    return f"{app_id}-{table}-changelog"


class PartitionTable:
    """One partition of a table: committed rows plus the current batch's changes."""

    __slots__ = ("name", "partition", "_rows", "_pending")

    def __init__(self, name: str, partition: int, rows: dict[str, Any] | None = None) -> None:
        self.name = name
        self.partition = partition
        self._rows: dict[str, Any] = rows if rows is not None else {}
        self._pending: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        """The row under ``key`` as the current batch sees it (``default`` when there is none)."""
        pending = self._pending
        if key in pending:
            value = pending[key]
            return default if value is _DELETED else value
        return self._rows.get(key, default)

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _DELETED)
        if value is _DELETED:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return self.get(key, _DELETED) is not _DELETED  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._rows)

    def items(self) -> Iterator[tuple[str, Any]]:
        """The committed rows (not the current batch's changes), e.g. to index them on assignment."""
        return iter(self._rows.items())

    def put(self, key: str, value: Any) -> None:
        """Change a row in the current batch (``None`` deletes it); the row must not be mutated afterwards."""
        self._pending[key] = _DELETED if value is None else value

    def changes(self) -> Iterator[tuple[bytes, bytes | None]]:
        """The current batch's changes as changelog records (key, JSON value or None for a delete)."""
        for key, value in self._pending.items():
            yield key.encode(), None if value is _DELETED else orjson.dumps(value)

    @property
    def changed(self) -> bool:
        """Whether the current batch changed any row."""
        return bool(self._pending)

    def commit(self) -> None:
        """The batch's transaction committed: its changes are now committed rows."""
        rows = self._rows
        for key, value in self._pending.items():
            if value is _DELETED:
                rows.pop(key, None)
            else:
                rows[key] = value
        self._pending.clear()

    def abort(self) -> None:
        """The batch's transaction aborted: forget its changes."""
        self._pending.clear()


def restore(config: dict[str, Any], topic: str, partitions: list[int], poll_s: float = 0.05, log_every_s: float = 10.0) -> dict[int, dict[str, Any]]:
    """Read partitions of a changelog topic from the start to their end, ``read_committed``.

    The end is where librdkafka reports end-of-partition, which for a ``read_committed``
    consumer is the last stable offset: records of aborted transactions and transaction markers
    are skipped, and an open transaction of a fenced writer (which can only abort) is not
    waited for. Returns the rows per partition (the last value per key; deletes removed).
    """
    rows: dict[int, dict[str, Any]] = {p: {} for p in partitions}
    if not partitions:
        return rows
    consumer = Consumer(
        {
            **config,
            "group.id": f"{topic}-restore",  # never joins: partitions are assigned, offsets never committed
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "fetch.wait.max.ms": 10,  # an empty partition's end is known after one fetch: do not let it idle
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        waiting = set(partitions)
        started = last_note = time.monotonic()
        count = 0
        while waiting:
            # consume() waits its whole timeout when fewer records are there: keep it short
            for message in consumer.consume(10_000, timeout=poll_s):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        waiting.discard(message.partition())
                        continue
                    if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                        raise KafkaException(error)
                    log.warning("restoring %s: %s", topic, error)
                    continue
                value = message.value()
                table = rows[message.partition()]
                key = message.key().decode()
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = orjson.loads(value)
                count += 1
            now = time.monotonic()
            if waiting and now - last_note > log_every_s:
                log.info("restoring %s: %d records read, partitions %s not at their end yet", topic, count, sorted(waiting))
                last_note = now
        log.info("restored %s partitions %s: %d records, %d rows in %.2fs", topic, partitions, count, sum(map(len, rows.values())), time.monotonic() - started)
        return rows
    finally:
        consumer.close()
