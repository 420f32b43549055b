"""Rebuild the read models by replaying ``events.platform`` into a new generation, then swap it in.

Readers and the live ``projector`` agent resolve ``rm:current`` first, so they keep using the
live generation while the new one is built and never see a half-built model. The swap is one
Redis transaction, done only when the new generation's checkpoints are at or past the live
ones on every partition (see ``projections.covers``); after it the live agent continues on
the new generation from its checkpoints, so no event is applied twice or missed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

import redis.asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.exceptions import WatchError

from connectors.kafka_config import aiokafka_config
from connectors.kafka_topics import topic_partitions
from connectors.redis_store import async_redis_client
from schemas import SchemaRegistry, default_registry
from streams import projections as pj
from schemas.settings import Settings
from schemas.wire import bind

log = logging.getLogger(__name__)

EVENTS_TOPIC = "events.platform"
#: Writes are pipelined to Redis in batches of this many events.
FLUSH_EVERY = 500


class RebuildError(RuntimeError):
    """The rebuild could not finish (topic missing, no progress, another rebuild swapped first)."""


@dataclass
class RebuildReport:
    """What a rebuild did."""

    old_generation: int
    new_generation: int
    events_replayed: int = 0
    events_rejected: int = 0
    agents: int = 0
    tenants: int = 0
    keys_deleted: int = 0
    swap_attempts: int = 0
    seconds: float = 0.0
    checkpoints: dict[int, int] = field(default_factory=dict)


class _Generation:
    """The new generation being built: models cached in memory, dirty ones flushed in pipelines."""

    def __init__(self, r: redis.asyncio.Redis, gen: int, registry: SchemaRegistry) -> None:
        self.redis, self.gen, self.registry = r, gen, registry
        self.models: dict[str, dict[str, Any]] = {}
        self.agent_sets: dict[str, set[str]] = {}
        self.dirty: set[str] = set()
        self.dirty_sets: dict[str, set[str]] = {}
        self.checkpoints: dict[int, int] = {}
        self.dirty_checkpoints: set[int] = set()
        self.replayed = self.rejected = 0

    def apply(self, partition: int, offset: int, value: bytes | None, headers: Any) -> None:
        """Fold one record into the cached models (same functions as the live agent)."""
        self.replayed += 1
        if pj.should_apply(offset, self.checkpoints.get(partition, -1)):
            try:
                self._fold(pj.decode_event(self.registry, value, headers))
            except Exception as exc:  # the live agent skips such records too
                log.error("rebuild: skipping event at %s/%s: %s", partition, offset, exc)
                self.rejected += 1
            self.checkpoints[partition] = offset
            self.dirty_checkpoints.add(partition)

    def _fold(self, event: pj.DecodedEvent) -> None:
        if event.type not in pj.PROJECTED_EVENTS:
            return
        tenant = event.meta.tenant_id
        tenant_k = pj.tenant_key(self.gen, tenant)
        agent_keys = {agent_id: pj.agent_key(self.gen, tenant, agent_id) for agent_id in pj.agent_ids_of(event.type, event.data)}
        agents, overview = pj.apply_to_agents({a: self.models.get(k) for a, k in agent_keys.items()}, self.models.get(tenant_k), *event)
        if overview is not None:
            self.models[tenant_k] = overview
            self.dirty.add(tenant_k)
        for agent_id, summary in agents.items():
            agent_k = agent_keys[agent_id]
            self.models[agent_k] = summary
            self.dirty.add(agent_k)
            set_k = pj.agents_set_key(self.gen, tenant)
            if agent_id not in self.agent_sets.setdefault(set_k, set()):
                self.agent_sets[set_k].add(agent_id)
                self.dirty_sets.setdefault(set_k, set()).add(agent_id)

    def seed(self, partition: int, checkpoint: int) -> None:
        """Start ``partition`` at ``checkpoint``: events up to it are deliberately not in this generation."""
        self.checkpoints[partition] = checkpoint
        self.dirty_checkpoints.add(partition)

    async def flush(self) -> None:
        """Write the dirty models, then the checkpoints, in one pipelined round trip."""
        if not (self.dirty or self.dirty_sets or self.dirty_checkpoints):
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in self.dirty:
                pipe.set(key, pj.dumps(self.models[key]))
            for key, members in self.dirty_sets.items():
                pipe.sadd(key, *members)
            for partition in self.dirty_checkpoints:
                pipe.set(pj.checkpoint_key(self.gen, partition), self.checkpoints[partition])
            await pipe.execute()
        self.dirty.clear()
        self.dirty_sets.clear()
        self.dirty_checkpoints.clear()


async def delete_generation(r: redis.asyncio.Redis, gen: int, batch: int = 500) -> int:
    """Delete every key of generation ``gen`` (SCAN + UNLINK in batches); returns how many."""
    deleted = 0
    keys: list[str] = []
    async for key in r.scan_iter(match=pj.generation_prefix(gen) + "*", count=batch):
        keys.append(key)
        if len(keys) >= batch:
            deleted += await r.unlink(*keys)
            keys.clear()
    if keys:
        deleted += await r.unlink(*keys)
    return deleted


async def _partitions(consumer: AIOKafkaConsumer) -> list[int]:
    partitions = await topic_partitions(consumer, EVENTS_TOPIC)
    if not partitions:
        raise RebuildError(f"topic '{EVENTS_TOPIC}' does not exist: run `agentstream topology apply`")
    return partitions


async def _live_checkpoints(r: redis.asyncio.Redis, gen: int, partitions: list[int]) -> dict[int, int]:
    raw = await r.mget([pj.checkpoint_key(gen, p) for p in partitions])
    return {p: pj.parse_checkpoint(v) for p, v in zip(partitions, raw)}


async def rebuild_async(
    settings: Settings,
    from_timestamp: datetime | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
    *,
    registry: SchemaRegistry | None = None,
    idle_timeout_s: float = 120.0,
) -> RebuildReport:
    """The coroutine behind :func:`rebuild` (same promises)."""
    started = time.monotonic()
    registry = registry or default_registry()
    await asyncio.to_thread(bind, registry, settings, eager=False)
    r = async_redis_client(settings)
    consumer = AIOKafkaConsumer(**aiokafka_config(settings), enable_auto_commit=False, isolation_level="read_committed", auto_offset_reset="earliest")
    await consumer.start()
    try:
        await r.set(pj.CURRENT_KEY, 1, nx=True)
        old = int(await r.get(pj.CURRENT_KEY))
        new = old + 1
        await delete_generation(r, new)  # leftovers of an interrupted rebuild
        report = RebuildReport(old_generation=old, new_generation=new)
        building = _Generation(r, new, registry)

        partitions = await _partitions(consumer)
        tps = [TopicPartition(EVENTS_TOPIC, p) for p in partitions]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        if from_timestamp is None:
            await consumer.seek_to_beginning(*tps)
            starts = await consumer.beginning_offsets(tps)
        else:
            found = await consumer.offsets_for_times({tp: int(from_timestamp.timestamp() * 1000) for tp in tps})
            starts = {}
            for tp in tps:
                start = found[tp].offset if found.get(tp) is not None else ends[tp]
                starts[tp] = start
                consumer.seek(tp, start)
                if start > 0:
                    building.seed(tp.partition, start - 1)
        total = sum(max(0, ends[tp] - starts[tp]) for tp in tps)
        progress(0, total)

        async def replay_until(targets: dict[TopicPartition, int]) -> None:
            """Consume until the position of every partition reaches its target offset."""
            last_progress = time.monotonic()
            while True:
                behind = [tp for tp, target in targets.items() if await consumer.position(tp) < target]
                if not behind:
                    break
                batch = await consumer.getmany(*behind, timeout_ms=500, max_records=FLUSH_EVERY)
                for tp, records in batch.items():
                    for record in records:
                        building.apply(tp.partition, record.offset, record.value, record.headers)
                if batch:
                    last_progress = time.monotonic()
                    await building.flush()
                    progress(building.replayed, max(total, building.replayed))
                elif time.monotonic() - last_progress > idle_timeout_s:
                    raise RebuildError(f"no progress for {idle_timeout_s:.0f}s on partitions {[tp.partition for tp in behind]}")
            await building.flush()

        await replay_until(dict(ends))

        # Catch up with the live agent and swap in one transaction.
        while True:
            report.swap_attempts += 1
            live = await _live_checkpoints(r, old, partitions)
            ahead = {TopicPartition(EVENTS_TOPIC, p): cp + 1 for p, cp in live.items() if cp > building.checkpoints.get(p, -1)}
            if ahead:
                await replay_until(ahead)
                continue
            async with r.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(pj.CURRENT_KEY, *(pj.checkpoint_key(old, p) for p in partitions))
                    current = int(await pipe.get(pj.CURRENT_KEY))
                    if current != old:
                        raise RebuildError(f"generation {current} was swapped in by someone else during this rebuild")
                    live = await _live_checkpoints(pipe, old, partitions)  # type: ignore[arg-type]
                    if not pj.covers(building.checkpoints, live, partitions):
                        continue
                    pipe.multi()
                    pipe.set(pj.CURRENT_KEY, new)
                    await pipe.execute()
                    break
                except WatchError:  # the live agent applied an event meanwhile: catch up again
                    continue

        progress(building.replayed, building.replayed)
        report.keys_deleted = await delete_generation(r, old)
        report.events_replayed = building.replayed
        report.events_rejected = building.rejected
        report.checkpoints = dict(building.checkpoints)
        report.tenants = sum(1 for k in building.models if k.startswith(f"rm:{new}:tenant:"))
        report.agents = sum(1 for k in building.models if k.startswith(f"rm:{new}:agent:"))
        report.seconds = time.monotonic() - started
        return report
    finally:
        await consumer.stop()
        await r.aclose()


def rebuild(
    settings: Settings, from_timestamp: datetime | None = None, progress: Callable[[int, int], None] = lambda done, total: None
) -> RebuildReport:
    """Rebuild the ``read_models`` projection (agent summaries and tenant overviews) by replay.

    Replays ``events.platform`` (read_committed, no consumer group) into generation
    ``rm:{live+1}``, catches up with the live ``projector`` agent, swaps ``rm:current`` to the
    new generation atomically and deletes the old generation's keys. Works with or without a
    running worker. ``progress(done, total)`` is called as events are replayed; ``total`` is
    estimated from offsets at the start (transaction markers make it a little high; it grows if
    the live topic moves on meanwhile) and equals ``done`` in the last call.

    ``from_timestamp``: start from the first event at or after that instant in every
    partition (``offsets_for_times``) instead of from the beginning. The models are then built
    only from events since then: agents created earlier show status ``unknown`` and counts
    start at zero. That is useful after fixing a projection bug when older state is not
    needed; mostly, rebuild from the start.

    Raises RebuildError if the topic is missing, the replay makes no progress, or another
    rebuild swapped generations first.
    """
    return asyncio.run(rebuild_async(settings, from_timestamp, progress))


@dataclass(frozen=True)
class PartitionLag:
    """How far the read models are behind one partition of the events topic."""

    partition: int
    checkpoint: int  # -1: nothing applied yet
    end_offset: int
    #: Committed events after the checkpoint (offsets also count transaction markers, so they overstate it).
    pending: int
    #: False when counting stopped at the limit: ``pending`` is then a lower bound.
    exact: bool = True


async def lag_async(settings: Settings, max_count: int = 10_000) -> tuple[int | None, list[PartitionLag]]:
    """The live generation and, per partition, its checkpoint against the events topic (read_committed)."""
    r = async_redis_client(settings)
    consumer = AIOKafkaConsumer(**aiokafka_config(settings), enable_auto_commit=False, isolation_level="read_committed")
    await consumer.start()
    try:
        partitions = await _partitions(consumer)
        raw_gen = await r.get(pj.CURRENT_KEY)
        gen = None if raw_gen is None else int(raw_gen)
        checkpoints = await _live_checkpoints(r, gen, partitions) if gen is not None else {p: -1 for p in partitions}
        tps = [TopicPartition(EVENTS_TOPIC, p) for p in partitions]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        out = []
        for tp in tps:
            cp, end = checkpoints[tp.partition], ends[tp]
            pending, exact = 0, True
            if end > cp + 1:  # count the committed records after the checkpoint
                consumer.seek(tp, cp + 1)
                while await consumer.position(tp) < end:
                    batch = await consumer.getmany(tp, timeout_ms=1000)
                    if not batch:
                        break
                    pending += sum(1 for rec in batch.get(tp, []) if rec.offset < end)
                    if pending >= max_count:
                        exact = False
                        break
            out.append(PartitionLag(tp.partition, cp, end, pending, exact))
        return gen, out
    finally:
        await consumer.stop()
        await r.aclose()


def lag(settings: Settings, max_count: int = 10_000) -> tuple[int | None, list[PartitionLag]]:
    """Synchronous :func:`lag_async`: the live generation (None if none yet) and the lag per partition."""
    return asyncio.run(lag_async(settings, max_count))
