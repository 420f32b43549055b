"""The ``projector`` agent: folds ``events.platform`` into the Redis read models (projection ``read_models``).

A batch of one partition is applied in one atomic step (a Lua script, i.e. a Redis
transaction): the agent summaries, tenant overviews, the tenants' agent sets and the
partition's checkpoint change together or not at all. Records at or below the checkpoint were
applied already and are skipped, so a redone batch (a crash before the offsets committed, a
rebalance) neither double-applies nor skips any. Redis, not the Kafka consumer offset, is the
truth of what was applied; the offsets only say where to start reading.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal, Sequence

import redis
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

from connectors.redis_store import redis_client
from schemas import SchemaRegistry, default_registry
from schemas.topics import EVENTS
from streams import projections as pj
from streams.runtime import AgentContext, Batch, Outputs, ProcessorBase, RuntimeAgent

log = logging.getLogger(__name__)

BatchResult = Literal["applied", "skipped"]

# Compare-and-set for a whole batch: write only if the generation is still live and the
# checkpoint is still the one the models were read under (a concurrent writer of the partition,
# e.g. during a rebalance, cannot be overwritten).
# KEYS: rm:current, checkpoint, then the model keys to set; ARGV: gen, checkpoint read ("" = none),
# new checkpoint, number of model keys, their JSON values..., then (set key, member) pairs.
_WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'moved' end
local cp = redis.call('GET', KEYS[2])
if (cp or '') ~= ARGV[2] then return 'conflict' end
local n = tonumber(ARGV[4])
for i = 1, n do redis.call('SET', KEYS[2 + i], ARGV[4 + i]) end
for i = 5 + n, #ARGV, 2 do redis.call('SADD', ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[2], ARGV[3])
return 'applied'
"""


def live_generation(r: redis.Redis) -> int:
    """The live generation number, creating generation 1 when there is none yet."""
    r.set(pj.CURRENT_KEY, 1, nx=True)
    return int(r.get(pj.CURRENT_KEY))


class BatchProjector:
    """Applies batches of event records of one partition to the live read models, each record exactly once."""

    def __init__(self, r: redis.Redis, registry: SchemaRegistry | None = None) -> None:
        self.redis = r
        self.registry = registry or default_registry()
        self._write = r.register_script(_WRITE)
        self._gen: int | None = None
        self.rejected = 0

    def apply(self, partition: int, records: Sequence[tuple[int, bytes | None, Any]]) -> BatchResult:
        """Apply ``(offset, value, headers)`` records of ``partition`` (in offset order) past its checkpoint.

        Returns ``applied`` or ``skipped`` (every record was at or below the checkpoint). A record
        that cannot be projected is logged and passed over (the checkpoint moves past it).
        Redis errors propagate.
        """
        decoded = [(offset, self._decode(partition, offset, value, headers)) for offset, value, headers in records]
        while True:
            if self._gen is None:
                self._gen = live_generation(self.redis)
            outcome = self._try_once(self._gen, partition, decoded)
            if outcome == "moved":  # a rebuild swapped generations: redo against the new one
                self._gen = None
                continue
            if outcome == "conflict":  # another writer of this partition moved the checkpoint: read again
                continue
            return outcome  # type: ignore[return-value]

    def _decode(self, partition: int, offset: int, value: bytes | None, headers: Any) -> pj.DecodedEvent | None:
        try:
            event = pj.decode_event(self.registry, value, headers)
        except pj.ProjectionInputError as exc:
            log.error("projector: skipping undecodable event at %s/%s: %s", partition, offset, exc)
            self.rejected += 1
            return None
        return event if event.type in pj.PROJECTED_EVENTS else None

    def _try_once(self, gen: int, partition: int, decoded: list[tuple[int, pj.DecodedEvent | None]]) -> str:
        cp_key = pj.checkpoint_key(gen, partition)
        raw_cp = self.redis.get(cp_key)
        checkpoint = pj.parse_checkpoint(raw_cp)
        todo = [(offset, event) for offset, event in decoded if pj.should_apply(offset, checkpoint)]
        if not todo:
            return "skipped"
        wanted: list[str] = []
        for _, event in todo:
            if event is not None:
                tenant = event.meta.tenant_id
                wanted.append(pj.tenant_key(gen, tenant))
                wanted += [pj.agent_key(gen, tenant, agent_id) for agent_id in pj.agent_ids_of(event.type, event.data)]
        keys = list(dict.fromkeys(wanted))
        models: dict[str, Any] = dict(zip(keys, (pj.loads(raw) for raw in self.redis.mget(keys)))) if keys else {}
        changed: dict[str, Any] = {}
        members: set[tuple[str, str]] = set()
        for offset, event in todo:
            if event is None:
                continue
            tenant = event.meta.tenant_id
            tenant_k = pj.tenant_key(gen, tenant)
            agent_keys = {agent_id: pj.agent_key(gen, tenant, agent_id) for agent_id in pj.agent_ids_of(event.type, event.data)}
            try:
                agents, overview = pj.apply_to_agents({a: models.get(k) for a, k in agent_keys.items()}, models.get(tenant_k), *event)
            except Exception:  # a projection bug must not stop the agent; fix it, then rebuild
                log.exception("projector: cannot apply %s at %s/%s; skipping it", event.type, partition, offset)
                self.rejected += 1
                continue
            if overview is not None:
                models[tenant_k] = changed[tenant_k] = overview
            for agent_id, summary in agents.items():
                models[agent_keys[agent_id]] = changed[agent_keys[agent_id]] = summary
                members.add((pj.agents_set_key(gen, tenant), agent_id))
        set_keys = list(changed)
        args: list[Any] = [gen, "" if raw_cp is None else raw_cp, todo[-1][0], len(set_keys), *(pj.dumps(changed[k]) for k in set_keys)]
        for set_key, member in sorted(members):
            args += [set_key, member]
        return self._write(keys=[pj.CURRENT_KEY, cp_key, *set_keys], args=args)


class Projector(ProcessorBase):
    """The runtime processor: one ``BatchProjector.apply`` per partition batch, waiting out Redis outages."""

    def __init__(self, context: AgentContext) -> None:
        self.live = BatchProjector(redis_client(context.settings))

    def process(self, batch: Batch, out: Outputs) -> None:
        """Apply the batch; while Redis is away, wait for it (never skip a record)."""
        records = [(m.offset(), m.value(), m.headers()) for m in batch.messages]
        delay = 0.5
        while True:
            try:
                self.live.apply(batch.partition, records)
                return
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("projector: Redis unavailable (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)


AGENT = RuntimeAgent(
    name="projector",
    inputs=(EVENTS,),
    tables=(),
    build=Projector,
    description="Folds every event into the Redis read models, once per event (checkpoint in Redis).",
)

