"""Event store reads of one stream: archive + Kafka tail (fast reads) against Kafka alone.

Runs on its own local stack (ports 59392/56579, sink port 6967, a temporary data dir) and stops
it after:

    .venv/bin/python bench/event_store_reads.py [--tenants 100] [--agents 40] [--versions 50] [--reads 50]

Load: ``tenants x agents`` agent streams of ``versions`` events each (AgentCreated, then
AgentConfigured), produced straight to ``events.platform`` keyed by tenant; the ClickHouse sink
(``agentstream sink``, embedded chdb) archives them; the clock starts once the archive holds them
all. Then ``--reads`` random streams are read with ``EventStore.get_events``:

1. fast reads: ``EventStore(settings)`` (the archive through the sink's ``/events``, then the
   partition's tail after the archive's position from Kafka);
2. baseline, same run, same streams, alternating: ``EventStore(settings, use_archive=False)``,
   which scans the tenant's partition in Kafka (all tenants hashed to it).

Both must return the same events. Prints the machine, p50/p95 of each and the ratio; the numbers
go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import time
import urllib.request
from datetime import UTC, datetime

import numpy as np

SINK_PORT = 6967


async def _load(settings, tenants: int, agents: int, versions: int) -> int:
    from aiokafka import AIOKafkaProducer

    from connectors.kafka_config import aiokafka_config
    from schemas import default_registry
    from schemas.messages import EventMeta, new_id

    registry = default_registry()
    producer = AIOKafkaProducer(**aiokafka_config(settings), acks="all", linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    sent = 0
    try:
        for version in range(1, versions + 1):
            for t in range(tenants):
                for a in range(agents):
                    if version == 1:
                        kind, data = "AgentCreated", {"agent_id": f"a{a}", "name": "A", "agent_type": "llm", "region": "eu-west-1", "config": {}}
                    else:
                        kind, data = "AgentConfigured", {"agent_id": f"a{a}", "config": {"step": str(version)}}
                    value, headers = registry.encode(kind, data)
                    meta = EventMeta(event_id=new_id(), tenant_id=f"t{t}", stream_id=f"agent-a{a}", version=version, occurred_at=datetime.now(UTC), command_id="bench")
                    await producer.send("events.platform", key=f"t{t}".encode(), value=value, headers=headers + meta.to_headers())
                    sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def _archived() -> int:
    body = json.dumps({"sql": "SELECT count() AS n FROM agentstream.event_archive", "format": "json"}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{SINK_PORT}/sql", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(json.loads(response.read())["rows"][0][0])
    except OSError:
        return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--reads", type=int, default=50)
    args = parser.parse_args()
    from own_stack import own_stack

    from streams.event_store import EventStore
    from streams.supervisor import WorkerProcess

    with own_stack("agentstream-bench-reads-", 59392, 56579, AGENTSTREAM_SINK_PORT=str(SINK_PORT)) as settings:
        sink = WorkerProcess(settings.data_dir / "sink.log", args=["sink"]).start()
        try:
            load_started = time.perf_counter()
            total = asyncio.run(_load(settings, args.tenants, args.agents, args.versions))
            deadline = time.monotonic() + 900
            while _archived() < total and time.monotonic() < deadline:
                time.sleep(1)
            assert _archived() == total, f"the archive holds {_archived()} of {total} events\n{sink.log_tail()}"
            load_s = time.perf_counter() - load_started

            fast, kafka = EventStore(settings), EventStore(settings, use_archive=False)
            rng = random.Random(3)
            streams = [(f"t{rng.randrange(args.tenants)}", f"agent-a{rng.randrange(args.agents)}") for _ in range(args.reads)]
            fast_s, kafka_s = [], []

            async def run() -> None:
                await fast.get_events(*streams[0])  # warm-up: finds the sink, opens connections
                await kafka.get_events(*streams[0])
                for i, stream in enumerate(streams):
                    order = ((fast, fast_s), (kafka, kafka_s)) if i % 2 == 0 else ((kafka, kafka_s), (fast, fast_s))
                    results = []
                    for store, samples in order:
                        started = time.perf_counter()
                        results.append(await store.get_events(*stream))
                        samples.append(time.perf_counter() - started)
                    assert results[0] == results[1] and len(results[0]) == args.versions, stream
                    assert fast.last_read == "archive+kafka"

            asyncio.run(run())
        finally:
            sink.stop()

    f50, f95 = np.percentile(np.array(fast_s) * 1000, [50, 95])
    k50, k95 = np.percentile(np.array(kafka_s) * 1000, [50, 95])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, {platform.platform()}")
    print(
        f"events: {total:,} ({args.tenants} tenants x {args.agents} agent streams x {args.versions} versions) on 6 partitions; "
        f"produced and archived in {load_s:.1f} s; {args.reads} reads of random streams, alternating"
    )
    print(f"{'':44} {'p50 ms':>8} {'p95 ms':>8}")
    print(f"{'EventStore.get_events (archive + tail)':44} {f50:8.1f} {f95:8.1f}")
    print(f"{'baseline: the same with use_archive=False':44} {k50:8.1f} {k95:8.1f}")
    print(f"Kafka-only / fast p95 = {k95 / f95:.1f}x")


if __name__ == "__main__":
    main()
