"""Command handling and event folding in the Confluent wire format vs the format before it, same run.

Runs on its own local stack (ports 57092/54379 unless told, a temporary data dir) and stops it after:

    .venv/bin/python bench/wire_pipeline.py [--commands 40000] [--tasks 20000] [--rounds 3]

The same broker holds both formats side by side: ``commands.platform`` and ``events.platform``
are split into two halves of partitions (0-2 and 3-5), and each half gets tenants whose key
lands there. The "before" half is written in the format before the wire format (bare Avro body,
schema name and version headers: ``AGENTSTREAM_WIRE_FORMAT=headers``), the "after" half in the
wire format. Then, alternating before/after/after/before/..., one worker process per round runs
one agent under a fresh app id whose group was given the other half's end offsets (so it reads
exactly its own half, from the beginning, with empty tables), writing in that round's format:

1. folding: ``--agents facts_builder`` and ``--agents projector`` (a fresh Redis database per
   round) over the pre-loaded events (per task a TaskAssigned and a TaskCompleted or TaskFailed,
   as in ``bench/event_folding.py``);
2. command handling: ``--agents command_handler`` over the pre-loaded commands (one CreateAgent
   per tenant, then ConfigureAgents, as in ``bench/command_throughput.py``); it runs after the
   folding rounds because it appends events to ``events.platform``.

Each round is timed by the worker's own ``/runtime`` figures (``bench/worker_rounds.py``). The
last line printed is one JSON object: per agent the median rates of both formats, their ratio
(target >= 0.97) and the CPU µs per record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

HALVES = {"before": (0, 1, 2), "after": (3, 4, 5)}
FORMATS = {"before": "headers", "after": "confluent"}


def _tenants_in(partitions: tuple[int, ...], count: int, prefix: str, of: int) -> list[str]:
    """``count`` tenant names whose key lands in ``partitions`` of a topic of ``of`` partitions."""
    from streams.runtime.partitioning import KeyPartitioner

    partition_of, names, n = KeyPartitioner(of), [], 0
    while len(names) < count:
        name = f"{prefix}-{n}"
        if partition_of(name.encode()) in partitions:
            names.append(name)
        n += 1
    return names


def _skip_other_half(settings, app_id: str, agent: str, topic: str, own: tuple[int, ...]) -> None:
    """Commit, for the agent's group under ``app_id``, the end offsets of ``topic``'s partitions not in ``own``."""
    from confluent_kafka import Consumer, TopicPartition

    from connectors.kafka_config import confluent_config

    consumer = Consumer({**confluent_config(settings), "group.id": f"{app_id}-{agent}", "enable.auto.commit": False})
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = [TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]) for p in parts if p not in own]
    consumer.commit(offsets=ends, asynchronous=False)
    consumer.close()


def _round(settings, agent: str, topic: str, side: str, records: int, port: int, env: dict[str, str] | None = None) -> dict:
    from worker_rounds import time_worker

    app_id = f"bench-wire-{uuid.uuid4().hex[:6]}"
    _skip_other_half(settings, app_id, agent, topic, HALVES[side])
    return time_worker(settings, agent, records, port, env={"AGENTSTREAM_WIRE_FORMAT": FORMATS[side], **(env or {})}, app_id=app_id)


def _summary(rounds: dict[str, list[dict]]) -> dict:
    before = statistics.median(r["rate"] for r in rounds["before"])
    after = statistics.median(r["rate"] for r in rounds["after"])
    return {
        "before_per_s": round(before),
        "after_per_s": round(after),
        "ratio": round(after / before, 3),
        "before_cpu_us": round(statistics.median(r["cpu_us"] for r in rounds["before"]), 1),
        "after_cpu_us": round(statistics.median(r["cpu_us"] for r in rounds["after"]), 1),
        "rounds": {side: [round(r["rate"]) for r in results] for side, results in rounds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=40_000, help="commands per half")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per half (about 2.3 events each)")
    parser.add_argument("--tenants", type=int, default=50, help="tenants per half")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per format and agent")
    parser.add_argument("--kafka-port", type=int, default=57092)
    parser.add_argument("--redis-port", type=int, default=54379)
    parser.add_argument("--web-port", type=int, default=6960, help="first of the workers' web ports (one per round)")
    args = parser.parse_args()

    from command_throughput import _preload as preload_commands
    from event_folding import _preload as preload_events
    from own_stack import own_stack

    from schemas import default_registry
    from schemas.registry import SchemaRegistry
    from schemas.topics import COMMANDS, EVENTS

    figures: dict = {"benchmark": "wire_pipeline", "commands": args.commands, "tasks": args.tasks}
    with own_stack("agentstream-bench-wire-", args.kafka_port, args.redis_port, AGENTSTREAM_WEB_PORT=str(args.web_port - 1)) as settings:
        bound = default_registry()
        old_format = SchemaRegistry.load()
        old_format.write_format = "headers"
        writers = {"before": old_format, "after": bound}
        events: dict[str, int] = {}
        for side, partitions in HALVES.items():
            preload_commands(settings, _tenants_in(partitions, args.tenants, f"cmd-{side}", 6), args.commands, registry=writers[side])
            events[side] = preload_events(settings, args.tasks, _tenants_in(partitions, args.tenants, f"fold-{side}", 6), registry=writers[side])
        assert events["before"] == events["after"], events  # same seed, same shape
        figures["events"] = events["after"]
        redis_base = settings.redis_url.get_secret_value().rsplit("/", 1)[0]
        port, db = args.web_port, 0
        plan = [("facts_builder", EVENTS, events["after"]), ("projector", EVENTS, events["after"]), ("command_handler", COMMANDS, args.commands)]
        for agent, topic, records in plan:
            rounds: dict[str, list[dict]] = {"before": [], "after": []}
            for n in range(args.rounds):
                for side in ("before", "after") if n % 2 == 0 else ("after", "before"):
                    env = None
                    if agent == "projector":
                        db += 1
                        env = {"AGENTSTREAM_REDIS_URL": f"{redis_base}/{db}"}
                    rounds[side].append(_round(settings, agent, topic, side, records, port, env))
                    port += 1
                    print(f"{agent}, round {n + 1}, {side}: {rounds[side][-1]['rate']:,.0f}/s, {rounds[side][-1]['cpu_us']:.1f} us CPU/record", flush=True)
            figures[agent] = _summary(rounds)
            print(f"{agent}: {figures[agent]}", flush=True)
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, {platform.platform()}"
    figures["load_average"] = os.getloadavg()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
