"""Drift monitor throughput: task facts per second with every declared detector on, against river's raw rate.

Feeds ``--facts`` synthetic task facts spread over ``--tenants`` x ``--agent-types`` keys through
``DriftMonitor.observe`` (the call the detection agent makes per fact: three drift channels and
the anomaly channel), and, in turns with it over the same facts, the same values straight into bare
river detectors of the same classes and parameters (no transform, key lookup, summary buffer or bad-value
check): the ceiling the monitor's own work is measured against. Also times writing the state of
every key touched (``dump_state``), as the runtime would once per batch. Both timed passes run
on warm keys (every key's detectors built by an untimed first pass): building a HalfSpaceTrees
model is a one-time cost per (tenant, agent_type).

With ``--worker-rounds N`` (default 2) the same facts are then produced to ``facts.tasks`` on a
local stack of the bench's own (Kafka 39602, Redis 39589, stopped after) and, N times,
``agentstream worker --agents drift_detector`` under a fresh app id (empty tables: its keys
start cold) is timed from its first batch to the commit covering the last fact
(``worker_rounds.time_worker``): the detector inside the runtime, with its JSON decoding, state
writes to the changelog and transactions. After each worker round bare river takes one more
pass over the facts, so the worker's rate is set against river's measured in the same minutes.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from worker_rounds import produce  # noqa: E402  (bench/ is on the path from here)

from schemas.settings import REPO_ROOT  # noqa: E402
from schemas.topology import load_topology  # noqa: E402
from streams.drift.catalog import build  # noqa: E402
from streams.drift.monitor import DriftMonitor  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--facts", type=int, default=200_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--agent-types", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20, help="turns the monitor and river alone take over the facts")
    parser.add_argument("--worker-rounds", type=int, default=2, help="timed runs of the drift_detector worker (0: none)")
    parser.add_argument("--max-batch", type=int, default=None, help="the worker's AGENTSTREAM_RUNTIME_MAX_BATCH (default: the setting's)")
    args = parser.parse_args()
    spec = load_topology(REPO_ROOT / "topology.yaml").drift
    assert spec is not None and spec.anomaly is not None
    rng = random.Random(1)
    facts = [
        {
            "tenant": f"tenant-{rng.randrange(args.tenants)}",
            "agent_type": f"type-{rng.randrange(args.agent_types)}",
            "response_time_ms": rng.lognormvariate(6.5, 0.5),
            "cost": rng.lognormvariate(-3.5, 1.0),
            "outcome": "failed" if rng.random() < 0.05 else "completed",
            "event_time": "2026-01-01T00:00:00+00:00",
            "task_id": f"task-{i}",
        }
        for i in range(args.facts)
    ]

    monitor = DriftMonitor(spec)
    for offset, fact in enumerate(facts):  # first pass: every key's channels exist and are warm
        monitor.observe(fact, partition=0, offset=offset)

    # river alone: one detector per key and metric, fed the already-transformed values
    detectors: dict[tuple[str, str, str], Any] = {}
    anomaly = spec.anomaly
    limits = {f.metric: (f.limits[0], f.limits[1]) for f in anomaly.features}
    fields = {"response_time": "response_time_ms", "cost": "cost"}
    functions = {"none": float, "log": math.log, "log1p": math.log1p}
    rows = [
        (
            f["tenant"], f["agent_type"],
            [(m.metric, (1.0 if f["outcome"] == "failed" else 0.0) if m.metric == "failure" else functions[m.transform](f[fields[m.metric]])) for m in spec.metrics],
            {feat.metric: functions[feat.transform](f[fields[feat.metric]]) for feat in anomaly.features},
        )
        for f in facts
    ]
    for tenant, agent_type, values, vector in rows:  # build every key's detectors first, untimed
        for metric_name, _ in values:
            if (tenant, agent_type, metric_name) not in detectors:
                detectors[(tenant, agent_type, metric_name)] = build(metric_name, spec.metric(metric_name).detector, spec.metric(metric_name).params)
        if (tenant, agent_type, "anomaly") not in detectors:
            model = detectors[(tenant, agent_type, "anomaly")] = build("anomaly", anomaly.detector, anomaly.params, limits=limits)
            model.learn_one(vector)

    # Timed: the monitor and river alone take turns over the same chunks, so a load that comes
    # and goes on a shared machine falls on both alike.
    fed_before = sum(monitor.fed.values())
    monitor_s = river_s = river_drift_only_s = 0.0
    alerts = 0
    chunk = max(1, len(facts) // args.rounds)
    for start in range(0, len(facts), chunk):
        began = time.perf_counter()
        for offset in range(start, min(start + chunk, len(facts))):
            alerts += len(monitor.observe(facts[offset], partition=0, offset=len(facts) + offset))
        monitor_s += time.perf_counter() - began
        began = time.perf_counter()
        for tenant, agent_type, values, vector in rows[start : start + chunk]:
            for metric_name, value in values:
                detectors[(tenant, agent_type, metric_name)].update(value)
            model = detectors[(tenant, agent_type, "anomaly")]
            model.score_one(vector)
            model.learn_one(vector)
        river_s += time.perf_counter() - began
        began = time.perf_counter()
        for tenant, agent_type, values, _ in rows[start : start + chunk]:
            for metric_name, value in values:
                detectors[(tenant, agent_type, metric_name)].update(value)
        river_drift_only_s += time.perf_counter() - began
    updates = sum(monitor.fed.values()) - fed_before

    started = time.perf_counter()
    dirty = monitor.take_dirty()
    state_bytes = sum(len(monitor.dump_state(key)) for key in dirty)
    dump_s = time.perf_counter() - started

    def river_pass() -> float:
        """Bare river over every fact once; returns facts/s."""
        began = time.perf_counter()
        for tenant, agent_type, values, vector in rows:
            for metric_name, value in values:
                detectors[(tenant, agent_type, metric_name)].update(value)
            model = detectors[(tenant, agent_type, "anomaly")]
            model.score_one(vector)
            model.learn_one(vector)
        return len(rows) / (time.perf_counter() - began)

    updates_per_fact = updates / args.facts
    in_worker = worker_rounds(facts, args.worker_rounds, river_pass, args.max_batch) if args.worker_rounds else []
    worker_figures = {}
    if in_worker:
        worker_rate = statistics.median(r["rate"] for r in in_worker)
        river_rate = statistics.median(r["river_facts_per_s"] for r in in_worker)
        worker_figures = {
            "worker_facts_per_s": round(worker_rate),
            "worker_detector_updates_per_s": round(worker_rate * updates_per_fact),
            "worker_cpu_us_per_fact": round(statistics.median(r["cpu_us"] for r in in_worker), 1),
            "worker_batches": [r["batches"] for r in in_worker],
            "worker_max_batch": args.max_batch or "default",
            "river_raw_facts_per_s_beside_worker": round(river_rate),
            "river_raw_updates_per_s_beside_worker": round(river_rate * updates_per_fact),
            "worker_share_of_river_rate": round(worker_rate / river_rate, 3),
            "worker_rounds": [{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items() if k != "app_id"} for r in in_worker],
        }

    print(json.dumps({
        "bench": "drift_throughput",
        "machine": f"{platform.machine()} python {platform.python_version()}",
        "facts": args.facts,
        "keys": len(monitor.keys()),
        "monitor_facts_per_s": round(args.facts / monitor_s),
        "monitor_detector_updates_per_s": round(updates / monitor_s),
        "river_raw_facts_per_s": round(args.facts / river_s),
        "river_raw_updates_per_s": round(updates / river_s),
        "river_raw_drift_updates_per_s_without_anomaly": round(args.facts * len(spec.metrics) / river_drift_only_s),
        "monitor_overhead_share": round(1 - river_s / monitor_s, 3),
        "alerts": alerts,
        "dump_state_keys": len(dirty),
        "dump_state_ms": round(dump_s * 1000, 1),
        "state_bytes_total": state_bytes,
        "target_facts_per_s": 20_000,
        **worker_figures,
    }))


def produce_facts(settings: Any, facts: list[dict[str, Any]]) -> None:
    """The facts into ``facts.tasks``, keyed by tenant (murmur2, as the runtime routes)."""
    from confluent_kafka import Producer

    from connectors.kafka_config import confluent_config

    producer = Producer({**confluent_config(settings), "partitioner": "murmur2_random", "linger.ms": 20, "batch.size": 1_000_000})
    for fact in facts:
        produce(producer, "facts.tasks", json.dumps(fact).encode(), fact["tenant"].encode())
    if producer.flush(120):
        raise RuntimeError("facts not all delivered")


def worker_rounds(facts: list[dict[str, Any]], rounds: int, river_pass: Any, max_batch: int | None = None) -> list[dict[str, Any]]:
    """Time ``rounds`` drift_detector workers over ``facts`` on the bench's own stack; a river pass after each."""
    from own_stack import own_stack
    from worker_rounds import time_worker

    out = []
    with own_stack("agentstream-bench-drift-", 39602, 39589, AGENTSTREAM_WEB_PORT="6396") as settings:
        produce_facts(settings, facts)
        for n in range(rounds):
            env = {"AGENTSTREAM_RUNTIME_MAX_BATCH": str(max_batch)} if max_batch else None
            round_ = time_worker(settings, "drift_detector", len(facts), 6397 + n, env=env)
            round_["river_facts_per_s"] = river_pass()
            print(f"round {n + 1}: worker {round_['rate']:,.0f} facts/s ({round_['cpu_us']:.1f} us CPU/fact, {round_['batches']} batches), river alone {round_['river_facts_per_s']:,.0f} facts/s", file=sys.stderr, flush=True)
            out.append(round_)
    return out


if __name__ == "__main__":
    main()
