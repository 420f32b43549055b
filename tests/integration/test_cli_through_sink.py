"""`agentstream sql` and `agentstream cube query` as scripts call them: through a running sink,
again and again, every call exits 0 with the right output.

The CLI reads the sink's answers as Parquet. Read with ``pq.read_table(io.BytesIO(...))`` it
left work on Arrow's threads that aborted the process at exit (status 134, "terminate called
without an active exception") after the result was printed, in a few calls of every 20 to 40;
see ``sinks.table_formats``. The abort is a race at interpreter exit, so only separate
processes, called many times, show it.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from connectors.kafka_config import aiokafka_config
from schemas.settings import Settings
from streams.supervisor import WorkerProcess
from tests.helpers import run_cli, tenant

pytestmark = pytest.mark.integration

CALLS = 20
#: Calls in flight at once: a loaded machine is where the exit race showed most.
PARALLEL = 3


def _facts(who: str, at: datetime) -> list[dict]:
    """Five finished tasks of ``who`` in one hour: task-0..4, costs 0.5, 1.5, ..., 4.5, one failed."""
    return [
        dict(tenant=who, agent_id=f"agent-{n % 2}", agent_type="coder", region="eu", task_id=f"task-{n}",
             outcome="failed" if n == 3 else "completed", response_time_ms=100 * (n + 1), cost=n + 0.5,
             event_time=(at + timedelta(minutes=n)).isoformat())
        for n in range(5)
    ]


async def _produce(settings: Settings, facts: list[dict]) -> None:
    producer = AIOKafkaProducer(**aiokafka_config(settings), acks="all")
    await producer.start()
    try:
        for fact in facts:
            await producer.send("facts.tasks", key=fact["tenant"].encode(), value=json.dumps(fact).encode())
        await producer.flush()
    finally:
        await producer.stop()


def _count(port: int, who: str) -> int:
    body = json.dumps({"sql": f"SELECT count() AS n FROM agentstream.task_facts WHERE tenant = '{who}'", "format": "json"}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/sql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(json.loads(response.read())["rows"][0][0])


def _wait_for_facts(port: int, who: str, want: int, sink: WorkerProcess, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    have = -1
    while time.monotonic() < deadline:
        try:
            have = _count(port, who)
        except OSError:
            have = -1  # the sink is still starting
        if have >= want:
            return
        time.sleep(0.5)
    raise AssertionError(f"the sink holds {have} of {want} facts of {who}\n{sink.log_tail()}")


@pytest.mark.timeout(900)
def test_sql_and_cube_query_through_the_sink_exit_0_every_time(applied, tmp_path: Path):
    who = tenant()
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    facts = _facts(who, hour)
    # The sink owns its own chdb path; the CLI, finding it held, can only go through the sink.
    env = {"AGENTSTREAM_CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}"}
    sink = WorkerProcess(tmp_path / "sink.log", env=env, args=["sink", "--max-delay", "0.5"], restart=False).start()
    try:
        asyncio.run(_produce(applied, facts))
        _wait_for_facts(applied.sink_port, who, len(facts), sink)

        sql = f"SELECT task_id, outcome, cost FROM agentstream.task_facts WHERE tenant = '{who}' ORDER BY task_id"
        cube = ["cube", "query", "task_cube", "-m", "task_count,cost", "-d", "tenant,time", "-g", "hour", "--tenant", who]
        # Every call must print exactly this (csv on even calls, json on odd ones).
        want = {
            ("sql", "csv"): "task_id,outcome,cost\n" + "".join(f"{f['task_id']},{f['outcome']},{f['cost']}\n" for f in facts),
            ("sql", "json"): {"columns": ["task_id", "outcome", "cost"], "rows": [[f["task_id"], f["outcome"], f["cost"]] for f in facts]},
            ("cube query", "csv"): f"tenant,time,task_count,cost\n{who},{hour.isoformat(sep=' ')},5,12.5\n",
            ("cube query", "json"): {"columns": ["tenant", "time", "task_count", "cost"], "rows": [[who, hour.isoformat(), 5, 12.5]], "rollup": "hour"},
        }
        calls = [(what, "csv" if i % 2 == 0 else "json") for what in ("sql", "cube query") for i in range(CALLS)]

        def call(what_fmt: tuple[str, str]):
            what, fmt = what_fmt
            return run_cli(*(["sql", sql] if what == "sql" else cube), "--format", fmt, env=env)

        with ThreadPoolExecutor(PARALLEL) as pool:
            runs = list(pool.map(call, calls))

        statuses = {what: [r.returncode for (w, _), r in zip(calls, runs) if w == what] for what in ("sql", "cube query")}
        failed = [(what, fmt, r.returncode, r.stderr[-500:]) for (what, fmt), r in zip(calls, runs) if r.returncode != 0]
        assert not failed, f"exit statuses {statuses}; first failure: {failed[0]}"
        for (what, fmt), run in zip(calls, runs):
            printed = run.stdout if fmt == "csv" else json.loads(run.stdout)
            assert printed == want[(what, fmt)], (what, fmt, run.stdout)
    finally:
        sink.stop()
