"""Corrections to faust-streaming 0.15.3 that exactly-once processing depends on.

1. **Changelog highwaters from the broker.** With ``processing_guarantee="exactly_once"`` Faust
   reads changelog highwaters from ``consumer.last_stable_offset(tp)``, which aiokafka only knows
   after it has fetched from that partition. Right after a rebalance a newly assigned changelog
   partition has not been fetched, the highwater reads as -1 and recovery crashes the worker with
   ``ConsistencyError``. Asking the broker (``end_offsets``, which honours ``read_committed`` and
   so returns the last stable offset) gives the right answer.

2. **Commits only between events.** Faust commits (``send_offsets_to_transaction`` then
   ``commit_transaction`` then ``begin_transaction``) while agents keep running. A record sent
   while a transaction is committing fails with ``IllegalOperation`` ("Can't send messages while
   not in transaction"), which crashes an agent half-way through an event or, for table
   changelogs, Faust's producer buffer for good; and an event's records can land in one
   transaction while its offset commits in the next. ``CommitBarrier`` lets a commit start only
   when no event is being processed, and holds new events back while it runs.

3. **Table changes in the event's transaction.** ``table[key] = value`` hands the changelog
   record to a background buffer, so it may reach Kafka after the event's offset committed (lost
   if the worker dies in between) or during a commit (see 2). ``TransactionalTable.write`` sends
   the changelog record itself, inside the event's transaction, and only then changes the local
   store.

4. **Offsets past records a reader never sees.** Faust commits an offset only up to the first
   gap in the acked offsets, and fills gaps only between two records of one fetch. A
   ``read_committed`` consumer never sees aborted records or transaction markers, so a gap at
   the head (right after a start, a seek or a rebalance) is never filled and the partition's
   offset stops advancing for good, while its records keep committing: after the next crash the
   commands behind that offset are decided a second time. Each agent handles a partition's
   records in order and a record shared by several agents is acked when the last one is done,
   so an acked offset means every earlier delivered record was handled: the committable offset
   is simply one past the highest acked offset.

5. **Records for topics no agent reads.** Faust picks a record's transaction by the record's
   destination partition, and only for topics its consumer subscribes to; a record for any other
   topic goes out through the plain producer, outside every transaction (visible at once, and
   written again when the event is redone after a crash). ``send_in_event_transaction`` sends
   through the transactional producer of the event's own partition instead.

6. **Rebalances that wait for a record nobody will handle.** Before giving partitions up, Faust
   waits until every record it handed to a stream is acked. A record shared by two agents can be
   delivered to one and held back from the other by the paused flow (the fetcher holds it, so
   it is never collected either); the wait then never ends and the worker stops processing. Only
   the events being processed matter, so the wait is for those, followed by a commit. Events
   that agents still hold are not processed until the rebalance is over (they would be written
   into a transaction after its last commit, and fetched again from the committed offset).

7. **Partitions without a committed offset are not read again.** After a rebalance Faust seeks
   every partition to its committed offset, but aiokafka's ``seek_to_committed`` leaves a
   partition with no committed offset (or 0) where its fetcher was: the records Faust dropped
   from its queues in the rebalance (and the stale events of 6) are then never handled, until
   the worker restarts. Such partitions are sought to their start; whatever was processed there
   was committed in the rebalance, so nothing is handled twice.

Agents that write to Kafka process each event inside ``exactly_once(event)``, which applies 2
and 6 and decides what a failed write means (see there).
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping

import faust
from aiokafka.errors import IllegalOperation, KafkaError
from faust.exceptions import ProducerSendError
from faust.streams import current_event
from faust.transport.consumer import Consumer, ThreadDelegateConsumer, TopicPartitionGroup, TransactionManager
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import EventT

log = logging.getLogger(__name__)

#: Exit status of a worker that could not finish an event's writes in a partition it still owns.
UNFINISHED_TRANSACTION_EXIT = 75


async def _highwaters_from_broker(self: Any, partitions: list) -> Mapping[Any, int]:
    consumer = self._ensure_consumer()
    return await consumer.end_offsets(partitions)


class CommitBarrier:
    """Keeps transaction commits and event processing apart (corrections 2 and 6).

    Any number of events may be processed at once; a commit waits until none is in progress, and
    events that arrive while it runs wait until it is done. Leaving ``processing`` never suspends,
    so Faust acks the event before any commit can run. From ``hold`` (a rebalance begins) to
    ``release`` (its partitions are about to be read again from the committed offsets) every
    event an agent still holds is stale: ``processing`` yields False for it.
    """

    def __init__(self) -> None:
        self._active = 0
        self._epoch = 0
        self._held = False
        self._idle = asyncio.Event()  # no event in progress
        self._open = asyncio.Event()  # no commit running
        self._commit_lock = asyncio.Lock()
        self._idle.set()
        self._open.set()

    @asynccontextmanager
    async def processing(self) -> AsyncIterator[bool]:
        """Process one event (yields True), or learn that it is stale (yields False); waits while a commit runs."""
        epoch = self._epoch
        while not self._open.is_set():
            await self._open.wait()
        if self._held or epoch != self._epoch:
            yield False
            return
        self._active += 1
        self._idle.clear()
        try:
            yield True
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    @asynccontextmanager
    async def committing(self) -> AsyncIterator[None]:
        """Commit once no event is being processed; no event starts until the commit is done."""
        async with self._commit_lock:
            self._open.clear()
            try:
                waited = 0
                while not self._idle.is_set():
                    try:
                        await asyncio.wait_for(self._idle.wait(), timeout=30)
                    except asyncio.TimeoutError:  # an event should take milliseconds: say so
                        waited += 30
                        log.warning("a commit has waited %ds for %d event(s) in progress", waited, self._active)
                yield
            finally:
                self._open.set()

    def hold(self) -> None:
        """A rebalance begins: events held by agents now, or taken before ``release``, are stale."""
        self._held = True
        self._epoch += 1

    def release(self) -> None:
        """The rebalance is over: events fetched from now on are processed."""
        self._held = False


commit_barrier = CommitBarrier()
_faust_commit = TransactionManager.commit


async def _commit_between_events(self: TransactionManager, offsets: Mapping[Any, int], start_new_transaction: bool = True) -> bool:
    async with commit_barrier.committing():
        return await _faust_commit(self, offsets, start_new_transaction=start_new_transaction)


def _offset_after_last_acked(self: Consumer, tp: Any) -> int | None:
    acked = self._acked[tp]
    if not acked:
        return None
    offset = max(acked) + 1
    acked.clear()
    self._acked_index[tp].clear()
    self._gap.pop(tp, None)
    return offset


async def _commit_what_was_processed(self: Consumer) -> None:
    commit_barrier.hold()
    log.info("rebalance: committing the events in progress; events held now are stale until it is over")
    await self.commit()  # waits for the events in progress


@asynccontextmanager
async def exactly_once(event: EventT) -> AsyncIterator[bool]:
    """Process ``event`` so that everything it writes commits with its offset, or nothing does.

    Yields whether to process the event: False for one that went stale in a rebalance (it is
    fetched again from the committed offset or the partition start; neither processed nor acked now). Runs the
    body between commits (correction 2). If a Kafka write fails because the partition was taken
    away in a rebalance, the event is dropped here: its transaction is abandoned and the
    partition's new owner processes it again. If a write fails while this worker still owns the
    partition, committing the offset would lose the rest of the event's output and nothing can
    undo the records already sent, so the worker exits at once without committing
    (``UNFINISHED_TRANSACTION_EXIT``); the broker aborts the open transaction when the restarted
    worker takes its transactional id, and the event is processed again.
    """
    async with commit_barrier.processing() as current:
        if not current:
            event.message.acked = True  # keep Faust from counting it as done when the agent moves on
            log.info("%s offset %s was taken before the rebalance: not processed now, fetched again", event.message.tp, event.message.offset)
            yield False
            return
        try:
            yield True
        except (KafkaError, IllegalOperation, ProducerSendError) as exc:
            message = event.message
            if message.tp not in event.app.consumer.assignment():
                log.info("partition %s was revoked while its event at offset %s was written (%s); its new owner redoes it", message.tp, message.offset, exc)
                return
            log.critical("cannot finish the writes of %s offset %s (%r); exiting without committing", message.tp, message.offset, exc)
            logging.shutdown()
            os._exit(UNFINISHED_TRANSACTION_EXIT)


class TransactionalTable(faust.Table):
    """A Faust table whose changes commit in the current event's transaction (correction 3).

    Change it with ``await table.write(key, value)`` (``None`` deletes) from inside
    ``exactly_once(event)``; reads are the usual mapping reads.
    """

    async def write(self, key: Any, value: Any) -> None:
        """Append the change to the changelog in this event's transaction, then apply it locally."""
        event = current_event()
        if event is None:
            raise RuntimeError(f"table {self.name!r} can only be changed while processing an event")
        tombstone = value is None
        await self.changelog_topic.send(
            key=key, value=value, partition=event.message.partition, value_serializer="raw" if tombstone else None, callback=self._on_changelog_sent
        )
        if tombstone:
            self.data.pop(key, None)
        else:
            self.data[key] = value


async def send_in_event_transaction(app: faust.App, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
    """Send a record in the transaction that commits the current event's offset (correction 5).

    The destination partition comes from the key (Kafka's default partitioner), as for any send.
    """
    event = current_event()
    if event is None:
        raise RuntimeError("send_in_event_transaction works only while processing an event")
    source = event.message
    group = TopicPartitionGroup(source.topic, source.partition, app.assignor.group_for_topic(source.topic))
    transactional_id = TransactionManager.transactional_id_format.format(group_id=app.conf.id, tpg=group)
    await app.producer.send(topic, key, value, partition=None, timestamp=None, headers=headers, transactional_id=transactional_id)


def transactional_table(app: faust.App, name: str, **kwargs: Any) -> TransactionalTable:
    """Define a ``TransactionalTable`` on ``app`` (what ``app.Table`` does for a plain one)."""
    table = TransactionalTable(app, name=name, beacon=app.tables.beacon, **kwargs)
    app.tables.add(table)
    return table


_faust_seek_to_committed = ThreadDelegateConsumer.seek_to_committed


async def _seek_to_committed_or_start(self: ThreadDelegateConsumer) -> Mapping[Any, int]:
    committed = await _faust_seek_to_committed(self)
    sources = {topic for agent in self.app.agents.values() for topic in agent.channel.topics}
    for tp, offset in committed.items():
        if tp.topic in sources and not offset:
            await self.seek(tp, 0)  # from the log start if 0 was deleted (auto_offset_reset=earliest)
    return committed


def apply(app: faust.App) -> None:
    """Install corrections 1, 2, 4, 6 and 7 for ``app`` (once per app); 3 and 5 are used by the agents."""
    faust_aiokafka.AIOKafkaConsumerThread._highwaters = _highwaters_from_broker
    TransactionManager.commit = _commit_between_events  # type: ignore[method-assign]
    Consumer._new_offset = _offset_after_last_acked  # type: ignore[method-assign]
    Consumer.wait_empty = _commit_what_was_processed  # type: ignore[method-assign]

    ThreadDelegateConsumer.seek_to_committed = _seek_to_committed_or_start  # type: ignore[method-assign]

    @app.on_rebalance_complete.connect
    async def _release(sender: Any, **kwargs: Any) -> None:  # sent before Faust's seek to the committed offsets
        commit_barrier.release()
        log.info("rebalance over: processing events again")
