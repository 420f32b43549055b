"""Cost of the pure quota rules and the saga core per call: what the batched runtime will add.

No Kafka, no Redis: only ``streams.domain.quotas`` and ``streams.sagas``. Run:

    .venv/bin/python bench/pure_cores.py [--commands 20000] [--sagas 1000,10000] [--events 5000]

1. Quotas: one tenant's row with ``--open`` unfinished tasks; ``--commands`` commands (a mix of
   AssignTask, TaskCompleted settlements and plain commands) each through ``check`` + ``accept``
   (``admit``), once on the row kept in memory and once with the row through JSON around every
   command (what a table without a write cache costs). Reports commands per second.
2. Sagas: one tenant's book with N task sagas in flight (N from ``--sagas``); ``--events`` x 3
   events (TaskStarted and TaskCompleted of a random saga, then a fresh TaskAssigned that keeps N
   in flight) through ``handle`` one at a time, then through ``handle_batch`` ``--batch`` at a
   time; and one ``fire`` of N due start deadlines. Reports per-event time, the deadline firing
   rate and the book's JSON size.

Prints one line of JSON at the end; numbers go to docs/benchmarks.md (with the machine, and
whether it was loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from datetime import UTC, datetime, timedelta

from schemas.topology import QuotaLimits
from streams.domain import Command, Event
from streams.domain import quotas
from streams.sagas import SagaBook, SagaEvent, TaskLifecycle, fire, handle, handle_batch

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def bench_quotas(commands: int, open_tasks: int) -> dict[str, float]:
    limits = QuotaLimits(
        max_agents=1000, max_concurrent_tasks=10 * open_tasks, api_rate_per_hour=10**9, storage_limit_bytes=10**15,
        monthly_budget_micros=10**15, task_max_cost_micros=1000, task_start_within_s=60,
    )
    row = quotas.QuotaState(plan="pro")
    for i in range(open_tasks):
        row = quotas.accept(row, T0, [Event("TaskAssigned", {"task_id": f"open{i}", "agent_id": f"a{i % 50}", "max_cost": 1000})])
    rng = random.Random(7)
    plan = []
    opened: list[str] = [f"open{i}" for i in range(open_tasks)]
    for i in range(commands):
        at = T0 + timedelta(milliseconds=i * 10)
        kind = rng.choice(["assign", "end", "plain"])
        if kind == "assign":
            opened.append(f"n{i}")
            plan.append((Command("AssignTask", {"task_id": f"n{i}", "max_cost": 1000}, "t", at), [Event("TaskAssigned", {"task_id": f"n{i}", "agent_id": "a1", "max_cost": 1000})], at))
        elif kind == "end" and opened:  # the oldest open task ends: about --open stay open
            task = opened.pop(0)
            plan.append((Command("CompleteTask", {"task_id": task}, "t", at), [Event("TaskCompleted", {"task_id": task, "cost": 0.0005})], at))
        else:
            plan.append((Command("StartAgent", {"agent_id": "a1"}, "t", at), [Event("AgentStarted", {"agent_id": "a1"})], at))
    results = {}
    for label, through_json in (("in_memory", False), ("through_json", True)):
        current = row
        started = time.perf_counter()
        for command, events, at in plan:
            if through_json:
                current = quotas.load(json.loads(json.dumps(quotas.dump(current))))
            verdict = quotas.admit(command, events, current, limits, at, 120)
            if isinstance(verdict, quotas.QuotaState):
                current = verdict
        results[f"quota_{label}_per_s"] = round(commands / (time.perf_counter() - started))
    return results


def bench_sagas(in_flight: int, events: int, batch: int) -> dict[str, float]:
    types = [TaskLifecycle()]
    book = SagaBook()
    agents = [f"a{i}" for i in range(20)]
    for agent in agents:
        book, _ = handle(types, book, SagaEvent("AgentCreated", {"agent_id": agent, "agent_type": "llm"}, "t", f"agent-{agent}", 1, T0))
        book, _ = handle(types, book, SagaEvent("AgentStarted", {"agent_id": agent}, "t", f"agent-{agent}", 2, T0))
    started = time.perf_counter()
    for i in range(in_flight):
        book, _ = handle(types, book, SagaEvent("TaskAssigned", {"task_id": f"k{i}", "agent_id": agents[i % 20], "task_type": "x", "start_within_s": 3600}, "t", f"task-k{i}", 1, T0))
    fill_s = time.perf_counter() - started
    rng = random.Random(7)
    live = list(range(in_flight))
    next_id = in_flight
    stream = []
    for n in range(events):
        pick = live.pop(rng.randrange(len(live)))
        at = T0 + timedelta(seconds=1 + n * 0.001)
        stream.append(SagaEvent("TaskStarted", {"task_id": f"k{pick}", "agent_id": agents[pick % 20]}, "t", f"task-k{pick}", 2, at))
        stream.append(SagaEvent("TaskCompleted", {"task_id": f"k{pick}", "agent_id": agents[pick % 20], "cost": 0.0}, "t", f"task-k{pick}", 3, at))
        stream.append(SagaEvent("TaskAssigned", {"task_id": f"k{next_id}", "agent_id": agents[next_id % 20], "task_type": "x", "start_within_s": 3600}, "t", f"task-k{next_id}", 1, at))
        live.append(next_id)
        next_id += 1
    timings = {}
    for label, size in (("event_us", 1), ("event_batched_us", batch)):
        current = book
        started = time.perf_counter()
        for i in range(0, len(stream), size):
            current, _ = handle_batch(types, current, stream[i : i + size])
        timings[label] = (time.perf_counter() - started) / len(stream) * 1e6
    book = current
    size = len(json.dumps(book.dump()))
    due = len(book.deadlines)
    started = time.perf_counter()
    fire(types, book, T0 + timedelta(hours=2))  # every start deadline is due: each saga plans a reassignment
    fire_s = time.perf_counter() - started
    return {
        f"sagas_{in_flight}_start_us": round(fill_s / in_flight * 1e6, 1),
        f"sagas_{in_flight}_event_us": round(timings["event_us"], 1),
        f"sagas_{in_flight}_event_batched_us": round(timings["event_batched_us"], 1),
        f"sagas_{in_flight}_fire_per_s": round(due / fire_s),
        f"sagas_{in_flight}_book_kib": round(size / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=20000)
    parser.add_argument("--open", type=int, default=50, help="unfinished tasks in the quota row")
    parser.add_argument("--sagas", default="1000,10000")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=300, help="events per handle_batch call in the batched pass")
    args = parser.parse_args()
    out: dict[str, object] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}", "python": platform.python_version()}
    out.update(bench_quotas(args.commands, args.open))
    for n in (int(x) for x in args.sagas.split(",")):
        out.update(bench_sagas(n, args.events, args.batch))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
