"""The ``projector`` agent: folds ``events.platform`` into the Redis read models (projection ``read_models``).

Each record is applied in one atomic step (a Lua script, i.e. a Redis transaction): the agent
summary, the tenant overview, the tenant's agent set and the partition checkpoint change
together or not at all. A record at or below its partition's checkpoint was applied already and
is skipped, so a worker that restarts and is handed records again neither double-applies nor
skips any. Redis, not the Kafka consumer offset, is the truth of what was applied.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

import faust
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

from connectors.redis_store import async_redis_client
from schemas import SchemaRegistry, default_registry
from streams import projections as pj
from streams.app import agent_tables, app, settings
from streams.handlers import events_topic

log = logging.getLogger(__name__)

ApplyResult = Literal["applied", "skipped", "rejected"]

# Compare-and-set: write only if the generation is still live and the checkpoint is still the one
# the models were read under (so a concurrent writer, e.g. during a rebalance, cannot be overwritten).
# KEYS: rm:current, checkpoint, [tenant overview], [agent summary, agent set]
# ARGV: gen, checkpoint read ("" = none), offset, tenant JSON ("" = unchanged), agent JSON ("" = unchanged), agent id
_WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'moved' end
local cp = redis.call('GET', KEYS[2])
if cp and tonumber(ARGV[3]) <= tonumber(cp) then return 'skipped' end
if (cp or '') ~= ARGV[2] then return 'conflict' end
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4]) end
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[4], ARGV[5])
  redis.call('SADD', KEYS[5], ARGV[6])
end
redis.call('SET', KEYS[2], ARGV[3])
return 'applied'
"""


async def live_generation(r: redis.asyncio.Redis) -> int:
    """The live generation number, creating generation 1 when there is none yet."""
    await r.set(pj.CURRENT_KEY, 1, nx=True)
    return int(await r.get(pj.CURRENT_KEY))


class LiveProjector:
    """Applies event records to the live generation of the read models, each exactly once."""

    def __init__(self, r: redis.asyncio.Redis, registry: SchemaRegistry | None = None) -> None:
        self.redis = r
        self.registry = registry or default_registry()
        self._write = r.register_script(_WRITE)
        self._gen: int | None = None

    async def apply_record(self, partition: int, offset: int, value: bytes | None, headers: Any) -> ApplyResult:
        """Apply the record at ``partition``/``offset`` unless its checkpoint says it was applied already.

        Returns ``applied``, ``skipped`` (at or below the checkpoint) or ``rejected`` (the record
        cannot be projected: logged, and the checkpoint advances past it). Redis errors propagate.
        """
        try:
            event: pj.DecodedEvent | None = pj.decode_event(self.registry, value, headers)
        except pj.ProjectionInputError as exc:
            log.error("projector: skipping undecodable event at %s/%s: %s", partition, offset, exc)
            event = None
        while True:
            if self._gen is None:
                self._gen = await live_generation(self.redis)
            gen = self._gen
            outcome = await self._try_once(gen, partition, offset, event)
            if outcome == "moved":  # a rebuild swapped generations: redo against the new one
                self._gen = None
                continue
            if outcome == "conflict":  # another writer of this partition moved the checkpoint: re-read
                continue
            return outcome  # type: ignore[return-value]

    async def _try_once(self, gen: int, partition: int, offset: int, event: pj.DecodedEvent | None) -> str:
        cp_key = pj.checkpoint_key(gen, partition)
        tenant_k = agent_k = set_k = None
        agent_id = None
        if event is not None and event.type in pj.PROJECTED_EVENTS:
            tenant = event.meta.tenant_id
            tenant_k = pj.tenant_key(gen, tenant)
            agent_id = pj.agent_id_of(event.type, event.data)
            if agent_id is not None:
                agent_k, set_k = pj.agent_key(gen, tenant, agent_id), pj.agents_set_key(gen, tenant)
        raw_cp, raw_tenant, raw_agent = await self.redis.mget(cp_key, tenant_k or cp_key, agent_k or cp_key)
        checkpoint = pj.parse_checkpoint(raw_cp)
        if not pj.should_apply(offset, checkpoint):
            return "skipped"
        rejected = event is None
        new_tenant = new_agent = None
        if event is not None and tenant_k is not None:
            try:
                update = pj.apply_event(pj.loads(raw_agent) if agent_k else None, pj.loads(raw_tenant), *event)
                new_tenant, new_agent = update.tenant, update.agent
            except Exception:  # a projection bug must not stop the agent; fix it, then rebuild
                log.exception("projector: cannot apply %s at %s/%s; skipping it", event.type, partition, offset)
                rejected = True
        keys = [pj.CURRENT_KEY, cp_key, tenant_k or cp_key, agent_k or cp_key, set_k or cp_key]
        args = [
            gen,
            "" if raw_cp is None else raw_cp,
            offset,
            pj.dumps(new_tenant) if new_tenant is not None else "",
            pj.dumps(new_agent) if new_agent is not None else "",
            agent_id or "",
        ]
        outcome = await self._write(keys=keys, args=args)
        return "rejected" if outcome == "applied" and rejected else outcome


agent_tables["projector"] = []


@app.agent(events_topic, name="projector")
async def projector(stream: faust.StreamT) -> None:
    """Keep the Redis read models up to date with every event of the partitions this worker owns."""
    live = LiveProjector(async_redis_client(settings))
    async for event in stream.events():
        message = event.message
        delay = 0.5
        while True:
            try:
                await live.apply_record(message.partition, message.offset, message.value, message.headers)
                break
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # never skip a record because Redis is away: wait for it, then apply
                log.warning("projector: Redis unavailable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
