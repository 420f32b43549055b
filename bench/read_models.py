"""Read-model query latency (p50/p95/p99) of ``streams.queries.get_agent_summary``, against a bare GET.

Runs its own redis-server (``connectors.local_stack.RedisService`` on 127.0.0.1:57379, home in a
temporary directory; stopped at the end) and no Kafka. Run:

    .venv/bin/python bench/read_models.py [--tenants 100] [--agents 100] [--tasks 3] [--queries 10000]

Loading (timed, reported for information): for every tenant a TenantCreated, for every agent
AgentCreated, AgentConfigured, AgentStarted and ``--tasks`` x (TaskAssigned, then TaskCompleted or
TaskFailed, ~90% completed) are encoded as event records (Avro payload + envelope headers, as on
``events.platform``) and applied with the live projector's per-record path
``streams.projection_agent.LiveProjector.apply_record`` (decode, the pure folds of
``streams.projections``, the atomic Lua write with checkpoint). Tenants are keyed onto 6
partitions like ``events.platform``; the 6 partitions are applied concurrently, each in offset
order. So the keyspace is exactly what the projector writes.

Timed: ``--queries`` lookups of random (tenant, agent) pairs, uniformly over all agents, after
``--warmup`` untimed ones, over one synchronous client (``connectors.redis_store.redis_client``):

  1. agentstream: ``get_agent_summary(r, tenant, agent_id)`` (resolve the live generation, GET the
     model, re-check the generation only when nothing was found, parse into ``AgentSummary``);
  2. baseline, same run, same keys, alternately: a bare ``r.get(key)`` of the model's key;
  3. breakdown: bare GET + ``AgentSummary.model_validate_json`` (shows what the parse costs and
     what the generation lookup's round trip costs).

Prints the machine, redis versions, the load rate and the latencies; the numbers go to
docs/benchmarks.md. Target: p95 < 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PORT = 57379
PARTITIONS = 6
AGENT_TYPES = ("llm", "tool", "retrieval", "planner")
REGIONS = ("eu-west", "us-east", "ap-south")


def _environment(data_dir: Path) -> dict[str, str]:
    return {
        "AGENTSTREAM_REDIS_URL": f"redis://127.0.0.1:{PORT}/0",
        "AGENTSTREAM_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:59092",  # never contacted
        "AGENTSTREAM_DATA_DIR": str(data_dir),
        "AGENTSTREAM_WEB_PORT": "6767",
        "AGENTSTREAM_LOG_LEVEL": "warn",
    }


def event_records(tenants: int, agents: int, tasks: int, seed: int = 11) -> tuple[dict[int, list[tuple[bytes, list]]], dict[tuple[str, str], tuple[int, int]]]:
    """Per partition, the encoded event records in offset order; and the expected (completed, failed) per agent."""
    from schemas import default_registry
    from schemas.messages import EventMeta
    from schemas.wire import MemoryIds

    registry = default_registry()
    registry.attach(MemoryIds(), "memory:")  # the records never leave this process: ids without a registry
    rng = random.Random(seed)
    clock = time.time() - 86_400
    counter = 0
    out: dict[int, list[tuple[bytes, list]]] = {p: [] for p in range(PARTITIONS)}
    expected: dict[tuple[str, str], tuple[int, int]] = {}

    def record(partition: int, tenant: str, stream: str, version: int, event_type: str, data: dict) -> None:
        nonlocal counter, clock
        counter += 1
        clock += 0.001
        value, headers = registry.encode(event_type, data)
        meta = EventMeta(
            event_id=f"e{counter}", tenant_id=tenant, stream_id=stream, version=version,
            occurred_at=datetime.fromtimestamp(clock, timezone.utc), command_id=f"c{counter}",
        )  # fmt: skip
        out[partition].append((value, headers + meta.to_headers()))

    for t in range(tenants):
        tenant, partition = f"tenant-{t:03d}", t % PARTITIONS
        record(partition, tenant, f"tenant-{tenant}", 1, "TenantCreated", {"name": f"Tenant {t}", "region": REGIONS[t % 3], "plan": ("free", "pro", "enterprise")[t % 3]})
        for a in range(agents):
            agent_id = f"agent-{a:03d}"
            stream = f"agent-{agent_id}"
            kind = AGENT_TYPES[0 if a < 40 else 1 if a < 70 else 2 if a < 90 else 3]
            record(partition, tenant, stream, 1, "AgentCreated", {
                "agent_id": agent_id, "name": f"{kind} {a}", "agent_type": kind, "region": REGIONS[(t * 7 + a) % 3],
                "config": {"model": "m-large" if kind == "llm" else "default", "temperature": "0.2"}, "capabilities": [kind, "search"],
            })  # fmt: skip
            record(partition, tenant, stream, 2, "AgentConfigured", {"agent_id": agent_id, "config": {"max_tokens": "4096"}})
            record(partition, tenant, stream, 3, "AgentStarted", {"agent_id": agent_id})
            completed = failed = 0
            for k in range(tasks):
                task_id = f"task-{t:03d}-{a:03d}-{k}"
                record(partition, tenant, f"task-{task_id}", 1, "TaskAssigned", {"task_id": task_id, "agent_id": agent_id, "task_type": "answer", "input": {"q": "hello"}})
                cost = round(rng.lognormvariate(-6, 0.8), 6)
                if rng.random() < 0.9:
                    completed += 1
                    record(partition, tenant, f"task-{task_id}", 2, "TaskCompleted", {"task_id": task_id, "agent_id": agent_id, "output": {"a": "ok"}, "cost": cost, "duration_s": 1.5})
                else:
                    failed += 1
                    record(partition, tenant, f"task-{task_id}", 2, "TaskFailed", {"task_id": task_id, "agent_id": agent_id, "error": "timeout", "cost": cost})
            expected[(tenant, agent_id)] = (completed, failed)
    return out, expected


async def project(settings, records: dict[int, list[tuple[bytes, list]]]) -> dict[str, int]:
    """Apply every record through ``LiveProjector.apply_record``; the partitions run concurrently."""
    from connectors.redis_store import async_redis_client
    from streams.projection_agent import LiveProjector

    r = async_redis_client(settings)
    live = LiveProjector(r)
    outcomes: dict[str, int] = {}

    async def one_partition(partition: int) -> None:
        for offset, (value, headers) in enumerate(records[partition]):
            result = await live.apply_record(partition, offset, value, headers)
            outcomes[result] = outcomes.get(result, 0) + 1

    try:
        await asyncio.gather(*(one_partition(p) for p in records))
    finally:
        await r.aclose()
    return outcomes


def pcts(samples: list[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.array(samples) * 1000, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--agents", type=int, default=100, help="agents per tenant")
    parser.add_argument("--tasks", type=int, default=3, help="tasks per agent")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=500)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="agentstream-bench-rm-"))
    os.environ.update(_environment(data_dir))

    import redis

    from connectors.local_stack import RedisService
    from connectors.redis_store import redis_client
    from streams import projections as pj
    from streams.projections import AgentSummary
    from streams.queries import get_agent_summary
    from schemas.settings import get_settings

    settings = get_settings()
    service = RedisService(data_dir / "stack" / "redis", PORT)
    quiet = lambda line: None  # noqa: E731
    service.start(quiet, timeout=30)
    try:
        encode_started = time.perf_counter()
        records, expected = event_records(args.tenants, args.agents, args.tasks)
        encode_s = time.perf_counter() - encode_started
        n_records = sum(len(v) for v in records.values())
        load_started = time.perf_counter()
        outcomes = asyncio.run(project(settings, records))
        load_s = time.perf_counter() - load_started
        assert outcomes == {"applied": n_records}, outcomes

        r = redis_client(settings)
        server_version = r.info("server")["redis_version"]
        gen = int(r.get(pj.CURRENT_KEY))
        keyspace = r.dbsize()
        pairs = list(expected)
        rng = random.Random(5)
        picks = [pairs[rng.randrange(len(pairs))] for _ in range(args.warmup + args.queries)]
        keys = [pj.agent_key(gen, tenant, agent_id) for tenant, agent_id in picks]

        # correctness: every model the query returns is the fold of its events
        for tenant, agent_id in pairs[:: max(1, len(pairs) // 500)]:
            summary = get_agent_summary(r, tenant, agent_id)
            assert summary is not None and summary.status == "running" and (summary.tasks_completed, summary.tasks_failed) == expected[(tenant, agent_id)], summary
            assert summary.config == {"model": summary.config["model"], "temperature": "0.2", "max_tokens": "4096"} and summary.version == 3

        for i in range(args.warmup):
            get_agent_summary(r, *picks[i])
            r.get(keys[i])
        query_s, bare_s, parse_s = [], [], []
        perf = time.perf_counter
        for i in range(args.warmup, args.warmup + args.queries):
            tenant, agent_id = picks[i]
            key = keys[i]
            steps = ("query", "bare", "parse") if i % 2 == 0 else ("parse", "bare", "query")
            for step in steps:
                if step == "query":
                    t0 = perf()
                    summary = get_agent_summary(r, tenant, agent_id)
                    query_s.append(perf() - t0)
                elif step == "bare":
                    t0 = perf()
                    raw = r.get(key)
                    bare_s.append(perf() - t0)
                else:
                    t0 = perf()
                    parsed = AgentSummary.model_validate_json(r.get(key))
                    parse_s.append(perf() - t0)
            assert summary is not None and raw is not None and parsed is not None
        r.close()
    finally:
        service.stop(quiet)
        shutil.rmtree(data_dir, ignore_errors=True)

    q, b, p = pcts(query_s), pcts(bare_s), pcts(parse_s)
    fmt = lambda x: f"p50 {x[0]:.3f} ms  p95 {x[1]:.3f} ms  p99 {x[2]:.3f} ms"  # noqa: E731
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, {platform.platform()}")
    print(f"redis-server {server_version} (private, 127.0.0.1:{PORT}, appendonly), redis-py {redis.__version__}, one synchronous client over TCP")
    print(
        f"read models: {args.tenants} tenants x {args.agents} agents = {len(pairs):,} agent summaries ({keyspace:,} keys), "
        f"from {n_records:,} events ({args.tasks} tasks per agent) applied with LiveProjector.apply_record "
        f"in {load_s:.1f} s ({n_records / load_s:,.0f} events/s, 6 partitions concurrently; encoding {encode_s:.1f} s untimed)"
    )
    print(f"{args.queries:,} lookups of random agents after {args.warmup} warm-up ones, the three kinds timed alternately")
    print(f"agentstream get_agent_summary:           {fmt(q)}")
    print(f"baseline bare GET of the model's key:    {fmt(b)}")
    print(f"breakdown: bare GET + AgentSummary parse: {fmt(p)}")
    print(f"ratio get_agent_summary / bare GET: p50 {q[0] / b[0]:.2f}x, p95 {q[1] / b[1]:.2f}x, p99 {q[2] / b[2]:.2f}x; target p95 < 5 ms")


if __name__ == "__main__":
    main()
