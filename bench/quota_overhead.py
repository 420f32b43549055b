"""Command throughput with quotas on vs off, in the same run: what the quota row costs the command path.

Runs on its own local stack (ports 37192/37479 unless told, a temporary data dir) and stops it after:

    .venv/bin/python bench/quota_overhead.py [--commands 50000] [--rounds 3] [--tenants 100]

N commands (one CreateAgent per tenant, then ConfigureAgents round-robin over the tenants, as in
``bench/command_throughput.py``) are pre-loaded into ``commands.platform``. Then, alternating
on/off/on/off, ``agentstream worker --agents command_handler`` runs under a fresh app id (its
group starts at the beginning, its tables empty) with ``AGENTSTREAM_QUOTAS_ENABLED`` true or
false and is timed by its own ``/runtime`` figures from its first batch to the commit covering
the last command (``bench/worker_rounds.py``). With quotas on, every command also reads the
tenant's quota row, is checked against the free plan's limits (none is reached: 1,000 commands
an hour per tenant, at most 500 here) and writes the row back in the same transaction.

The last line printed is one JSON object: the medians of both, their ratio (target >= 0.9) and
every round.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3, help="on/off pairs")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--kafka-port", type=int, default=37192)
    parser.add_argument("--redis-port", type=int, default=37479)
    parser.add_argument("--web-port", type=int, default=6390, help="first of the workers' web ports (one per round)")
    args = parser.parse_args()
    if args.commands > args.tenants * 1000:
        parser.error("more than 1,000 commands per tenant would pass the free plan's hourly rate")

    from command_throughput import _preload
    from own_stack import own_stack
    from worker_rounds import time_worker

    rounds: dict[str, list[dict]] = {"on": [], "off": []}
    with own_stack("agentstream-bench-quota-", args.kafka_port, args.redis_port, AGENTSTREAM_WEB_PORT=str(args.web_port - 1)) as settings:
        _preload(settings, args.tenants, args.commands)
        port = args.web_port
        for n in range(args.rounds):
            for mode in ("on", "off") if n % 2 == 0 else ("off", "on"):
                env = {"AGENTSTREAM_QUOTAS_ENABLED": "true" if mode == "on" else "false"}
                result = time_worker(settings, "command_handler", args.commands, port, env=env)
                port += 1
                rounds[mode].append(result)
                print(f"round {n + 1}, quotas {mode}: {result['rate']:,.0f} commands/s, {result['cpu_us']:.0f} us CPU/command", flush=True)
    on = statistics.median(r["rate"] for r in rounds["on"])
    off = statistics.median(r["rate"] for r in rounds["off"])
    figures = {
        "benchmark": "quota_overhead",
        "commands": args.commands,
        "tenants": args.tenants,
        "quotas_on_per_s": round(on),
        "quotas_off_per_s": round(off),
        "ratio": round(on / off, 3),
        "quotas_on_cpu_us_per_command": round(statistics.median(r["cpu_us"] for r in rounds["on"]), 1),
        "quotas_off_cpu_us_per_command": round(statistics.median(r["cpu_us"] for r in rounds["off"]), 1),
        "rounds": {mode: [round(r["rate"]) for r in results] for mode, results in rounds.items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, {platform.platform()}",
        "load_average": os.getloadavg(),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
