"""Events per second of the facts builder and of the projector, each alone in one worker process.

Runs on its own local stack (ports 58092/55379, a temporary data dir) and stops it after:

    .venv/bin/python bench/event_folding.py [--tasks 40000] [--rounds 2]

N events are pre-loaded into ``events.platform`` (per tenant 8 agents created; per task a
TaskAssigned and a TaskCompleted or TaskFailed; an AgentConfigured every 4th task), over 100
tenants. Then, alternating, each round:

A. ``agentstream worker --agents facts_builder`` and ``--agents projector`` (each under a fresh
   app id, the projector into a fresh Redis database), timed from the first batch to the commit
   covering the last event, with the process's CPU µs per event over the same span;
B. a bare confluent-kafka consume loop (read_committed, the same batch taking) that decodes each
   event's Avro payload and envelope, and does nothing else.

The last line printed is one JSON object with every figure (docs/benchmarks.md names them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from worker_rounds import produce  # noqa: E402  (bench/ is on the path from here)

TENANTS = 100


def _preload(settings, tasks: int, tenants: list[str] | None = None, registry=None) -> int:
    """The events of ``tasks`` tasks over ``tenants`` (default: ``TENANTS`` tenants ``fold-N``),
    encoded by ``registry`` (default: the process's bound one); returns how many were written."""
    from confluent_kafka import Producer

    from connectors.kafka_config import confluent_config
    from schemas import default_registry
    from schemas.messages import EventMeta

    registry = registry or default_registry()
    names = tenants or [f"fold-{n}" for n in range(TENANTS)]
    rng = random.Random(3)
    producer = Producer({**confluent_config(settings), "partitioner": "murmur2_random", "linger.ms": 20})
    versions: dict[tuple[str, str], int] = {}
    start = datetime.now(UTC) - timedelta(hours=3)
    count = 0

    def emit(t: str, stream: str, kind: str, data: dict, at: datetime) -> None:
        nonlocal count
        version = versions[(t, stream)] = versions.get((t, stream), 0) + 1
        value, headers = registry.encode(kind, data)
        meta = EventMeta(event_id=uuid.uuid4().hex, tenant_id=t, stream_id=stream, version=version, occurred_at=at, command_id="load")
        produce(producer, "events.platform", value, t.encode(), headers + meta.to_headers())
        count += 1

    for t in names:
        for a in range(8):
            emit(t, f"agent-a{a}", "AgentCreated", {"agent_id": f"a{a}", "name": "A", "agent_type": "llm", "region": "eu-west-1", "config": {}}, start)
    for n in range(tasks):
        t, agent = names[n % len(names)], f"a{rng.randrange(8)}"
        begun = start + timedelta(seconds=rng.uniform(0, 3 * 3600))
        emit(t, f"task-{n}", "TaskAssigned", {"task_id": str(n), "agent_id": agent, "task_type": "x", "input": {}}, begun)
        if rng.random() < 0.9:
            emit(t, f"task-{n}", "TaskCompleted", {"task_id": str(n), "agent_id": agent, "output": {}, "cost": 0.01}, begun + timedelta(seconds=2))
        else:
            emit(t, f"task-{n}", "TaskFailed", {"task_id": str(n), "agent_id": agent, "error": "timeout", "cost": 0.001}, begun + timedelta(seconds=2))
        if n % 4 == 0:
            emit(t, f"agent-{agent}", "AgentConfigured", {"agent_id": agent, "config": {"n": str(n)}}, begun)
    assert producer.flush(120) == 0
    return count


def _baseline_round(settings, events: int) -> dict:
    """A bare consume loop that decodes every event (payload and envelope) and keeps nothing."""
    from confluent_kafka import Consumer

    from connectors.kafka_config import confluent_config
    from schemas import default_registry
    from schemas.messages import EventMeta
    from worker_rounds import take

    registry = default_registry()
    consumer = Consumer(
        {**confluent_config(settings), "group.id": f"bench-fold-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False, "isolation.level": "read_committed", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe(["events.platform"])
    done, first, cpu_start = 0, None, time.process_time()
    try:
        while done < events:
            messages = take(consumer)
            if not messages:
                continue
            if first is None:
                first, cpu_start = time.perf_counter(), time.process_time()
            for m in messages:
                if m.error():
                    continue
                headers = m.headers()
                registry.decode(m.value(), headers)
                EventMeta.from_headers(headers)
                done += 1
        return {"rate": events / (time.perf_counter() - first), "cpu_us": (time.process_time() - cpu_start) / events * 1e6}
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from own_stack import own_stack
    from worker_rounds import time_worker

    with own_stack("agentstream-bench-fold-", 58092, 55379, AGENTSTREAM_WEB_PORT="6866") as settings:
        events = _preload(settings, args.tasks)
        results: dict[str, list[dict]] = {"facts_builder": [], "projector": [], "baseline": []}
        redis_base = settings.redis_url.get_secret_value().rsplit("/", 1)[0]
        for n in range(args.rounds):
            results["facts_builder"].append(time_worker(settings, "facts_builder", events, 6870 + n))
            results["projector"].append(time_worker(settings, "projector", events, 6880 + n, env={"AGENTSTREAM_REDIS_URL": f"{redis_base}/{n + 1}"}))
            results["baseline"].append(_baseline_round(settings, events))
            print(f"round {n + 1}: " + ", ".join(f"{k} {v[-1]['rate']:,.0f}/s ({v[-1]['cpu_us']:.1f} us CPU/event)" for k, v in results.items()), flush=True)
    figures = {
        "benchmark": "event_folding",
        "events": events,
        **{f"{k}_per_s": round(statistics.median(r["rate"] for r in v)) for k, v in results.items()},
        **{f"{k}_cpu_us_per_event": round(statistics.median(r["cpu_us"] for r in v), 1) for k, v in results.items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, {platform.platform()}",
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
