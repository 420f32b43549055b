"""Kafka records into a ClickHouse table exactly once: deterministic batches per partition + dedup tokens.

``TableSink`` is the protocol; ``FactsSink`` feeds a cube's facts table from ``facts.tasks`` and
``sinks.events_archive.ArchiveSink`` the events archive from ``events.platform``. Each table
ends in the bookkeeping columns ``BOOKKEEPING_COLUMNS`` (Kafka position and batch bounds).

How exactly-once works (read this before wiring the sink into a consumer)
-------------------------------------------------------------------------
One ``TableSink`` serves one Kafka topic; it buffers rows per partition and writes a batch
per partition when it reaches ``batch_size`` rows, when ``flush()`` is called (the caller's
~1 s timer, see ``due()``), or when a re-sent batch is complete (below).

1. Every batch is identified by (topic, partition, first offset, last offset) of its rows and
   inserted with ``insert_deduplication_token = "<db.table>:<topic>:<partition>:<first>:<last>"``.
   ClickHouse drops an insert whose token it has already seen: the table and every table a
   materialized view feeds from it (they dedup on their own, see sinks/clickhouse_schema.py).
2. Each row also stores its batch's (first, last) offsets (``sink_batch_first``/``_last``).
3. The caller commits to Kafka only ``committable()`` offsets, which only ever move past rows
   that ClickHouse acknowledged (or that the caller ``skip()``-ed). So after a crash the
   consumer restarts at the first offset of a batch that was maybe written, maybe not.
4. On the first row of a partition (after start or re-assignment) the sink asks ClickHouse
   which batches already hold rows at or beyond that offset. Those batches are *re-sent
   exactly*: the sink cuts at their recorded boundaries, so the re-sent batch has the same
   token and the same rows. ClickHouse deduplicates it in the facts table, and a cube table that
   missed it (the process died between the table's part and the view's part: checked on chdb,
   a re-sent token repairs the view) gets it now. The 1 s timer cannot break this: an early,
   short batch [first, x] is recorded as such in its rows and re-sent as such.
5. Rows at or below ``resume_offsets()`` (the max offset in ClickHouse) that cannot be re-sent
   exactly (the committed offset lies inside a recorded batch, which only happens if something
   other than ``committable()`` moved the commit) are skipped: no double count, no repair.
6. After the re-sent batches, new batches are cut freely (size, timer).

What the integrator must guarantee:
- Commit only ``committable()`` offsets (never Faust's automatic ack of unflushed events).
- Rows are a pure function of the Kafka record (same record -> same row): tokens ignore the
  content, so a row that changed on replay would be deduplicated away silently.
- Records that yield no row: call ``skip(partition, offset)`` so commits can move past them.
- On partition revocation call ``revoke(partitions)`` (drops the unflushed rows; the new owner
  re-reads them) and stop a flush in progress: a zombie writer could insert a batch the new
  owner cuts differently. On shutdown call ``close()``: it aborts waiting retries.
- The dedup window (``DEDUP_WINDOW`` blocks per table) must cover all blocks inserted between a
  batch and its re-send; with 10k-row batches and a 1 s timer that is many minutes of traffic.
- ``flush`` blocks (and retries forever while ClickHouse is down): run it off the event loop
  (``asyncio.to_thread``) so the rest of the worker keeps running, and pause the partition.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from clickhouse_connect.driver.client import Client

from sinks.clickhouse_schema import BOOKKEEPING_COLUMNS, cube_tables
from schemas.topology import CubeSpec

T = TypeVar("T")

#: Row fields the caller supplies (the sink adds the Kafka and batch bookkeeping).
FACT_FIELDS: tuple[str, ...] = ("tenant", "agent_id", "agent_type", "region", "task_id", "outcome", "response_time_ms", "cost", "event_time")
_BOOKKEEPING = [name for name, _ in BOOKKEEPING_COLUMNS]
_UINT32_MAX = 2**32 - 1


class InvalidRow(ValueError):
    """A record the table cannot hold; it is rejected at ``add`` so no batch is poisoned."""


class InvalidFact(InvalidRow):
    """A fact the facts table cannot hold."""


class SinkClosed(RuntimeError):
    """The sink was closed (shutdown or revocation) while it was waiting to retry."""


@dataclass(frozen=True)
class RetryInfo:
    """One failed attempt: what failed, how often in a row, and how long the sink now waits."""

    operation: str
    attempt: int
    wait_s: float
    error: BaseException


@dataclass
class _Partition:
    rows: list[list[Any]] = field(default_factory=list)
    first: int | None = None
    last: int | None = None
    started: float | None = None
    seen: int = -1  # highest offset added or skipped
    planned: bool = False
    replay: deque[tuple[int, int]] = field(default_factory=deque)  # recorded batches to re-send exactly
    replaying: tuple[int, int] | None = None  # the recorded batch the buffer is rebuilding
    skip_upto: int = -1


def _event_time(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return dt.datetime.fromtimestamp(value / 1000, dt.timezone.utc)  # epoch milliseconds
    if isinstance(value, str):
        return _event_time(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
    raise InvalidFact(f"event_time must be a datetime, epoch milliseconds or ISO-8601 text, got {value!r}")


def fact_row(row: Any) -> list[Any]:
    """The row's fact fields checked and converted, in ``FACT_FIELDS`` order (InvalidFact if not)."""
    if not isinstance(row, Mapping):
        raise InvalidFact(f"a fact is a JSON object, got {type(row).__name__}")
    missing = [f for f in FACT_FIELDS if f not in row]
    if missing:
        raise InvalidFact(f"fact is missing {', '.join(missing)}")
    for name in ("tenant", "agent_id", "agent_type", "region", "task_id"):
        if not isinstance(row[name], str):
            raise InvalidFact(f"{name} must be text, got {row[name]!r}")
    if row["outcome"] not in ("completed", "failed"):
        raise InvalidFact(f"outcome must be 'completed' or 'failed', got {row['outcome']!r}")
    rt = row["response_time_ms"]
    if isinstance(rt, float) and rt.is_integer():
        rt = int(rt)
    if not isinstance(rt, int) or isinstance(rt, bool) or not 0 <= rt <= _UINT32_MAX:
        raise InvalidFact(f"response_time_ms must be a whole number of ms in [0, 2^32), got {row['response_time_ms']!r}")
    cost = row["cost"]
    if not isinstance(cost, (int, float)) or isinstance(cost, bool) or not math.isfinite(cost):
        raise InvalidFact(f"cost must be a finite number, got {cost!r}")
    try:
        when = _event_time(row["event_time"])
    except ValueError as exc:
        raise InvalidFact(f"bad event_time {row['event_time']!r}: {exc}") from exc
    return [row["tenant"], row["agent_id"], row["agent_type"], row["region"], row["task_id"], row["outcome"], rt, float(cost), when]


def retry_forever(
    operation: str,
    call: Callable[[], T],
    closed: threading.Event,
    *,
    initial_s: float = 0.1,
    max_s: float = 30.0,
    on_retry: Callable[[RetryInfo], None] | None = None,
    fatal: tuple[type[BaseException], ...] = (),
) -> T:
    """``call()``'s result, retrying on any exception but ``fatal`` ones with exponential backoff until it succeeds.

    Raises SinkClosed (abandoning the call) once ``closed`` is set, also in the middle of a wait.
    ``on_retry`` hears of every failed attempt (ClickHouse down: the caller logs, never drops).
    """
    attempt, wait = 0, initial_s
    while True:
        if closed.is_set():
            raise SinkClosed(f"{operation} abandoned: the sink is closed")
        try:
            return call()
        except fatal:
            raise
        except Exception as exc:  # noqa: BLE001 - ClickHouse down or failing: wait, never drop
            attempt += 1
            if on_retry is not None:
                on_retry(RetryInfo(operation, attempt, wait, exc))
            if closed.wait(wait):
                raise SinkClosed(f"{operation} abandoned: the sink is closed") from exc
            wait = min(wait * 2, max_s)


class TableSink:
    """Batching, exactly-once writer of one topic's records into one ClickHouse table.

    ``to_row`` turns what the caller passes to ``add`` into the values of ``columns`` (raising
    InvalidRow when it cannot); the table has those columns followed by the bookkeeping ones.
    Not thread-safe: one consumer task drives it (``flush`` may run in a worker thread as long
    as nothing else calls the sink meanwhile). See the module docstring for the protocol.
    """

    #: The table must stay a prefix of the topic: a consumer re-reads what ClickHouse lacks below
    #: the committed offset (sinks/sink_consumer.py). Off where a TTL may delete a partition's
    #: newest rows: re-reading them would count them again in the views.
    keeps_prefix: bool = False

    def __init__(
        self,
        client: Client,
        table: str,
        topic: str,
        columns: Sequence[str],
        to_row: Callable[[Any], list[Any]],
        *,
        batch_size: int = 10_000,
        max_delay_s: float = 1.0,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 30.0,
        on_retry: Callable[[RetryInfo], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        client_lock: threading.Lock | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._client = client
        self.table = table
        self.topic = topic
        self._columns = [*columns, *_BOOKKEEPING]
        self._to_row = to_row
        self.batch_size = batch_size
        self.max_delay_s = max_delay_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._on_retry = on_retry
        self._clock = clock
        # Held around each ClickHouse call only, never while waiting to retry: others sharing
        # the client (the query API) keep working during an outage.
        self._client_lock: contextlib.AbstractContextManager[Any] = client_lock or contextlib.nullcontext()
        self._closed = threading.Event()
        self._parts: dict[int, _Partition] = {}
        #: Batches inserted by this sink (partition, first, last), for tests and metrics.
        self.inserted_batches: list[tuple[int, int, int]] = []

    # --- the caller's side ------------------------------------------------------------

    def add(self, partition: int, offset: int, record: Any) -> None:
        """Buffer the row of the record read at (partition, offset); may write a batch before returning.

        Offsets of a partition must arrive in increasing order; an offset at or below one already
        seen is ignored (redelivery). A row that ClickHouse already holds is skipped or re-sent
        in its original batch (module docstring). Raises InvalidRow, buffering nothing, for a
        record the table cannot hold (the caller dead-letters or logs it and calls ``skip``).
        """
        values = self._to_row(record)
        part = self._part(partition, offset)
        if offset <= part.seen:
            return
        part.seen = offset
        while part.replay and part.replay[0][1] < offset:
            part.replay.popleft()  # its rows were never re-read (e.g. skipped): they are in ClickHouse
        if part.replay and part.replay[0][0] <= offset:
            first, last = part.replay[0]
            if part.rows and part.replaying != (first, last):
                self._write(partition, part, token_range=part.replaying)
            part.replaying = (first, last)
            self._append(part, offset, values)
            if offset == last:
                part.replay.popleft()
                self._write(partition, part, token_range=(first, last))
            return
        if offset <= part.skip_upto:
            return
        if part.replaying is not None:
            # The recorded batch's last row never came; write what we have under the recorded
            # token: ClickHouse drops it if the batch is in, which it is (its rows are).
            self._write(partition, part, token_range=part.replaying)
        self._append(part, offset, values)
        if len(part.rows) >= self.batch_size:
            self._write(partition, part)

    def skip(self, partition: int, offset: int) -> None:
        """Mark an offset that yields no row (other message, rejected) as handled."""
        part = self._part(partition, offset)
        part.seen = max(part.seen, offset)

    def due(self) -> bool:
        """True when some partition's buffer is older than ``max_delay_s`` (time to ``flush``)."""
        now = self._clock()
        return any(p.started is not None and p.replaying is None and now - p.started >= self.max_delay_s for p in self._parts.values())

    def flush(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """Write the buffered rows of the partitions (all by default); return ``committable()``.

        Blocks until ClickHouse has acknowledged them, retrying forever with backoff. A batch
        being re-sent from its recorded boundaries stays buffered until its last row arrives.
        """
        chosen = self._parts if partitions is None else {p: self._parts[p] for p in partitions if p in self._parts}
        for number, part in sorted(chosen.items()):
            if part.rows and part.replaying is None:
                self._write(number, part)
        return self.committable()

    def committable(self) -> dict[int, int]:
        """Per partition, the next offset to commit: every offset below it is in ClickHouse or skipped."""
        return {n: (p.first if p.rows else p.seen + 1) for n, p in self._parts.items() if p.seen >= 0 or p.rows}  # type: ignore[misc]

    def revoke(self, partitions: Iterable[int]) -> None:
        """Forget the partitions (their unflushed rows are re-read by their next owner)."""
        for number in partitions:
            self._parts.pop(number, None)

    def close(self) -> None:
        """Stop: a flush waiting to retry raises SinkClosed instead of waiting on."""
        self._closed.set()

    def resume_offsets(self, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """Per partition of this topic, the highest Kafka offset already in the table."""
        sql = f"SELECT kafka_partition, max(kafka_offset) FROM {self.table} WHERE kafka_topic = {{topic:String}} GROUP BY kafka_partition"
        rows = self._retrying("resume", lambda: self._client.query(sql, parameters={"topic": self.topic}).result_rows)
        wanted = None if partitions is None else set(partitions)
        return {int(p): int(o) for p, o in rows if wanted is None or p in wanted}

    # --- internals --------------------------------------------------------------------

    def _part(self, partition: int, offset: int) -> _Partition:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Partition()
        if not part.planned:
            self._plan(partition, part, offset)
        return part

    def _plan(self, partition: int, part: _Partition, offset: int) -> None:
        """Learn which batches ClickHouse holds at or beyond ``offset`` (the restart point)."""
        sql = (
            f"SELECT sink_batch_first, sink_batch_last FROM {self.table} "
            "WHERE kafka_topic = {topic:String} AND kafka_partition = {partition:UInt32} AND kafka_offset >= {offset:UInt64} "
            "GROUP BY sink_batch_first, sink_batch_last ORDER BY sink_batch_first"
        )
        params = {"topic": self.topic, "partition": partition, "offset": offset}
        batches = self._retrying("plan", lambda: self._client.query(sql, parameters=params).result_rows)
        for first, last in batches:
            if first >= offset:
                part.replay.append((int(first), int(last)))
            else:  # started before the restart point: cannot be rebuilt, its rows are in
                part.skip_upto = max(part.skip_upto, int(last))
        # Rows beyond every recorded batch cannot be in ClickHouse; max() catches anything else.
        top = self.resume_offsets([partition]).get(partition, -1)
        if not part.replay:
            part.skip_upto = max(part.skip_upto, top)
        part.planned = True

    def _append(self, part: _Partition, offset: int, values: list[Any]) -> None:
        if not part.rows:
            part.first, part.started = offset, self._clock()
        part.rows.append([*values, offset])
        part.last = offset

    def _write(self, partition: int, part: _Partition, token_range: tuple[int, int] | None = None) -> None:
        first, last = token_range or (part.first, part.last)
        assert first is not None and last is not None
        rows = [[*r[:-1], self.topic, partition, r[-1], first, last] for r in part.rows]
        settings = {
            "insert_deduplication_token": f"{self.table}:{self.topic}:{partition}:{first}:{last}",
            # Explicit, as server defaults differ between versions and ClickHouse Cloud.
            "insert_deduplicate": 1,
            "deduplicate_blocks_in_dependent_materialized_views": 1,
            "async_insert": 0,
        }
        self._retrying("insert", lambda: self._client.insert(self.table, rows, column_names=self._columns, settings=settings))
        self.inserted_batches.append((partition, first, last))
        part.rows, part.first, part.last, part.started, part.replaying = [], None, None, None, None

    def _retrying(self, operation: str, call: Callable[[], T]) -> T:
        def locked() -> T:
            with self._client_lock:
                return call()

        return retry_forever(
            f"{operation} on {self.table}", locked, self._closed, initial_s=self.backoff_initial_s, max_s=self.backoff_max_s, on_retry=self._on_retry
        )

class FactsSink(TableSink):
    """The exactly-once writer of task facts (JSON objects, see ``fact_row``) into a cube's facts table."""

    def __init__(self, client: Client, cube: CubeSpec, topic: str, **options: Any) -> None:
        super().__init__(client, cube_tables(cube).facts, topic, FACT_FIELDS, fact_row, **options)
