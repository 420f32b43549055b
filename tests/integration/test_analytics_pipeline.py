"""Events -> facts_builder -> facts.tasks -> ClickHouse sink -> cubes (and the events archive),
exactly once, under SIGKILL.

The load size is ``AGENTSTREAM_TEST_TASK_EVENTS`` task events (default 40,000 so the suite stays
short; the acceptance run uses 1,000,000: see docs/benchmarks.md). The expected totals are
computed independently, from the events topic itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import time
import urllib.request
from collections import defaultdict
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas import default_registry
from sinks.clickhouse_schema import merge_expr
from streams.client import send_command
from schemas.messages import CommandAccepted
from streams.supervisor import WorkerProcess
from tests.helpers import headers_of, produce_task_events, read_topic, run_cli, tenant

pytestmark = pytest.mark.integration

TASK_EVENTS = int(os.environ.get("AGENTSTREAM_TEST_TASK_EVENTS", "40000"))


def _expected(settings, tenants: set[str]) -> tuple[dict[tuple[str, str], tuple[int, int, float]], dict[str, int]]:
    """Per (tenant, minute): (tasks, successes, cost); and events per tenant; straight from the events topic."""
    registry = default_registry()
    totals: dict[tuple[str, str], list] = defaultdict(lambda: [0, 0, 0.0])
    events: dict[str, int] = defaultdict(int)
    for record in read_topic(settings, "events.platform"):
        h = headers_of(record)
        if h.get("agentstream.tenant_id") in tenants:
            events[h["agentstream.tenant_id"]] += 1
        if h.get("agentstream.tenant_id") not in tenants or h["agentstream.schema"] not in ("TaskCompleted", "TaskFailed"):
            continue
        _, payload = registry.decode(record.value, record.headers)
        minute = datetime.fromisoformat(h["agentstream.occurred_at"]).astimezone(UTC).strftime("%Y-%m-%d %H:%M")
        row = totals[(h["agentstream.tenant_id"], minute)]
        row[0] += 1
        row[1] += h["agentstream.schema"] == "TaskCompleted"
        row[2] += payload.cost
    return {k: (v[0], v[1], v[2]) for k, v in totals.items()}, dict(events)


def _query(port: int, sql: str) -> list[dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/sql", data=json.dumps({"sql": sql, "format": "json"}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    return [dict(zip(body["columns"], row)) for row in body["rows"]] if "columns" in body and body["rows"] and isinstance(body["rows"][0], list) else body["rows"]


def _cube_totals(port: int, tenants: set[str]) -> dict[tuple[str, str], tuple[int, int, float]]:
    names = ",".join(f"'{t}'" for t in sorted(tenants))  # test-generated ids, not user input
    rows = _query(
        port,
        "SELECT tenant, formatDateTime(ts, '%Y-%m-%d %H:%i') AS minute, countMerge(count_state) AS n, "
        "countIfMerge(success_state) AS ok, sumMerge(cost_state) AS cost "
        f"FROM agentstream.task_cube_minute WHERE tenant IN ({names}) GROUP BY tenant, minute",
    )
    return {(r["tenant"], r["minute"]): (int(r["n"]), int(r["ok"]), float(r["cost"])) for r in rows}


def _assert_totals(actual: dict, expected: dict, tasks: int) -> None:
    """Cube totals per (tenant, minute) equal the events' exactly (cost to float rounding)."""
    assert set(actual) == set(expected)
    for key, (n, ok, cost) in expected.items():
        got = actual[key]
        assert got[0] == n and got[1] == ok and got[2] == pytest.approx(cost, abs=1e-6), key
    assert sum(v[0] for v in actual.values()) == tasks


def _wait_for(port: int, tenants: set[str], want: int, timeout: float, table: str = "agentstream.task_facts") -> int:
    names = ",".join(f"'{t}'" for t in sorted(tenants))
    deadline = time.monotonic() + timeout
    have = -1
    while time.monotonic() < deadline:
        try:
            have = int(_query(port, f"SELECT count() AS n FROM {table} WHERE tenant IN ({names})")[0]["n"])
        except OSError:
            have = -1  # the sink is restarting
        if have >= want:
            return have
        time.sleep(1)
    return have


def _start_sink(tmp: Path, env: dict[str, str]) -> WorkerProcess:
    return WorkerProcess(tmp / "sink.log", env=env, args=["sink", "--max-delay", "0.5"]).start()


def test_cube_totals_equal_the_event_totals_after_sink_crashes(worker, applied, tmp_path: Path):
    tenants = {tenant() for _ in range(5)}
    port = applied.sink_port
    # The sink owns its own chdb path: this test process may hold the suite's one.
    env = {"AGENTSTREAM_CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}"}
    sink = _start_sink(tmp_path, env)
    try:
        tasks = TASK_EVENTS // 2
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=4)
        loader = asyncio.get_event_loop_policy().new_event_loop()
        load = loader.run_in_executor(None, lambda: asyncio.run(produce_task_events(applied, sorted(tenants), tasks, start)))
        rng = random.Random(5)
        for _ in range(3):  # SIGKILL the sink at random points while the facts stream in
            time.sleep(rng.uniform(2, 6))
            sink.kill()
            sink = _start_sink(tmp_path, env)
        loader.run_until_complete(load)
        loader.close()
        loaded = _wait_for(port, tenants, tasks, timeout=max(300, tasks / 250))
        assert loaded == tasks, f"{loaded} facts in ClickHouse, {tasks} tasks finished\n{sink.log_tail()}"

        expected, events = _expected(applied, tenants)
        _assert_totals(_cube_totals(port, tenants), expected, tasks)

        # The events archive, written by the same killed sinks, holds every event exactly once.
        archived = _wait_for(port, tenants, sum(events.values()), timeout=300, table="agentstream.event_archive")
        assert archived == sum(events.values())
        names = ",".join(f"'{t}'" for t in sorted(tenants))
        per_tenant = _query(
            port,
            "SELECT tenant, count() AS n, uniqExact(stream_id, version) AS versions FROM agentstream.event_archive "
            f"WHERE tenant IN ({names}) GROUP BY tenant",
        )
        assert {r["tenant"]: (int(r["n"]), int(r["versions"])) for r in per_tenant} == {t: (n, n) for t, n in events.items()}

        # Quantiles within the sketch's documented relative error (1% for quantilesDD(0.01)).
        exact = _query(port, f"SELECT quantileExact(0.95)(response_time_ms) AS q FROM agentstream.task_facts WHERE tenant = '{min(tenants)}'")[0]["q"]
        sketch = _query(
            port, f"SELECT {merge_expr('rt_quantiles_state')}[2] AS q FROM agentstream.task_cube_minute WHERE tenant = '{min(tenants)}'"
        )[0]["q"]
        assert abs(sketch - exact) <= 0.011 * exact + 1

        # A tenant-scoped cube query never returns another tenant's rows (API and CLI).
        a, b = sorted(tenants)[:2]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/cubes/task_cube?measures=task_count&dimensions=tenant&granularity=day&tenant={a}", timeout=30) as r:
            rows = json.loads(r.read())["rows"]
        assert rows and all(b not in json.dumps(row) for row in rows)
        # The worker's web server answers the same query for dashboards (through the sink).
        with urllib.request.urlopen(f"http://127.0.0.1:{applied.web_port}/cubes/task_cube?measures=task_count&dimensions=tenant&granularity=day&tenant={a}", timeout=30) as r:
            assert json.loads(r.read())["rows"] == rows
        cli = run_cli("cube", "query", "task_cube", "--measures", "task_count,cost", "--dimensions", "tenant,time", "--granularity", "hour", "--tenant", a, "--format", "csv", env=env)
        assert cli.returncode == 0, cli.stderr
        assert a in cli.stdout and b not in cli.stdout
    finally:
        sink.stop()


def _until(check, timeout: float, what: str, sink: WorkerProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass  # the sink is starting
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{sink.log_tail()}")


@contextmanager
def _refusing_writes(paths: list[str]):
    """ClickHouse cannot write into these table directories (immutable, as a read-only disk would be)."""
    subprocess.run(["chattr", "+i", *paths], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *paths], check=True)


def _total(port: int, sql: str) -> int:
    return int(_query(port, sql)[0]["n"])


def test_clickhouse_refusing_writes_then_back_loses_nothing_and_counts_once(worker, applied, tmp_path: Path):
    """A running sink whose ClickHouse fails inserts (all tables, then only a cube table behind a
    materialized view) waits and retries; the command path and queries keep working; afterwards
    the cubes and the archive equal the events exactly."""
    tenants = {tenant() for _ in range(3)}
    port = applied.sink_port
    env = {"AGENTSTREAM_CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}"}
    sink = _start_sink(tmp_path, env)
    try:
        _until(lambda: _query(port, "SELECT count() AS n FROM agentstream.event_archive") is not None, 120, "the sink", sink)
        paths = {r["name"]: r["data_paths"][0] for r in _query(port, "SELECT name, data_paths FROM system.tables WHERE database = 'agentstream'") if r["data_paths"]}
        tasks = 1500
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=4)
        facts_total = "SELECT count() AS n FROM agentstream.task_facts"
        cube_total = "SELECT countMerge(count_state) AS n FROM agentstream.task_cube_minute"
        failures = "ClickHouse insert on agentstream."

        with _refusing_writes([paths["task_facts"], paths["event_archive"]]):
            before = _total(port, facts_total)
            asyncio.run(produce_task_events(applied, sorted(tenants), tasks, start))
            _until(lambda: sink.log_tail(1_000_000).count(failures) >= 3, 120, "the sink to retry failing inserts", sink)
            # Commands are still decided, and queries still answered, while the sink cannot write.
            assert isinstance(send_command(applied, "CreateTenant", tenant(), {"name": "During outage"}, timeout=60), CommandAccepted)
            assert _total(port, facts_total) == before
            # Stopping a sink that cannot write ends it cleanly (no final flush); a new one carries on.
            assert sink.stop(timeout=60) == 0, sink.log_tail()
            assert "stopped without a final flush" in sink.log_tail(1_000_000)
            sink = _start_sink(tmp_path, env)

        # Now the facts table takes the insert but the minute cube (behind the view) refuses it.
        with _refusing_writes([paths["task_cube_minute"]]):
            _until(lambda: _total(port, facts_total) > _total(port, cube_total), 120, "facts written past a failing cube", sink)
            assert "Operation not permitted" in sink.log_tail(1_000_000)

        loaded = _wait_for(port, tenants, tasks, timeout=300)
        assert loaded == tasks, f"{loaded} facts in ClickHouse, {tasks} tasks finished\n{sink.log_tail()}"
        expected, events = _expected(applied, tenants)
        _assert_totals(_cube_totals(port, tenants), expected, tasks)
        _until(lambda: _total(port, facts_total) == _total(port, cube_total), 120, "every fact in the cube", sink)
        for rollup in ("task_cube_hour", "task_cube_day", "task_cube_hour_all", "task_cube_day_all"):
            assert _total(port, f"SELECT countMerge(count_state) AS n FROM agentstream.{rollup}") == _total(port, cube_total), rollup
        assert _wait_for(port, tenants, sum(events.values()), timeout=300, table="agentstream.event_archive") == sum(events.values())
    finally:
        sink.stop()
