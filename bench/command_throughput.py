"""Commands per second of one worker process, exactly once, against a bare loop in the same client.

Runs on its own local stack (ports 59092/56379, a temporary data dir) and stops it after:

    .venv/bin/python bench/command_throughput.py [--commands 50000] [--rounds 2] [--tenants 100,10000] [--rate 5000]

For each tenant count, on a fresh stack, N commands (one CreateAgent per tenant, then
ConfigureAgents round-robin over the tenants) are pre-loaded into ``commands.platform``. Then,
alternating A/B/A/B:

A. agentstream: ``agentstream worker --agents command_handler`` (a fresh app id each round, so
   its consumer group starts at the beginning and its tables are empty) is timed from its first
   batch to the commit that covers the last command (its ``/runtime`` page reports both); its
   CPU seconds over the same span come from ``/proc/<pid>/stat``. Every command is then checked
   to have exactly one answer on ``results.commands``.
B. baseline: a bare confluent-kafka consume -> transform -> produce loop with the same
   transactional protocol (read_committed, one transaction per batch with the offsets and the
   group metadata) that decodes each command's Avro and writes one event and one result.

Then a latency run: with one worker running, commands are offered at ``--rate`` per second for
a few seconds and the time from send to the answer being read is measured (p50, p99).

The last line printed is one JSON object with every figure (docs/benchmarks.md names them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from worker_rounds import produce  # noqa: E402  (bench/ is on the path from here)

def _preload(settings, tenants: int | list[str], commands: int, registry=None) -> None:
    """``commands`` commands over ``tenants`` (a count of ``bench-N`` tenants, or their names): one
    CreateAgent per tenant, then ConfigureAgents round-robin, encoded by ``registry`` (default: the
    process's bound one)."""
    from confluent_kafka import Producer

    from connectors.kafka_config import confluent_config
    from schemas import default_registry
    from schemas.messages import CommandMeta

    registry = registry or default_registry()
    names = [f"bench-{n}" for n in range(tenants)] if isinstance(tenants, int) else tenants
    producer = Producer({**confluent_config(settings), "partitioner": "murmur2_random", "linger.ms": 20, "enable.idempotence": True})
    create = registry.encode("CreateAgent", {"agent_id": "bot", "name": "Bot", "agent_type": "llm"})
    for i in range(commands):
        t = names[i % len(names)]
        if i < len(names):
            value, headers = create
        else:
            value, headers = registry.encode("ConfigureAgent", {"agent_id": "bot", "config": {"step": str(i)}})
        produce(producer, "commands.platform", value, t.encode(), headers + CommandMeta(command_id=f"c{i}", tenant_id=t).to_headers())
    assert producer.flush(120) == 0


def _agentstream_round(settings, commands: int, web_port: int) -> dict:
    """One worker process running only the command handler, timed by its own stats."""
    from worker_rounds import time_worker

    round_ = time_worker(settings, "command_handler", commands, web_port)
    return {**round_, "cpu_us_per_command": round_["cpu_us"]}


def _baseline_round(settings, commands: int) -> dict:
    """A bare confluent-kafka transactional loop: decode, one event and one result per command."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from connectors.kafka_config import confluent_config
    from schemas import default_registry
    from worker_rounds import take

    registry = default_registry()
    base = confluent_config(settings)
    group = f"bench-baseline-{uuid.uuid4().hex[:6]}"
    consumer = Consumer({**base, "group.id": group, "enable.auto.commit": False, "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
    producer = Producer({**base, "transactional.id": group, "linger.ms": 2, "partitioner": "murmur2_random"})
    producer.init_transactions(30)
    consumer.subscribe(["commands.platform"])
    done = 0
    first = None
    cpu_start = time.process_time()
    try:
        while done < commands:
            messages = take(consumer)
            if not messages:
                continue
            if first is None:
                first, cpu_start = time.perf_counter(), time.process_time()
            producer.begin_transaction()
            offsets: dict[tuple[str, int], int] = {}
            for m in messages:
                if m.error():
                    continue
                name, payload = registry.decode(m.value(), m.headers())
                event, event_headers = registry.encode("AgentConfigured" if name == "ConfigureAgent" else "AgentCreated", payload.model_dump() if name == "ConfigureAgent" else {**payload.model_dump(), "region": "eu"})
                producer.produce("bench.events", event, m.key(), partition=m.partition(), headers=event_headers)
                producer.produce("bench.results", b'{"status":"accepted"}', m.key())
                offsets[(m.topic(), m.partition())] = m.offset() + 1
                done += 1
            producer.send_offsets_to_transaction([TopicPartition(t, p, o) for (t, p), o in offsets.items()], consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(30)
        elapsed = time.perf_counter() - first
        return {"rate": commands / elapsed, "seconds": elapsed, "cpu_us_per_command": (time.process_time() - cpu_start) / commands * 1e6}
    finally:
        consumer.close()


def _answers(settings, app_rounds: int, commands: int) -> dict[str, int]:
    """How many answers each command id has on results.commands (all rounds write there)."""
    from collections import Counter

    from worker_rounds import read_to_end

    counts = Counter(m.key().decode() for m in read_to_end(settings, "results.commands"))
    return {"ids": len(counts), "all_answered_once_per_round": all(n == app_rounds for n in counts.values()) and len(counts) == commands}


def _latency(settings, rate: float, seconds: float, web_port: int) -> dict:
    """Send -> answer at a fixed offered rate, with one worker (command handler) running.

    The answers are read by a ``read_committed`` consumer that was fetching before the first
    send; the time of a command is from just before its ``produce`` to the moment its answer is
    read.
    """
    from confluent_kafka import Consumer, Producer, TopicPartition

    from connectors.kafka_config import confluent_config
    from schemas import default_registry
    from schemas.messages import CommandMeta
    from streams.supervisor import WorkerProcess
    from worker_rounds import runtime_status

    app_id = f"bench-lat-{uuid.uuid4().hex[:6]}"
    registry = default_registry()
    base = confluent_config(settings)
    _set_group_to_end(settings, f"{app_id}-command_handler")  # skip what earlier rounds left
    env = {"AGENTSTREAM_APP_ID": app_id, "AGENTSTREAM_WEB_PORT": str(web_port), "AGENTSTREAM_LOG_LEVEL": "warn"}
    worker = WorkerProcess(settings.data_dir / f"{app_id}.log", env=env, args=["worker", "--agents", "command_handler"], restart=False).start()
    reader = Consumer({**base, "group.id": f"{app_id}-reader", "isolation.level": "read_committed", "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    parts = reader.list_topics("results.commands", timeout=10).topics["results.commands"].partitions
    reader.assign([TopicPartition("results.commands", p, reader.get_watermark_offsets(TopicPartition("results.commands", p), timeout=10)[1]) for p in parts])
    sent: dict[str, float] = {}
    latencies: list[float] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for m in reader.consume(1000, timeout=0.05):
                if m.error() is None and m.key() is not None:
                    at = sent.get(m.key().decode())
                    if at is not None:
                        latencies.append(time.perf_counter() - at)

    thread = threading.Thread(target=read, daemon=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if runtime_status(web_port)["agents"][0]["partitions"]:
                    break
            except (OSError, IndexError, KeyError):
                pass
            time.sleep(0.2)
        thread.start()
        time.sleep(2)  # the reader is fetching, the worker is idle
        producer = Producer({**base, "partitioner": "murmur2_random", "linger.ms": 0})
        value, headers = registry.encode("ConfigureAgent", {"agent_id": "bot", "config": {"step": "x"}})
        total = int(rate * seconds)
        started = time.perf_counter()
        for i in range(total):
            t = f"bench-{i % 100}"
            cid = uuid.uuid4().hex
            sent[cid] = time.perf_counter()
            producer.produce("commands.platform", value, t.encode(), headers=headers + CommandMeta(command_id=cid, tenant_id=t).to_headers())
            producer.poll(0)
            ahead = started + (i + 1) / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        producer.flush(30)
        wait_until = time.monotonic() + 30
        while len(latencies) < total and time.monotonic() < wait_until:
            time.sleep(0.2)
        stop.set()
        thread.join(5)
        latencies.sort()
        q = lambda p: round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1) if latencies else float("nan")  # noqa: E731
        return {"offered_per_s": rate, "sent": total, "answered": len(latencies), "p50_ms": q(0.50), "p99_ms": q(0.99)}
    finally:
        stop.set()
        worker.stop()
        reader.close()


def _set_group_to_end(settings, group: str) -> None:
    """Commit the end offsets of commands.platform for ``group``, so a new worker skips the backlog."""
    from confluent_kafka import Consumer, TopicPartition

    from connectors.kafka_config import confluent_config

    c = Consumer({**confluent_config(settings), "group.id": group, "enable.auto.commit": False})
    parts = c.list_topics("commands.platform", timeout=10).topics["commands.platform"].partitions
    c.commit(offsets=[TopicPartition("commands.platform", p, c.get_watermark_offsets(TopicPartition("commands.platform", p), timeout=10)[1]) for p in parts], asynchronous=False)
    c.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2, help="A/B pairs per tenant count")
    parser.add_argument("--tenants", default="100,10000")
    parser.add_argument("--rate", type=float, default=5000.0, help="offered rate of the latency run (0: no latency run)")
    args = parser.parse_args()

    from own_stack import own_stack

    from connectors.kafka_admin import admin_client

    figures: dict = {"benchmark": "command_throughput", "commands": args.commands, "cases": {}}
    for tenants in [int(t) for t in args.tenants.split(",")]:
        with own_stack("agentstream-bench-", 59092, 56379, AGENTSTREAM_WEB_PORT="6766") as settings:
            from confluent_kafka.admin import NewTopic

            admin = admin_client(settings)
            for future in admin.create_topics([NewTopic("bench.events", 6, 1), NewTopic("bench.results", 6, 1)]).values():
                future.result(30)
            _preload(settings, tenants, args.commands)
            ours, base = [], []
            for n in range(args.rounds):
                ours.append(_agentstream_round(settings, args.commands, 6770 + n))
                base.append(_baseline_round(settings, args.commands))
                print(f"{tenants} tenants, round {n + 1}: agentstream {ours[-1]['rate']:,.0f}/s ({ours[-1]['cpu_us_per_command']:.0f} us CPU/command), baseline {base[-1]['rate']:,.0f}/s ({base[-1]['cpu_us_per_command']:.0f} us)", flush=True)
            answers = _answers(settings, args.rounds, args.commands)
            case = {
                "agentstream_per_s": round(statistics.median(r["rate"] for r in ours)),
                "agentstream_cpu_us_per_command": round(statistics.median(r["cpu_us_per_command"] for r in ours), 1),
                "baseline_per_s": round(statistics.median(r["rate"] for r in base)),
                "baseline_cpu_us_per_command": round(statistics.median(r["cpu_us_per_command"] for r in base), 1),
                "rounds": [{"agentstream_per_s": round(a["rate"]), "baseline_per_s": round(b["rate"])} for a, b in zip(ours, base)],
                **answers,
            }
            case["ratio"] = round(case["agentstream_per_s"] / case["baseline_per_s"], 2)
            if args.rate and tenants == int(args.tenants.split(",")[0]):
                figures["latency"] = _latency(settings, args.rate, 10.0, 6790)
                print(f"latency at {args.rate:,.0f}/s offered: {figures['latency']}", flush=True)
            figures["cases"][str(tenants)] = case
            print(f"{tenants} tenants: {case}", flush=True)
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, {platform.platform()}"
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
