"""Commands per second end to end (send -> result), exactly once, against a bare baseline.

Runs on its own local stack (ports 59092/56379, a temporary data dir) and stops it after:

    .venv/bin/python bench/command_throughput.py [--commands 20000]

1. agentstream: N ConfigureAgent commands over 100 tenants are produced as fast as possible and
   the clock stops when the last result has been read from the results topic; one worker,
   ``processing_guarantee="exactly_once"``.
2. baseline, same run, same broker: a bare aiokafka consume-transform-produce loop with the same
   transactional settings (read_committed consumer, transactional producer, offsets committed in
   the transaction) decodes each command's Avro and produces one event and one result per command.

Prints both rates, their ratio and the machine; the numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time

TENANTS = 100


async def _agentstream(settings, commands: int) -> float:
    from streams.client import CommandClient

    async with CommandClient(settings) as client:
        # Warm-up: every tenant gets its agent (also waits for the worker to join).
        await client.send("CreateAgent", "bench-0", {"agent_id": "bot", "name": "Bot", "agent_type": "llm"}, timeout=120)
        await asyncio.gather(*(client.send("CreateAgent", f"bench-{t}", {"agent_id": "bot", "name": "Bot", "agent_type": "llm"}) for t in range(1, TENANTS)))
        started = time.perf_counter()
        pending = [
            client.send("ConfigureAgent", f"bench-{i % TENANTS}", {"agent_id": "bot", "config": {"step": str(i)}}, timeout=600)
            for i in range(commands)
        ]
        outcomes = await asyncio.gather(*pending)
        elapsed = time.perf_counter() - started
    accepted = sum(1 for o in outcomes if getattr(o, "status", "") == "accepted")
    assert accepted == commands, f"only {accepted} of {commands} accepted"
    return commands / elapsed


async def _baseline(settings, commands: int) -> float:
    """A bare transactional consume-transform-produce loop over the same kind of records."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from confluent_kafka.admin import NewTopic

    from connectors.kafka_admin import admin_client
    from connectors.kafka_config import aiokafka_config
    from schemas import default_registry
    from schemas.messages import CommandMeta

    admin = admin_client(settings)
    for future in admin.create_topics([NewTopic("bench.in", 6, 1), NewTopic("bench.out", 6, 1), NewTopic("bench.results", 6, 1)]).values():
        future.result(30)
    registry = default_registry()
    conf = aiokafka_config(settings)
    producer = AIOKafkaProducer(**conf, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    for i in range(commands):
        value, headers = registry.encode("ConfigureAgent", {"agent_id": "bot", "config": {"step": str(i)}})
        tenant = f"bench-{i % TENANTS}"
        await producer.send("bench.in", key=tenant.encode(), value=value, headers=headers + CommandMeta(command_id=str(i), tenant_id=tenant).to_headers())
    await producer.flush()
    await producer.stop()

    consumer = AIOKafkaConsumer(
        "bench.in", **conf, group_id="bench-baseline", isolation_level="read_committed", enable_auto_commit=False, auto_offset_reset="earliest"
    )
    txn = AIOKafkaProducer(**conf, transactional_id="bench-baseline-txn", linger_ms=5)
    await consumer.start()
    await txn.start()
    done = 0
    started = time.perf_counter()
    try:
        while done < commands:
            batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
            if not batch:
                continue
            async with txn.transaction():
                offsets = {}
                for tp, records in batch.items():
                    for record in records:
                        name, payload = registry.decode(record.value, record.headers)
                        event, event_headers = registry.encode("AgentConfigured", payload.model_dump())
                        await txn.send("bench.out", key=record.key, value=event, headers=event_headers)
                        await txn.send("bench.results", key=record.key, value=b'{"status":"accepted"}')
                        done += 1
                    offsets[tp] = records[-1].offset + 1
                await txn.send_offsets_to_transaction({TopicPartition(tp.topic, tp.partition): o for tp, o in offsets.items()}, "bench-baseline")
    finally:
        await consumer.stop()
        await txn.stop()
    return commands / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=20_000)
    args = parser.parse_args()

    from own_stack import own_stack

    from streams.supervisor import WorkerProcess

    with own_stack("agentstream-bench-", 59092, 56379, AGENTSTREAM_WEB_PORT="6766") as settings:
        worker = WorkerProcess(settings.data_dir / "worker.log").start()
        try:
            ours = asyncio.run(_agentstream(settings, args.commands))
        finally:
            worker.stop()
        base = asyncio.run(_baseline(settings, args.commands))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, {platform.platform()}")
    print(f"commands: {args.commands} over {TENANTS} tenants, one worker, exactly once")
    print(f"agentstream end to end (send -> result): {ours:,.0f} commands/s")
    print(f"baseline aiokafka transactional loop:    {base:,.0f} commands/s")
    print(f"ratio agentstream / baseline: {ours / base:.2f}")


if __name__ == "__main__":
    main()
