"""Facts per second into ClickHouse through ``FactsSink``, against a bare ``client.insert`` baseline.

Embedded ClickHouse (chdb) under a temporary directory: ONE chdb path (a process may open only
one), two fresh databases built by ``sinks.clickhouse_schema.ensure_schema`` from the declared
cube (``topology.yaml``), identical apart from their name: same facts table, same minute/hour/day
cube tables and materialized views. Run:

    .venv/bin/python bench/clickhouse_sink.py [--facts 1000000] [--batch-size 10000]

1. agentstream: ``FactsSink`` (the real sink: per-partition buffers, fact validation, batches of
   ``--batch-size`` rows, insert deduplication tokens, resume planning on the first row of each
   partition, batch bookkeeping columns) fed fact by fact with ``add(partition, offset, fact)``.
2. baseline, same run, same chdb: bare ``client.insert`` of the very same rows (every column the
   sink writes, the Kafka and batch bookkeeping columns included, already built) in the very
   same batches into the twin database. The difference is the sink's own work.

Synthetic task facts, realistic shape: 100 tenants (skewed: the biggest has ~5% of the traffic,
the smallest ~0.7%), 100 agents per tenant, 4 agent types, 3 regions, 30 days of time in arrival
order, ~90% completed, log-normal response times (median by agent type 150 ms .. 4 s), costs that
grow with the response time. Facts are keyed by tenant onto 6 partitions like ``facts.tasks``.
Generating the facts (dicts for the sink, row lists for the baseline) is not timed; batches of
the two runs alternate (sink first on even batches, baseline first on odd ones) so background
load on the machine hits both alike.

Prints the machine, both rates and their ratio; the numbers go to docs/benchmarks.md.
Target: the sink within 1.5x of the bare insert.
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

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TENANTS = 100
AGENTS_PER_TENANT = 100
PARTITIONS = 6
TOPIC = "facts.tasks"
AGENT_TYPES = ("llm", "tool", "retrieval", "planner")
REGIONS = ("eu-west", "us-east", "ap-south")
#: Median response time (ms) and cost per second of work, by agent type.
MEDIAN_MS = np.array([2000.0, 300.0, 150.0, 4000.0])
COST_PER_S = np.array([0.004, 0.0005, 0.0002, 0.006])


def synthetic_facts(n: int, now: dt.datetime, seed: int = 7) -> dict[str, np.ndarray]:
    """Columns of ``n`` task facts over the 30 days before ``now``, in time order."""
    rng = np.random.default_rng(seed)
    tenant = np.minimum((TENANTS * rng.random(n) ** 1.5).astype(np.int64), TENANTS - 1)
    agent = rng.integers(0, AGENTS_PER_TENANT, n)
    # agent j of a tenant has type by j: 40% llm, 30% tool, 20% retrieval, 10% planner
    kind = np.searchsorted(np.array([40, 70, 90]), agent, side="right")
    region = (tenant * 7 + agent) % 3
    completed = rng.random(n) < 0.9
    rt = np.clip(np.rint(MEDIAN_MS[kind] * np.exp(rng.normal(0.0, 0.8, n))), 1, 600_000).astype(np.int64)
    cost = np.round(rt / 1000.0 * COST_PER_S[kind] * rng.uniform(0.5, 1.5, n), 6)
    span_ms = 30 * 86_400_000
    start_ms = int(now.timestamp() * 1000) - span_ms
    t_ms = start_ms + np.sort(rng.integers(0, span_ms, n))
    return {"tenant": tenant, "agent": agent, "kind": kind, "region": region, "completed": completed, "rt": rt, "cost": cost, "t_ms": t_ms}


def batches(cols: dict[str, np.ndarray], batch_size: int) -> list[tuple[int, np.ndarray, int]]:
    """The batches a per-partition sink cuts from the stream: (partition, row indices, first offset).

    Facts are keyed by tenant (partition = tenant % 6); a partition's batch is cut when it has
    ``batch_size`` rows; batches are ordered by the arrival of their last row (the rest at the end).
    """
    part = cols["tenant"] % PARTITIONS
    out: list[tuple[int, int, np.ndarray, int]] = []
    for p in range(PARTITIONS):
        idx = np.nonzero(part == p)[0]
        for first in range(0, len(idx), batch_size):
            chunk = idx[first : first + batch_size]
            out.append((int(chunk[-1]), p, chunk, first))
    out.sort(key=lambda b: b[0])
    return [(p, chunk, first) for _, p, chunk, first in out]


def fact_dicts(cols: dict[str, np.ndarray], idx: np.ndarray) -> list[dict]:
    """The facts as the sink's callers hand them over (one dict per fact)."""
    utc = dt.timezone.utc
    out = []
    for i in idx.tolist():
        t, a, k = int(cols["tenant"][i]), int(cols["agent"][i]), int(cols["kind"][i])
        out.append(
            {
                "tenant": f"tenant-{t:03d}",
                "agent_id": f"agent-{t:03d}-{a:03d}",
                "agent_type": AGENT_TYPES[k],
                "region": REGIONS[int(cols["region"][i])],
                "task_id": f"task-{i:09d}",
                "outcome": "completed" if cols["completed"][i] else "failed",
                "response_time_ms": int(cols["rt"][i]),
                "cost": float(cols["cost"][i]),
                "event_time": dt.datetime.fromtimestamp(int(cols["t_ms"][i]) / 1000, utc),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary chdb directory")
    args = parser.parse_args()

    import chdb
    import clickhouse_connect

    from connectors.clickhouse import clickhouse_client
    from sinks.clickhouse_schema import FACT_COLUMNS, cube_tables, ensure_schema
    from sinks.clickhouse_sink import FACT_FIELDS, FactsSink
    from schemas.settings import Settings
    from schemas.topology import load_topology

    tmp = Path(tempfile.mkdtemp(prefix="agentstream-bench-sink-"))
    try:
        client = clickhouse_client(Settings(data_dir=tmp, clickhouse_url=f"chdb://{tmp / 'chdb'}"))
        declared = next(c for c in load_topology(REPO / "topology.yaml").cubes if c.name == "task_cube")
        sink_cube = declared.model_copy(update={"database": "bench_sink"})
        bare_cube = declared.model_copy(update={"database": "bench_bare"})
        ensure_schema(client, sink_cube)
        ensure_schema(client, bare_cube)
        bare_table = cube_tables(bare_cube).facts
        columns = [name for name, _ in FACT_COLUMNS]
        ch_version = client.command("SELECT version()")

        now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
        gen_started = time.perf_counter()
        cols = synthetic_facts(args.facts, now)
        cut = batches(cols, args.batch_size)
        gen_setup = time.perf_counter() - gen_started

        sink = FactsSink(client, sink_cube, TOPIC, batch_size=args.batch_size)
        t_sink = t_bare = 0.0
        wall_started = time.perf_counter()
        for number, (partition, idx, first_offset) in enumerate(cut):
            facts = fact_dicts(cols, idx)  # untimed: what arrives from Kafka
            last_offset = first_offset + len(facts) - 1
            rows = [  # untimed: the baseline's rows, exactly what the sink writes
                [*(f[name] for name in FACT_FIELDS), TOPIC, partition, first_offset + j, first_offset, last_offset]
                for j, f in enumerate(facts)
            ]

            def run_sink() -> float:
                started = time.perf_counter()
                for j, fact in enumerate(facts):
                    sink.add(partition, first_offset + j, fact)
                if len(facts) < args.batch_size:  # the partition's tail: the caller's timer flushes it
                    sink.flush([partition])
                return time.perf_counter() - started

            def run_bare() -> float:
                started = time.perf_counter()
                client.insert(bare_table, rows, column_names=columns)
                return time.perf_counter() - started

            if number % 2 == 0:
                t_sink += run_sink()
                t_bare += run_bare()
            else:
                t_bare += run_bare()
                t_sink += run_sink()
        wall = time.perf_counter() - wall_started

        # Both databases must hold every fact exactly once, in the facts table and in every cube table.
        checks = {}
        for cube in (sink_cube, bare_cube):
            tables = cube_tables(cube)
            counts = [client.command(f"SELECT count() FROM {tables.facts}")]
            counts += [client.command(f"SELECT countMerge(count_state) FROM {t}") for t in tables.rollups.values()]
            checks[cube.database] = [int(c) for c in counts]
        # The minute table has a 30-day TTL: the first minute or two of the 30 days may be gone already.
        assert all(c[0] == c[2] == c[3] == args.facts and args.facts - 10_000 < c[1] <= args.facts for c in checks.values()), (
            f"row counts differ from {args.facts}: {checks}"
        )
        batches_sink = len(sink.inserted_batches)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    sink_rate, bare_rate = args.facts / t_sink, args.facts / t_bare
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, {platform.platform()}")
    print(f"chdb {chdb.__version__} (ClickHouse {ch_version}), clickhouse-connect {clickhouse_connect.__version__}, embedded under a temp dir")
    print(
        f"facts: {args.facts:,} over {TENANTS} tenants x {AGENTS_PER_TENANT} agents, {len(AGENT_TYPES)} agent types, {len(REGIONS)} regions, "
        f"30 days, {PARTITIONS} partitions; {batches_sink} batches of up to {args.batch_size:,} rows each side"
    )
    print("schema: facts table + the declared cube roll-ups (minute/hour/day, all-tenant hour/day) and their views (ensure_schema), one fresh database per side")
    print(f"check: facts, minute (30-day TTL drops the oldest minutes), hour, day counts = {checks['bench_sink']} (sink) / {checks['bench_bare']} (bare)")
    print(f"agentstream FactsSink.add (+flush of partial tails): {sink_rate:,.0f} rows/s ({t_sink:.1f} s)")
    print(f"baseline bare client.insert, same rows and batches:  {bare_rate:,.0f} rows/s ({t_bare:.1f} s)")
    print(f"ratio sink time / bare time: {t_sink / t_bare:.2f}x (sink rate = {sink_rate / bare_rate:.2f} x bare rate); target within 1.5x")
    print(f"(untimed: data generation {gen_setup:.1f} s; wall time of the interleaved runs {wall:.1f} s)")


if __name__ == "__main__":
    main()
