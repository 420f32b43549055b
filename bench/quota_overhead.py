"""Command throughput with quotas on vs off, in the same run: what the quota row costs the command path.

Runs on its own local stack (ports 37192/37479 unless told, a temporary data dir) and stops it after:

    .venv/bin/python bench/quota_overhead.py [--commands 50000] [--rounds 3] [--tenants 100] [--workload configure|lifecycle]

N commands are pre-loaded into ``commands.platform``, by ``--workload``:

- ``configure`` (the cheapest command, so the quota's fixed cost weighs most): one CreateAgent
  per tenant, then ConfigureAgents round-robin over the tenants, as in
  ``bench/command_throughput.py``;
- ``lifecycle`` (the commands quotas govern): per tenant a CreateTenant, a SetTenantQuota, a
  CreateAgent and a StartAgent, then AssignTask / StartTask / CompleteTask per task, tenants interleaved.

Then, alternating
on/off/on/off, ``agentstream worker --agents command_handler`` runs under a fresh app id (its
group starts at the beginning, its tables empty) with ``AGENTSTREAM_QUOTAS_ENABLED`` true or
false and is timed by its own ``/runtime`` figures from its first batch to the commit covering
the last command (``bench/worker_rounds.py``). With quotas on, every command also reads the
tenant's quota row, is checked against its limits (none is reached: with ``configure`` the free
plan allows 1,000 commands an hour per tenant, with ``lifecycle`` the tenant's SetTenantQuota
lifts rate and budget) and writes the row back in the same transaction.

The last line printed is one JSON object: the medians of both, their ratio (target >= 0.9), the
median of each round's on/off ratio, every round, and the answers of all rounds by status (a
rejection there would be a bench bug).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _preload_lifecycle(settings, tenants: int, commands: int) -> int:
    """The task life cycle over ``tenants``: per tenant a CreateTenant, a SetTenantQuota that lifts
    the rate and budget a long run needs, a CreateAgent and a StartAgent, then AssignTask, StartTask and
    CompleteTask per task, tenants interleaved (every command but the set-up is one the quotas
    govern: a slot and a reservation taken, then settled with the cost). Returns how many were
    written (``commands`` rounded down to whole tasks)."""
    from confluent_kafka import Producer

    from connectors.kafka_config import confluent_config
    from schemas import default_registry
    from schemas.messages import CommandMeta
    from worker_rounds import produce

    registry = default_registry()
    producer = Producer({**confluent_config(settings), "partitioner": "murmur2_random", "linger.ms": 20, "enable.idempotence": True})
    setup = [
        ("CreateTenant", {"name": "Bench"}),
        ("SetTenantQuota", {"api_rate_per_hour": 10**9, "monthly_budget_micros": 10**12, "storage_limit_bytes": 10**12, "max_concurrent_tasks": 1000}),
        ("CreateAgent", {"agent_id": "bot", "name": "Bot", "agent_type": "llm"}),
        ("StartAgent", {"agent_id": "bot"}),
    ]
    per_tenant = (commands - len(setup) * tenants) // tenants // 3

    def steps(task: int) -> list[tuple[str, dict]]:
        k = f"k{task}"
        return [
            ("AssignTask", {"task_id": k, "agent_id": "bot", "task_type": "x", "input": {}, "max_cost": 2000}),
            ("StartTask", {"task_id": k, "agent_id": "bot"}),
            ("CompleteTask", {"task_id": k, "output": {}, "cost": 0.001}),
        ]

    sequence = setup + [step for task in range(per_tenant) for step in steps(task)]
    sent = 0
    for position, (name, data) in enumerate(sequence):
        value, headers = registry.encode(name, data)
        for n in range(tenants):
            t = f"bench-{n}"
            produce(producer, "commands.platform", value, t.encode(), headers + CommandMeta(command_id=f"c{position}-{n}", tenant_id=t).to_headers())
            sent += 1
    assert producer.flush(120) == 0
    return sent


def _outcomes(settings) -> dict[str, int]:
    """Answers on results.commands over every round, by status and rejection code."""
    from collections import Counter

    import orjson

    from worker_rounds import read_to_end

    counts: Counter = Counter()
    for m in read_to_end(settings, "results.commands"):
        result = orjson.loads(m.value())
        counts[result["status"] if result["status"] == "accepted" else f"rejected {result['code']}"] += 1
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3, help="on/off pairs")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--kafka-port", type=int, default=37192)
    parser.add_argument("--redis-port", type=int, default=37479)
    parser.add_argument("--web-port", type=int, default=6390, help="first of the workers' web ports (one per round)")
    parser.add_argument("--workload", choices=("configure", "lifecycle"), default="configure")
    args = parser.parse_args()
    if args.workload == "configure" and args.commands > args.tenants * 1000:
        parser.error("more than 1,000 commands per tenant would pass the free plan's hourly rate")

    from command_throughput import _preload
    from own_stack import own_stack
    from worker_rounds import time_worker

    rounds: dict[str, list[dict]] = {"on": [], "off": []}
    with own_stack("agentstream-bench-quota-", args.kafka_port, args.redis_port, AGENTSTREAM_WEB_PORT=str(args.web_port - 1)) as settings:
        if args.workload == "lifecycle":
            args.commands = _preload_lifecycle(settings, args.tenants, args.commands)
        else:
            _preload(settings, args.tenants, args.commands)
        port = args.web_port
        for n in range(args.rounds):
            for mode in ("on", "off") if n % 2 == 0 else ("off", "on"):
                env = {"AGENTSTREAM_QUOTAS_ENABLED": "true" if mode == "on" else "false"}
                result = time_worker(settings, "command_handler", args.commands, port, env=env)
                port += 1
                rounds[mode].append(result)
                print(f"round {n + 1}, quotas {mode}: {result['rate']:,.0f} commands/s, {result['cpu_us']:.0f} us CPU/command, {result['batches']} batches", flush=True)
        outcomes = _outcomes(settings)
    on = statistics.median(r["rate"] for r in rounds["on"])
    off = statistics.median(r["rate"] for r in rounds["off"])
    figures = {
        "benchmark": "quota_overhead",
        "commands": args.commands,
        "tenants": args.tenants,
        "workload": args.workload,
        "answers": outcomes,
        "quotas_on_per_s": round(on),
        "quotas_off_per_s": round(off),
        "ratio": round(on / off, 3),
        # Each round's on and off run back to back: the median of their ratios is a second view,
        # less moved by slow spells of the machine (worker processes of the same code vary by up to 10 %).
        "ratio_of_rounds": round(statistics.median(a["rate"] / b["rate"] for a, b in zip(rounds["on"], rounds["off"])), 3),
        "quotas_on_cpu_us_per_command": round(statistics.median(r["cpu_us"] for r in rounds["on"]), 1),
        "quotas_off_cpu_us_per_command": round(statistics.median(r["cpu_us"] for r in rounds["off"]), 1),
        "rounds": {mode: [round(r["rate"]) for r in results] for mode, results in rounds.items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, {platform.platform()}",
        "load_average": os.getloadavg(),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
