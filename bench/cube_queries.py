"""Cube query latency (p50/p95/p99) through ``Cube.query``, against plain GROUP BYs over the raw facts.

Embedded ClickHouse (chdb) under a temporary directory, one fresh database built by
``sinks.clickhouse_schema.ensure_schema`` from the declared cube (``topology.yaml``). Run:

    .venv/bin/python bench/cube_queries.py [--facts 10000000] [--runs 200] [--warmup 5] [--no-optimize]

Loading: the facts are generated inside ClickHouse (``INSERT INTO task_facts SELECT ... FROM
numbers()``, in chunks of 1M rows, in time order), so the materialized views fill the minute, hour
and day cube tables exactly as sink inserts would. Distribution as in bench/clickhouse_sink.py:
100 tenants (skewed: ``tenant = floor(100 * u^1.5)``, tenant-000 has ~4.6% of the facts, tenant-099
~0.7%), 100 agents per tenant, 4 agent types (40/30/20/10%), 3 regions, the 30 days before now,
~90% completed, log-normal response times (median 150 ms .. 4 s by agent type), costs growing
with the response time.

Three dashboard queries (measures task_count, success_rate, response_time_p95,
response_time_mean, cost):

  (a) one tenant (tenant-000, the biggest), last 24 h by minute     -> minute cube
  (b) all tenants, last 30 days by day                             -> all-tenant day cube
  (c) one tenant (tenant-000), last 7 days by hour by agent_type    -> hour cube
  (b') diagnostic: (b) without response_time_p95 (what merging the quantile sketches costs)

Each runs ``--warmup`` times untimed, then ``--runs`` times timed through ``Cube.query`` (SQL
building, query, DataFrame, UTC conversion). Baseline, same run, same client: the same query shape
as a plain GROUP BY over ``task_facts`` through ``client.query_df`` (count, countIf, quantilesDD,
avg, sum), timed alternately with the cube query. The cube tables are timed twice: as loaded (parts
as the inserts and background merges left them), then after ``OPTIMIZE TABLE ... FINAL`` on the
cube tables (not on the facts table); ``--no-optimize`` skips the second round.

Prints the machine, the load rate and a latency table; the numbers go to docs/benchmarks.md.
Target: p95 < 50 ms.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TOPIC = "facts.tasks"
TENANT = "tenant-000"
MEASURES = ["task_count", "success_rate", "response_time_p95", "response_time_mean", "cost"]
NO_QUANTILE = [m for m in MEASURES if m != "response_time_p95"]
CHUNK = 1_000_000


def insert_select(table: str, first: int, count: int, total: int, start_ms: int, span_ms: int) -> str:
    """SQL generating facts ``first .. first+count-1`` of ``total`` (in time order) inside ClickHouse."""
    return f"""
INSERT INTO {table} (tenant, agent_id, agent_type, region, task_id, outcome, response_time_ms, cost, event_time,
                     kafka_topic, kafka_partition, kafka_offset, sink_batch_first, sink_batch_last)
SELECT
    concat('tenant-', leftPad(toString(t), 3, '0')),
    concat('agent-', leftPad(toString(t), 3, '0'), '-', leftPad(toString(a), 3, '0')),
    ['llm', 'tool', 'retrieval', 'planner'][k + 1],
    ['eu-west', 'us-east', 'ap-south'][(t * 7 + a) % 3 + 1],
    concat('task-', leftPad(toString(number), 9, '0')),
    if(randCanonical(3) < 0.9, 'completed', 'failed'),
    rt,
    round(rt / 1000 * [0.004, 0.0005, 0.0002, 0.006][k + 1] * (0.5 + randCanonical(4)), 6),
    fromUnixTimestamp64Milli(toInt64({start_ms} + intDiv(number * {span_ms}, {total}) + rand(5) % 1000), 'UTC'),
    '{TOPIC}', t % 6, number, 0, 0
FROM (
    SELECT number, t, a, k,
           toUInt32(least(600000, greatest(1, round([2000, 300, 150, 4000][k + 1] * exp(randNormal(0, 0.8, number)))))) AS rt
    FROM (
        SELECT number,
               toUInt32(least(99, floor(100 * pow(randCanonical(1), 1.5)))) AS t,
               rand(2) % 100 AS a,
               multiIf(a < 40, 0, a < 70, 1, a < 90, 2, 3) AS k
        FROM numbers({first}, {count})
    )
)"""


def raw_sql(facts: str, bucket: str, by_agent_type: bool, tenant: bool, quantile: bool = True) -> str:
    """The baseline: the same query shape as a plain GROUP BY over the raw facts."""
    keys = ["time", "agent_type"] if by_agent_type else ["time"]
    select = [f"{bucket}(event_time, 'UTC') AS time", *(["agent_type"] if by_agent_type else [])]
    where = (["tenant = {tenant:String}"] if tenant else []) + ["event_time >= {t_start:DateTime64(3, 'UTC')}", "event_time < {t_end:DateTime64(3, 'UTC')}"]
    return (
        f"SELECT {', '.join(select)}, count() AS task_count, countIf(outcome = 'completed') / count() AS success_rate,\n"
        + ("       quantilesDD(0.01, 0.5, 0.95, 0.99)(response_time_ms)[2] AS response_time_p95,\n" if quantile else "")
        +         "       avg(response_time_ms) AS response_time_mean, sum(cost) AS cost\n"
        f"FROM {facts}\nWHERE {' AND '.join(where)}\nGROUP BY {', '.join(keys)}\nORDER BY {', '.join(keys)}"
    )


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.array(samples) * 1000, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def timed(call: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-optimize", action="store_true", help="skip the second round after OPTIMIZE TABLE ... FINAL")
    parser.add_argument("--keep", action="store_true", help="keep the temporary chdb directory")
    args = parser.parse_args()

    import chdb
    import clickhouse_connect

    from connectors.clickhouse import clickhouse_client
    from sinks.clickhouse_schema import cube_tables, ensure_schema
    from sinks.cube_query import Cube
    from schemas.settings import Settings
    from schemas.topology import load_topology

    tmp = Path(tempfile.mkdtemp(prefix="agentstream-bench-cube-"))
    try:
        client = clickhouse_client(Settings(data_dir=tmp, clickhouse_url=f"chdb://{tmp / 'chdb'}"))
        spec = next(c for c in load_topology(REPO / "topology.yaml").cubes if c.name == "task_cube").model_copy(update={"database": "bench_cube"})
        ensure_schema(client, spec)
        tables = cube_tables(spec)
        ch_version = client.command("SELECT version()")

        now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
        span_ms = 30 * 86_400_000
        start_ms = int(now.timestamp() * 1000) - span_ms
        load_started = time.perf_counter()
        for first in range(0, args.facts, CHUNK):
            client.command(insert_select(tables.facts, first, min(CHUNK, args.facts - first), args.facts, start_ms, span_ms))
        load_s = time.perf_counter() - load_started
        loaded = int(client.command(f"SELECT count() FROM {tables.facts}"))
        assert loaded == args.facts, f"loaded {loaded} facts, wanted {args.facts}"
        tenant_share = int(client.command(f"SELECT count() FROM {tables.facts} WHERE tenant = '{TENANT}'"))

        cube = Cube(client, spec)
        minute_end = now + dt.timedelta(minutes=1)
        hour_end = now.replace(minute=0) + dt.timedelta(hours=1)
        day_end = now.replace(hour=0, minute=0) + dt.timedelta(days=1)
        shapes = [
            ("(a) one tenant, last 24 h by minute", dict(dimensions=["time"], granularity="minute", tenant=TENANT, time_range=(minute_end - dt.timedelta(hours=24), minute_end)), "toStartOfMinute", False),
            ("(b) all tenants, last 30 days by day", dict(dimensions=["time"], granularity="day", tenant=None, time_range=(day_end - dt.timedelta(days=30), day_end)), "toStartOfDay", False),
            ("(c) one tenant, last 7 days by hour x agent_type", dict(dimensions=["time", "agent_type"], granularity="hour", tenant=TENANT, time_range=(hour_end - dt.timedelta(days=7), hour_end)), "toStartOfHour", True),
            # diagnostic: what the response-time quantile sketches cost in (b)
            ("(b') = (b) without response_time_p95", dict(dimensions=["time"], granularity="day", tenant=None, time_range=(day_end - dt.timedelta(days=30), day_end), measures=NO_QUANTILE), "toStartOfDay", False),
        ]

        def cube_call(kw: dict) -> Callable[[], object]:
            kw = dict(kw)
            measures = kw.pop("measures", MEASURES)
            return lambda: cube.query(measures, **kw)

        def raw_call(kw: dict, bucket: str, by_type: bool) -> Callable[[], object]:
            sql = raw_sql(tables.facts, bucket, by_type, kw["tenant"] is not None, quantile="measures" not in kw)
            params = {"t_start": kw["time_range"][0], "t_end": kw["time_range"][1], **({"tenant": kw["tenant"]} if kw["tenant"] else {})}
            return lambda: client.query_df(sql, parameters=params)

        def parts() -> str:
            rows = client.query(
                "SELECT table, count() FROM system.parts WHERE database = {db:String} AND active GROUP BY table ORDER BY table", parameters={"db": spec.database}
            ).result_rows
            return ", ".join(f"{t} {n}" for t, n in rows)

        results: dict[str, dict[str, tuple[float, float, float]]] = {}
        info: dict[str, tuple[str, int]] = {}
        parts_before = parts()
        for name, kw, bucket, by_type in shapes:
            cq, rq = cube_call(kw), raw_call(kw, bucket, by_type)
            for _ in range(args.warmup):
                cq(), rq()
            cube_s, raw_s = [], []
            for i in range(args.runs):
                order = (("cube", cq), ("raw", rq)) if i % 2 == 0 else (("raw", rq), ("cube", cq))
                for which, call in order:
                    elapsed, frame = timed(call)
                    (cube_s if which == "cube" else raw_s).append(elapsed)
                    if which == "cube":
                        cube_frame = frame
                    else:
                        raw_frame = frame
            c_total, r_total = int(cube_frame["task_count"].sum()), int(raw_frame["task_count"].sum())
            assert c_total == r_total and len(cube_frame) == len(raw_frame), f"{name}: cube {c_total} tasks/{len(cube_frame)} rows, raw {r_total}/{len(raw_frame)}"
            built = cube.sql(kw.get("measures", MEASURES), **{k: v for k, v in kw.items() if k != "measures"})
            info[name] = (built.table, len(cube_frame), c_total)
            results[name] = {"cube": percentiles(cube_s), "raw": percentiles(raw_s)}

        optimize_s = None
        if not args.no_optimize:
            optimize_s, _ = timed(lambda: [client.command(f"OPTIMIZE TABLE {t} FINAL") for t in [*tables.rollups.values(), *tables.all_tenants.values()]])
            parts_after = parts()
            for name, kw, _, _ in shapes:
                cq = cube_call(kw)
                for _ in range(args.warmup):
                    cq()
                samples = [timed(cq)[0] for _ in range(args.runs)]
                results[name]["cube_opt"] = percentiles(samples)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    fmt = lambda p: f"{p[0]:8.2f} {p[1]:8.2f} {p[2]:8.2f}"  # noqa: E731
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, {platform.platform()}")
    print(f"chdb {chdb.__version__} (ClickHouse {ch_version}), clickhouse-connect {clickhouse_connect.__version__}, embedded under a temp dir")
    print(
        f"facts: {args.facts:,} over 100 tenants x 100 agents, 4 agent types, 3 regions, 30 days "
        f"({TENANT}: {tenant_share:,} facts); loaded with INSERT ... SELECT FROM numbers() in {load_s:.1f} s ({args.facts / load_s:,.0f} rows/s, views included)"
    )
    print(f"measures: {', '.join(MEASURES)}; {args.warmup} warm-up runs, then {args.runs} timed runs per query; cube and raw timed alternately")
    print(f"active parts as timed: {parts_before}")
    if optimize_s is not None:
        print(f"OPTIMIZE TABLE ... FINAL on the cube tables (not the facts): {optimize_s:.1f} s; active parts after: {parts_after}")
    print()
    header = f"{'query':50} {'source':34} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    print(header)
    print("-" * len(header))
    for name in results:
        table, rows, tasks = info[name]
        print(f"{name:50} {'Cube.query -> ' + table.split('.')[1]:34} {fmt(results[name]['cube'])}")
        if "cube_opt" in results[name]:
            print(f"{'':50} {'  same, after OPTIMIZE FINAL':34} {fmt(results[name]['cube_opt'])}")
        print(f"{'':50} {'baseline GROUP BY over task_facts':34} {fmt(results[name]['raw'])}")
        ratio = results[name]["raw"][1] / results[name]["cube"][1]
        print(f"{'':50} {f'  {rows} rows, {tasks:,} tasks; raw/cube p95 = {ratio:.1f}x':34}")
    dashboards = [name for name in results if not name.startswith("(b')")]
    worst = max(results[name]["cube"][1] for name in dashboards)
    print(f"worst cube p95 as loaded: {worst:.2f} ms (target < 50 ms)")
    if optimize_s is not None:
        print(f"worst cube p95 after OPTIMIZE FINAL: {max(results[name]['cube_opt'][1] for name in dashboards):.2f} ms")


if __name__ == "__main__":
    main()
