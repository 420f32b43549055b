"""Saga deadline lateness at 1,000 and 10,000 sagas in flight, live and across a worker's crash.

Runs on its own local stack (ports below, a temporary data dir) and stops it after:

    .venv/bin/python bench/saga_deadlines.py [--sagas 1000 10000] [--kafka-port 38592 --redis-port 38579 --web-port 6380]

For each size N, under a fresh app id (fresh group, empty books), ``TaskAssigned`` events of N
tasks are written straight to ``events.platform`` over N/100 tenants (a book of 100 sagas is
about 50 kB), their times chosen so that each task's start deadline falls due at a planned
instant: half ("live") spread over 15 s while a worker runs, half ("down") spread over the 10 s
during which that worker is SIGKILLed and not yet restarted. The worker runs only the ``sagas``
agent, with no reassignment allowed, so each start deadline sends one ``FailTask`` (step
``compensate:0``); nobody answers it, so all N sagas stay in flight to the end (compensation
resends are pushed past the run).

Lateness of a deadline = the ``issued_at`` of its command (the shell's clock at firing) minus
when it fell due; for a "down" deadline, minus the moment the restarted worker owned its
partitions again (its books restored: the shell's log line), and, as a second figure, minus the
restarted process's spawn. Commands are read back ``read_committed``: also counted are missing ones
(lost deadlines) and duplicates. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from worker_rounds import produce  # noqa: E402  (bench/ is on the path from here)

PER_TENANT = 100
LIVE_SPAN_S = 15.0
DOWN_SPAN_S = 10.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _owned(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/runtime", timeout=2) as response:
            agents = json.loads(response.read())["agents"]
        return bool(agents and agents[0]["partitions"])  # set once the partitions' books are restored
    except (OSError, ValueError, KeyError, IndexError):
        return False


def _restored_at(log: Path, after: float) -> float | None:
    """When the ``sagas`` agent last had its partitions' books restored (its log line), after ``after``."""
    found = None
    for line in log.read_text(errors="replace").splitlines():
        if "sagas: partitions" in line and "restored" in line and line.startswith("["):
            at = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC).timestamp()
            if at >= after:
                found = at
    return found


def _preload(settings: Any, app: str, n: int, lead_s: float) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], str], float]:
    """Write N TaskAssigned events; returns due ms and phase per (tenant, task), and the first due time (epoch s)."""
    from confluent_kafka import Producer

    from connectors.kafka_config import confluent_config
    from schemas import default_registry
    from schemas.messages import EventMeta

    registry = default_registry()
    producer = Producer({**confluent_config(settings), "partitioner": "murmur2_random", "linger.ms": 20})
    first_due = time.time() + lead_s
    due: dict[tuple[str, str], int] = {}
    phase: dict[tuple[str, str], str] = {}
    tenants = max(1, n // PER_TENANT)
    within = 600  # seconds; occurred_at is set back so that the deadline falls due when planned
    for i in range(n):
        t, task = f"{app}-t{i % tenants}", f"k{i}"
        live = i % 2 == 0
        offset = (i / n) * LIVE_SPAN_S if live else LIVE_SPAN_S + 5.0 + (i / n) * DOWN_SPAN_S
        due_s = first_due + offset
        at = datetime.fromtimestamp(due_s - within, UTC)
        value, headers = registry.encode("TaskAssigned", {"task_id": task, "agent_id": "a1", "task_type": "x", "input": {}, "start_within_s": within})
        meta = EventMeta(event_id=uuid.uuid4().hex, tenant_id=t, stream_id=f"task-{task}", version=1, occurred_at=at, command_id="bench")
        produce(producer, "events.platform", value, t.encode(), headers + meta.to_headers())
        due[(t, task)] = int(due_s * 1000)
        phase[(t, task)] = "live" if live else "down"
    assert producer.flush(120) == 0
    return due, phase, first_due


def _issued(settings: Any, app: str) -> tuple[dict[tuple[str, str], int], int]:
    """issued_at (ms) of each task's first compensation, and how many such commands were duplicates."""
    from schemas.messages import CommandMeta
    from worker_rounds import read_to_end

    found: dict[tuple[str, str], int] = {}
    dupes = 0
    for m in read_to_end(settings, "commands.platform"):
        h = CommandMeta.from_headers(m.headers())
        if not h.tenant_id.startswith(app) or not h.command_id.endswith(":compensate:0"):
            continue
        key = (h.tenant_id, h.command_id.split(":")[3])
        if key in found:
            dupes += 1
        found[key] = int(h.issued_at.timestamp() * 1000)
    return found, dupes


def run(settings: Any, n: int, web_port: int) -> dict[str, Any]:
    """One size: preload, run, crash, restart, read back, compute."""
    from streams.supervisor import WorkerProcess

    app = f"sb{uuid.uuid4().hex[:6]}"
    env = {
        "AGENTSTREAM_APP_ID": app,
        "AGENTSTREAM_WEB_PORT": str(web_port),
        "AGENTSTREAM_WORKER_ID": f"{app}-w",
        "AGENTSTREAM_SAGA_MAX_REASSIGNMENTS": "0",
        "AGENTSTREAM_SAGA_BACKOFF_S": "300",
        "AGENTSTREAM_LOG_LEVEL": "info",  # the restore's log line dates the new owner
    }
    lead_s = 40.0 if n <= 2000 else 60.0
    log = settings.data_dir / f"{app}.log"
    worker = WorkerProcess(log, env=env, args=["worker", "--agents", "sagas"], restart=False).start()
    due, phase, first_due = _preload(settings, app, n, lead_s)
    kill_at = first_due + LIVE_SPAN_S + 2.0
    while time.time() < kill_at:
        time.sleep(0.1)
    worker.kill()
    restart_at = first_due + LIVE_SPAN_S + 5.0 + DOWN_SPAN_S + 1.0
    while time.time() < restart_at:
        time.sleep(0.1)
    spawned = time.time()
    worker.start()
    owned = None
    while owned is None and time.time() < spawned + 300:
        if _owned(web_port):
            owned = time.time()
        time.sleep(0.05)
    # wait for every command (or give up after two minutes)
    deadline = time.time() + 120
    issued, dupes = _issued(settings, app)
    while len(issued) < n and time.time() < deadline:
        time.sleep(2)
        issued, dupes = _issued(settings, app)
    worker.stop()
    restored = _restored_at(log, spawned)
    if restored is not None:
        owned = restored
    live = [issued[k] - due[k] for k in issued if phase[k] == "live"]
    down_owner = [issued[k] - max(due[k], int((owned or spawned) * 1000)) for k in issued if phase[k] == "down"]
    down_spawn = [issued[k] - max(due[k], int(spawned * 1000)) for k in issued if phase[k] == "down"]
    early = sum(1 for k in issued if issued[k] < due[k])
    result = {
        "sagas_in_flight": n,
        "tenants": max(1, n // PER_TENANT),
        "commands": len(issued),
        "missing": n - len(issued),
        "duplicates": dupes,
        "early": early,
        "live_late_ms_p50": _pct(live, 0.5),
        "live_late_ms_p99": _pct(live, 0.99),
        "live_late_ms_max": max(live, default=float("nan")),
        "down_late_ms_from_owner_p50": _pct(down_owner, 0.5),
        "down_late_ms_from_owner_p99": _pct(down_owner, 0.99),
        "down_late_ms_from_spawn_p50": _pct(down_spawn, 0.5),
        "down_late_ms_from_spawn_p99": _pct(down_spawn, 0.99),
        "owner_ready_after_spawn_s": round((owned or spawned) - spawned, 2),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sagas", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--kafka-port", type=int, default=38592)
    parser.add_argument("--redis-port", type=int, default=38579)
    parser.add_argument("--web-port", type=int, default=6380)
    args = parser.parse_args()

    from own_stack import own_stack

    with own_stack("agentstream-bench-sagas-", args.kafka_port, args.redis_port, AGENTSTREAM_WEB_PORT=str(args.web_port)) as settings:
        results = [run(settings, n, args.web_port + 40 + i) for i, n in enumerate(args.sagas)]
    load = os.getloadavg()
    print(
        json.dumps(
            {
                "benchmark": "saga_deadlines",
                "runs": results,
                "load_average": [round(x, 1) for x in load],
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, {platform.platform()}",
            }
        )
    )


if __name__ == "__main__":
    main()
