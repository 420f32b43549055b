"""The ``drift_detector`` agent: the drift monitor (``streams.drift``) on the task facts, exactly once.

Each batch of one ``facts.tasks`` partition goes through ``streams.drift.batch.detect``: the
alerts it raises are sent to ``alerts.drift`` (key: tenant) and the changed detector states are
written to the ``drift_state`` table, so the runtime commits alerts, states and input offsets in
one transaction. The table is co-partitioned with ``facts.tasks`` (its keys,
``tenant/agent_type/metric``, start with the tenant the facts are keyed by). Its rows are JSON
values, so a state's versioned bytes are stored as base64 text.

What the runtime does not tell a processor, and how this agent copes:

- *An aborted batch.* The runtime drops the batch's table changes and redoes it from its first
  offset, but the monitor's detectors in memory have already seen it. A batch that starts at or
  before the last offset this processor saw for its partition is such a redo: the partition's
  keys are evicted first, so each detector is restored from the committed row on first sight and
  the redo computes what the aborted batch did (``detect`` is deterministic).
- *The commit.* The Redis model of the latest alert (``streams.drift_latest``) is written only
  once the batch is known to have committed: a batch with alerts remembers one state row it
  wrote; at the next tick (or the partition's next batch, or its revocation) the table's
  committed row equals it if the transaction committed, and not if it aborted (then the alerts
  are dropped; the redo raises them again). So Redis never shows an alert that
  ``alerts.drift`` does not hold, even when the detectors' declaration changed in between. While
  Redis is down committed alerts wait (``OUTBOX_LIMIT``) and are retried each tick. A crash
  between commit and the Redis write loses that write; ``record`` is a compare-and-set by alert
  order, so a later writer (a replay from ``alerts.drift``) can fill it in.
- *A revoked partition.* Its committed alerts go to Redis, then its keys are evicted, so a
  partition that comes back restores them from the changelog.
"""

from __future__ import annotations

import base64
import logging
from typing import Any, Mapping, Sequence

import orjson

from connectors.redis_store import redis_client
from schemas.topics import FACTS
from schemas.topology import DriftSpec
from streams import drift_latest
from streams.drift import DriftMonitor
from streams.drift.batch import detect
from streams.runtime import AgentContext, Batch, Outputs, PartitionTable, ProcessorBase, RuntimeAgent

log = logging.getLogger(__name__)

TABLE = "drift_state"
#: Committed alerts kept for Redis while it is unreachable (the oldest are dropped beyond this).
OUTBOX_LIMIT = 10_000


def encode_state(data: bytes) -> str:
    """A state's bytes as the table's JSON value (base64 text)."""
    return base64.b64encode(data).decode("ascii")


def decode_state(value: Any) -> bytes | None:
    """A table value back to the state's bytes; None for a value that is not base64 text (that key starts afresh)."""
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        log.warning("drift_detector: a drift_state row is not base64 text; its key starts afresh")
        return None


class DriftDetector(ProcessorBase):
    """Feeds each partition's facts to one monitor; sends alerts and states; tells Redis after the commit."""

    def __init__(self, context: AgentContext) -> None:
        spec = context.topology.drift or DriftSpec()
        self.alerts_topic = spec.alerts_topic
        self.settings = context.settings
        self.monitor = DriftMonitor(spec, restore=self._restore)
        self._table: PartitionTable | None = None  # the table of the batch in hand, for ``restore``
        self._tables: dict[int, PartitionTable] = {}
        self._keys: dict[int, set[str]] = {}  # partition -> state keys its batches touched
        self._last: dict[int, int] = {}  # partition -> last offset handed to ``process``
        #: partition -> (a state key the batch wrote, its value, the batch's alerts): waiting for the commit
        self._unconfirmed: dict[int, tuple[str, str, list[dict[str, Any]]]] = {}
        self._outbox: list[dict[str, Any]] = []  # committed alerts not yet in Redis, oldest first
        self._redis: Any = None
        self.redone = 0  # batches recognised as redone after an abort

    def _restore(self, key: str) -> bytes | None:
        return decode_state(self._table.get(key)) if self._table is not None else None

    # --- the batch ------------------------------------------------------------------------

    def process(self, batch: Batch, out: Outputs) -> None:
        """Detect on the batch's facts in order; send the alerts; write the changed states."""
        partition, table = batch.partition, batch.tables[TABLE]
        self._tables[partition] = table
        self._confirm(partition)
        first = batch.messages[0].offset()
        if first <= self._last.get(partition, -1):  # the previous batch aborted and is being redone
            self.redone += 1
            self._evict(partition)
        records = []
        for message in batch.messages:
            try:
                fact = orjson.loads(message.value() or b"")
            except orjson.JSONDecodeError:
                fact = None  # counted as "not a JSON object" by detect
            records.append((partition, message.offset(), fact))
        self._table = table
        try:
            result = detect(self.monitor, records)
        finally:
            self._table = None
        self._last[partition] = batch.messages[-1].offset()
        for key, value in result.alerts:
            out.send(self.alerts_topic, key, value)
        keys = self._keys.setdefault(partition, set())
        marker: tuple[str, str] | None = None
        for key, data in result.states.items():
            value = encode_state(data)
            table.put(key, value)
            keys.add(key)
            marker = (key, value)
        if result.alerts and marker is not None:
            self._unconfirmed[partition] = (*marker, [orjson.loads(value) for _, value in result.alerts])

    def tick(self, partition: int, tables: Mapping[str, PartitionTable], out: Outputs, now: float) -> None:
        """Write the alerts of the partition's last batch to Redis once it has committed."""
        self._tables[partition] = tables[TABLE]
        self._confirm(partition)

    # --- partitions -----------------------------------------------------------------------

    def assigned(self, partitions: Sequence[int], tables: Mapping[int, Mapping[str, PartitionTable]]) -> None:
        """Keep the new partitions' tables (detectors are restored lazily, on a key's first fact)."""
        for partition in partitions:
            self._tables[partition] = tables[partition][TABLE]

    def revoked(self, partitions: Sequence[int]) -> None:
        """Finish the partitions' Redis writes, then forget their detectors."""
        for partition in partitions:
            self._confirm(partition)
            self._evict(partition)
            self._tables.pop(partition, None)
            self._last.pop(partition, None)

    def _evict(self, partition: int) -> None:
        for key in self._keys.pop(partition, ()):
            self.monitor.evict(key)

    # --- after the commit -----------------------------------------------------------------

    def _confirm(self, partition: int) -> None:
        """Move the partition's waiting alerts to the outbox if their batch committed, drop them if it aborted; flush."""
        waiting = self._unconfirmed.pop(partition, None)
        if waiting is not None:
            key, value, alerts = waiting
            table = self._tables.get(partition)
            if table is not None and table.get(key) == value:
                self._outbox.extend(alerts)
            # else: aborted; the redo raises them again
        if self._outbox:
            self._flush()

    def _flush(self) -> None:
        """Write the committed alerts to Redis; on failure keep them (bounded) for the next try."""
        try:
            if self._redis is None:
                self._redis = redis_client(self.settings)
            while self._outbox:
                drift_latest.record(self._redis, self._outbox[0])
                self._outbox.pop(0)
        except Exception as exc:  # Redis down: the commit stands, the read model catches up later
            self._redis = None
            if len(self._outbox) > OUTBOX_LIMIT:
                del self._outbox[: len(self._outbox) - OUTBOX_LIMIT]
            log.warning("drift_detector: %d committed alerts not written to Redis yet (%s); retrying on the next tick", len(self._outbox), exc)

AGENT = RuntimeAgent(
    name="drift_detector",
    inputs=(FACTS,),
    tables=(TABLE,),
    build=DriftDetector,
    tick_interval_s=0.5,
    description="Drift and anomaly detection per tenant and agent type on the task facts; alerts exactly once.",
)
