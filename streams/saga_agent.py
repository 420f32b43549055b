"""The ``sagas`` agent: the runtime shell of the pure sagas (``streams.sagas``), exactly once.

**State.** One ``SagaBook`` per tenant (its sagas, what they know, their pending deadlines) in
the ``saga_books`` table, keyed by tenant and so co-partitioned with ``events.platform``.

**Events.** A batch of a partition is grouped by tenant in offset order and handed to
``handle_batch``; the commands the sagas send go to ``commands.platform`` (keyed by tenant, with
their deterministic ids), ``PrepareTenant``/``TeardownTenant`` to ``provisioning.requests``. The
runtime commits them with the changed books and the input offsets in one transaction, so a
step's state and its commands are never apart, and a redone batch builds the same command ids.

**History.** An event older than ``saga_start_horizon_s`` when the shell reads it starts no saga
(it still reaches the sagas that exist): a shell deployed onto years of events does not chase
every task and tenant of the past.

**Deadlines.** Deadlines are rows, not timers. The runtime calls ``tick`` every ``TICK_S`` on
wall-clock time, records or not; ``tick`` fires the books whose earliest deadline is due (a
per-partition index of next due times, rebuilt from the restored rows in ``assigned``, makes an
idle tick a dict lookup). A new owner after a restart or a rebalance restores the books and
fires at its first tick everything that fell due while nobody owned the partition.

**View.** Sagas are shown from Redis (``streams.saga_view``). A call's saga documents are written
at the start of the partition's next call, and only if its transaction committed (the row in the
table is then the very object this call put), so the view never shows a step that was undone.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, Mapping, Sequence

import orjson
from redis.exceptions import RedisError

from connectors.redis_store import redis_client
from schemas import SCHEMA_HEADER, SchemaError, default_registry
from schemas.messages import EnvelopeError, EventMeta
from schemas.settings import Settings
from schemas.topics import COMMANDS, EVENTS, PROVISIONING, SAGA_BOOKS
from schemas.topology import QuotaPlans
from streams import saga_view
from streams.runtime import AgentContext, Batch, Outputs, PartitionTable, ProcessorBase, RuntimeAgent
from streams.sagas import (
    Backoff,
    OnboardingPolicy,
    SagaBook,
    SagaCommand,
    SagaEvent,
    TaskLifecycle,
    TaskPolicy,
    TenantOnboarding,
    fire,
    handle_batch,
    next_due_ms,
)
from streams.sagas.onboarding import PROVISIONER_COMMANDS

log = logging.getLogger(__name__)

#: How often the runtime calls ``tick`` (seconds): the most a deadline waits once due, plus a commit.
TICK_S = 0.2

#: Books with more live sagas than this are measured against the record limit (one row per tenant).
BIG_BOOK = 1000

#: The events some saga type observes, reacts to or starts from; others are not decoded.
SAGA_EVENTS = frozenset(
    {
        "AgentCreated", "AgentStarted", "AgentStopped",
        "TaskAssigned", "TaskStarted", "TaskReassigned", "TaskCompleted", "TaskFailed",
        "TenantCreated", "TenantQuotaSet", "TenantPrepared", "TenantPreparationFailed", "TenantReady", "TenantOnboardingFailed",
    }
)
_WANTED = {name.encode() for name in SAGA_EVENTS}


def saga_types(settings: Settings, plans: QuotaPlans | None) -> list[Any]:
    """The saga types the shell runs, their limits from ``settings`` and the plans of the topology."""
    task = TaskPolicy(
        max_reassignments=settings.saga_max_reassignments,
        reassign_backoff=Backoff(settings.saga_backoff_s, 2.0, 300.0),
        max_retries=settings.saga_max_retries,
        retry_backoff=Backoff(settings.saga_retry_backoff_s, 2.0, 600.0),
        compensation_backoff=Backoff(settings.saga_backoff_s, 2.0, 300.0),
        default_start_within_s=settings.saga_default_start_within_s,
    )
    types: list[Any] = [TaskLifecycle(task)]
    if plans is not None:
        types.append(TenantOnboarding(OnboardingPolicy(plans, step_timeout_s=settings.saga_onboarding_step_timeout_s)))
    return types


def command_record(command: SagaCommand, now: datetime, registry: Any) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
    """(topic, key, value, headers) of a saga's command: provisioner commands to ``provisioning.requests``."""
    value, headers = registry.encode(command.type, command.data)
    topic = PROVISIONING if command.type in PROVISIONER_COMMANDS else COMMANDS
    return topic, command.tenant_id.encode(), value, headers + command.meta(now).to_headers()


class SagaShell(ProcessorBase):
    """Feeds events to the tenants' books, fires due deadlines, sends the commands (see the module docstring)."""

    def __init__(self, context: AgentContext) -> None:
        self.registry = default_registry()
        self.types = saga_types(context.settings, context.topology.quotas)
        self.redis = redis_client(context.settings)
        self.horizon_ms = context.settings.saga_start_horizon_s * 1000
        self.max_row_bytes = context.settings.kafka_max_record_bytes
        self._warned: set[str] = set()
        #: partition -> tenant -> epoch ms of the book's earliest deadline
        self._due: dict[int, dict[str, int]] = {}
        self._earliest: dict[int, float] = {}
        #: (partition, tenant) -> (row object in the table, its loaded book): saves a load per batch
        self._books: dict[tuple[int, str], tuple[Any, SagaBook]] = {}
        #: partition -> [(tenant, row object put, view documents)] of its last call, and documents to retry
        self._views: dict[int, list[tuple[str, Any, list[dict[str, Any]]]]] = {}
        self._unwritten: list[dict[str, Any]] = []
        #: deadlines fired since the processor was built
        self.fired = 0

    # --- partitions ----------------------------------------------------------------------
    def assigned(self, partitions: Sequence[int], tables: Mapping[int, Mapping[str, PartitionTable]]) -> None:
        """Index the restored books' next due times; show their live sagas."""
        docs: list[dict[str, Any]] = []
        for partition in partitions:
            books = tables[partition][SAGA_BOOKS]
            due: dict[str, int] = {}
            for tenant, row in books.items():  # the committed rows, just restored
                book = SagaBook.load(row)
                self._books[(partition, tenant)] = (row, book)
                at = next_due_ms(book)
                if at is not None:
                    due[tenant] = at
                docs += saga_view.documents(tenant, SagaBook(), book, time.time())
            self._due[partition] = due
            self._earliest[partition] = min(due.values(), default=float("inf"))
            self._views[partition] = []
        self._write_view(docs)
        log.info("sagas: partitions %s restored, %d books with deadlines", list(partitions), sum(len(self._due[p]) for p in partitions))

    def revoked(self, partitions: Sequence[int]) -> None:
        """Forget the partitions' index, cache and unconfirmed view documents."""
        gone = set(partitions)
        for partition in gone:
            self._due.pop(partition, None)
            self._earliest.pop(partition, None)
            self._views.pop(partition, None)
        self._books = {k: v for k, v in self._books.items() if k[0] not in gone}

    # --- events --------------------------------------------------------------------------
    def process(self, batch: Batch, out: Outputs) -> None:
        """Hand each tenant's events of the batch to its book, in offset order; send the commands."""
        books = batch.tables[SAGA_BOOKS]
        self._flush(batch.partition, books)
        per_tenant: dict[str, list[SagaEvent]] = {}
        for message in batch.messages:
            headers = message.headers() or []
            schema = next((v for k, v in headers if k == SCHEMA_HEADER), None)
            if schema not in _WANTED:
                continue
            try:
                name, payload = self.registry.decode(message.value(), headers)
                meta = EventMeta.from_headers(headers)
            except (SchemaError, EnvelopeError) as exc:
                log.warning("sagas: skipping unreadable event at %s:%s: %s", message.partition(), message.offset(), exc)
                continue
            per_tenant.setdefault(meta.tenant_id, []).append(SagaEvent.of(name, payload.model_dump(), meta))
        if not per_tenant:
            return
        now = time.time()
        for tenant, events in per_tenant.items():
            book = self._book(batch.partition, books, tenant)
            if self.horizon_ms:
                events = self._recent_starts(book, events, int(now * 1000) - self.horizon_ms)
            new, commands = handle_batch(self.types, book, events)
            self._save(batch.partition, books, tenant, book, new, commands, out, now)

    def _recent_starts(self, book: SagaBook, events: list[SagaEvent], since_ms: int) -> list[SagaEvent]:
        """``events`` without those before ``since_ms`` that would start a saga the book does not have."""
        kept = []
        for event in events:
            if event.at_ms < since_ms and any((sid := t.saga_id(event)) is not None and sid not in book.sagas for t in self.types):
                continue
            kept.append(event)
        return kept

    # --- deadlines -----------------------------------------------------------------------
    def tick(self, partition: int, tables: Mapping[str, PartitionTable], out: Outputs, now: float) -> None:
        """Fire the due deadlines of the partition's books (a lookup when none is due)."""
        books = tables[SAGA_BOOKS]
        self._flush(partition, books)
        now_ms = int(now * 1000)
        if self._earliest.get(partition, float("inf")) > now_ms:
            return
        at = datetime.fromtimestamp(now, UTC)
        due = self._due[partition]
        for tenant in [t for t, when in due.items() if when <= now_ms]:
            book = self._book(partition, books, tenant)
            for deadline in book.deadlines.items:
                if deadline.due_ms > now_ms:
                    break
                self.fired += 1
            new, commands = fire(self.types, book, at)
            self._save(partition, books, tenant, book, new, commands, out, now)

    # --- helpers -------------------------------------------------------------------------
    def _book(self, partition: int, books: PartitionTable, tenant: str) -> SagaBook:
        row = books.get(tenant)
        cached = self._books.get((partition, tenant))
        if cached is not None and cached[0] is row:
            return cached[1]
        book = SagaBook.load(row)
        self._books[(partition, tenant)] = (row, book)
        return book

    def _save(self, partition: int, books: PartitionTable, tenant: str, old: SagaBook, new: SagaBook, commands: list[SagaCommand], out: Outputs, now: float) -> None:
        row = new.dump()
        if len(new.sagas) > BIG_BOOK and tenant not in self._warned:
            size = len(orjson.dumps(row))
            if size > 0.8 * self.max_row_bytes:
                self._warned.add(tenant)
                log.error("sagas: the book of tenant %s holds %d sagas (%d bytes), near the record limit of %d", tenant, len(new.sagas), size, self.max_row_bytes)
        books.put(tenant, row)
        self._books[(partition, tenant)] = (row, new)
        self._index(partition, tenant, new)
        issued = datetime.fromtimestamp(now, UTC)
        for command in commands:
            topic, key, value, headers = command_record(command, issued, self.registry)
            out.send(topic, key, value, headers)
        self._views.setdefault(partition, []).append((tenant, row, saga_view.documents(tenant, old, new, now)))

    def _index(self, partition: int, tenant: str, book: SagaBook) -> None:
        """Note when ``book`` next falls due."""
        due = self._due.setdefault(partition, {})
        at = next_due_ms(book)
        if at is None:
            due.pop(tenant, None)
        else:
            due[tenant] = at
        self._earliest[partition] = min(due.values(), default=float("inf"))

    def _flush(self, partition: int, books: PartitionTable) -> None:
        """Write the view documents of the partition's previous call if its transaction committed."""
        pending = self._views.get(partition)
        if pending:
            tenant, row, _ = pending[-1]
            if books.get(tenant) is row:  # committed: the table holds the very row that call put
                for _, _, docs in pending:
                    self._unwritten += docs
            else:  # aborted: the due index follows the committed books again
                for tenant in {t for t, _, _ in pending}:
                    self._index(partition, tenant, self._book(partition, books, tenant))
            pending.clear()
        if self._unwritten:
            self._write_view(self._unwritten)

    def _write_view(self, docs: list[dict[str, Any]]) -> None:
        if not docs:
            return
        try:
            saga_view.write(self.redis, docs)
            if docs is self._unwritten:
                self._unwritten = []
        except (RedisError, OSError) as exc:  # the view waits; the sagas do not
            log.warning("sagas: cannot write the saga view to Redis (%s); %d documents wait", exc, len(docs))
            if docs is not self._unwritten:
                self._unwritten += docs
            if len(self._unwritten) > 200_000:
                del self._unwritten[:100_000]


AGENT = RuntimeAgent(
    name="sagas",
    inputs=(EVENTS,),
    tables=(SAGA_BOOKS,),
    build=SagaShell,
    tick_interval_s=TICK_S,
    description="Runs the task life cycle and tenant onboarding sagas; fires their deadlines on wall-clock time, exactly once.",
)
