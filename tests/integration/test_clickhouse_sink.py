"""The ClickHouse core of analytics on real embedded ClickHouse (chdb via clickhouse-connect).

No Kafka here: rows carry the (partition, offset) a consumer would give the sink. Every test
has its own database on the one chdb path of the process (chdb allows one path per process).
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections import defaultdict
from typing import Any, Iterator

import numpy as np
import pytest
from clickhouse_connect.driver.exceptions import OperationalError

from connectors.clickhouse import clickhouse_client
from sinks.clickhouse_schema import QUANTILE_ACCURACY, cube_tables, ensure_schema
from sinks.clickhouse_sink import FactsSink, InvalidFact, RetryInfo, SinkClosed
from sinks.cube_query import Cube
from schemas.settings import get_settings
from schemas.topology import CubeSpec, load_topology

UTC = dt.timezone.utc
TOPIC = "facts.tasks"
TENANTS = ("acme", "globex", "initech")
START = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=3)
DAYS = 3


@pytest.fixture(scope="module")
def client():
    return clickhouse_client(get_settings())


@pytest.fixture
def cube(client) -> Iterator[CubeSpec]:
    base = load_topology(get_settings().topology_path).cubes[0]
    spec = base.model_copy(update={"database": f"db_{uuid.uuid4().hex[:12]}"})
    ensure_schema(client, spec)
    yield spec
    client.command(f"DROP DATABASE IF EXISTS {spec.database} SYNC")


def make_facts(n_per_tenant: int = 1500, seed: int = 7) -> list[tuple[int, int, dict[str, Any]]]:
    """(partition, offset, fact): tenant i on partition i, offsets consecutive per partition."""
    rng = random.Random(seed)
    out = []
    for p, tenant in enumerate(TENANTS):
        for offset in range(n_per_tenant):
            out.append(
                (
                    p,
                    offset,
                    {
                        "tenant": tenant,
                        "agent_id": f"agent-{rng.randrange(20)}",
                        "agent_type": rng.choice(["planner", "coder", "reviewer"]),
                        "region": rng.choice(["eu", "us"]),
                        "task_id": f"{tenant}-{offset}",
                        "outcome": "completed" if rng.random() < 0.8 else "failed",
                        "response_time_ms": int(rng.lognormvariate(6, 1)) + 1,
                        "cost": round(rng.uniform(0.001, 2.0), 4),
                        "event_time": START + dt.timedelta(seconds=rng.randrange(DAYS * 86400), milliseconds=rng.randrange(1000)),
                    },
                )
            )
    return out


def truth(facts, bucket: str) -> dict[tuple[str, dt.datetime], tuple[int, int, float]]:
    """(tenant, bucket start) -> (count, successes, cost), computed in Python."""
    acc: dict = defaultdict(lambda: [0, 0, 0.0])
    for _, _, f in facts:
        t = f["event_time"]
        key_time = {
            "minute": t.replace(second=0, microsecond=0),
            "hour": t.replace(minute=0, second=0, microsecond=0),
            "day": t.replace(hour=0, minute=0, second=0, microsecond=0),
        }[bucket]
        cell = acc[(f["tenant"], key_time)]
        cell[0] += 1
        cell[1] += f["outcome"] == "completed"
        cell[2] += f["cost"]
    return {k: tuple(v) for k, v in acc.items()}


def cube_cells(cube_api: Cube, granularity: str, **kwargs) -> dict[tuple[str, dt.datetime], tuple[int, int, float]]:
    df = cube_api.query(["task_count", "success_rate", "cost"], ["tenant", "time"], granularity=granularity, **kwargs)
    return {
        (row.tenant, row.time.to_pydatetime()): (int(row.task_count), round(row.success_rate * row.task_count), row.cost)
        for row in df.itertuples()
    }


def assert_totals_exact(client, cube: CubeSpec, facts) -> None:
    api = Cube(client, cube)
    for granularity in ("minute", "day"):
        want, got = truth(facts, granularity), cube_cells(api, granularity)
        assert set(got) == set(want), granularity
        for key, (count, ok, cost) in want.items():
            assert got[key][:2] == (count, ok), (granularity, key)
            assert got[key][2] == pytest.approx(cost, rel=1e-9, abs=1e-9), (granularity, key)
    # The all-tenant roll-ups (no tenant dimension) hold the same totals summed over tenants.
    for granularity in ("hour", "day"):
        assert api.sql(["task_count"], ["time"], granularity=granularity).table == cube_tables(cube).all_tenants[granularity]
        want_all: dict = defaultdict(lambda: [0, 0, 0.0])
        for (_, when), (count, ok, cost) in truth(facts, granularity).items():
            cell = want_all[when]
            cell[0], cell[1], cell[2] = cell[0] + count, cell[1] + ok, cell[2] + cost
        df = api.query(["task_count", "success_rate", "cost"], ["time"], granularity=granularity)
        got_all = {row.time.to_pydatetime(): (int(row.task_count), round(row.success_rate * row.task_count), row.cost) for row in df.itertuples()}
        assert set(got_all) == set(want_all), granularity
        for when, (count, ok, cost) in want_all.items():
            assert got_all[when][:2] == (count, ok) and got_all[when][2] == pytest.approx(cost, rel=1e-9), (granularity, when)
    facts_table = cube_tables(cube).facts
    assert client.command(f"SELECT count() FROM {facts_table}") == len(facts)
    assert client.command(f"SELECT uniqExact(kafka_partition, kafka_offset) FROM {facts_table}") == len(facts)


def feed(sink: FactsSink, facts, flush_every: int | None = None) -> None:
    for i, (p, o, f) in enumerate(facts, start=1):
        sink.add(p, o, f)
        if flush_every and i % flush_every == 0:
            sink.flush()  # the 1 s timer, at arbitrary points: short batches
    sink.flush()


class FlakyClient:
    """The real client, whose inserts (and queries) fail the first N times: ClickHouse is down."""

    def __init__(self, real, insert_failures: int = 0, query_failures: int = 0) -> None:
        self.real, self.insert_failures, self.query_failures = real, insert_failures, query_failures
        self.insert_calls: list[tuple[tuple, dict]] = []

    def insert(self, *args, **kwargs):
        if self.insert_failures > 0:
            self.insert_failures -= 1
            raise OperationalError("connection refused (simulated outage)")
        self.insert_calls.append((args, kwargs))
        return self.real.insert(*args, **kwargs)

    def query(self, *args, **kwargs):
        if self.query_failures > 0:
            self.query_failures -= 1
            raise OperationalError("connection refused (simulated outage)")
        return self.real.query(*args, **kwargs)


# --- schema ------------------------------------------------------------------------------


def test_schema_is_idempotent_and_migrates(client, cube: CubeSpec) -> None:
    assert ensure_schema(client, cube) == []  # the fixture created it: a second call changes nothing
    tables = cube_tables(cube)
    create = client.command(f"SHOW CREATE TABLE {tables.facts}")
    assert "PARTITION BY toYYYYMM(event_time)" in create and "non_replicated_deduplication_window" in create
    assert "ORDER BY (tenant, agent_type, region, event_time, task_id)" in create
    for table in tables.rollups.values():
        assert "AggregatingMergeTree" in client.command(f"SHOW CREATE TABLE {table}")

    client.command(f"ALTER TABLE {tables.facts} DROP COLUMN sink_batch_last")  # an older schema
    longer = cube.model_copy(update={"ttl_days_raw": 120, "ttl_days_day": 3650})
    changed = ensure_schema(client, longer)
    assert any("ADD COLUMN IF NOT EXISTS `sink_batch_last`" in s for s in changed)
    assert any("task_cube_day MODIFY TTL ts + INTERVAL 3650 DAY" in s for s in changed)
    assert ensure_schema(client, longer) == []
    assert "toIntervalDay(120)" in client.command(f"SHOW CREATE TABLE {tables.facts}")


def test_a_rollup_added_to_a_cube_with_data_is_backfilled(client, cube: CubeSpec) -> None:
    plain = cube.model_copy(update={"rollups": ["minute"], "all_tenant_rollups": []})
    tables = cube_tables(cube)
    for table in [*tables.all_tenants.values(), *tables.rollups.values()]:
        if not table.endswith("_minute"):
            client.command(f"DROP VIEW IF EXISTS {tables.view_of(table)}")
            client.command(f"DROP TABLE IF EXISTS {table}")
    assert ensure_schema(client, plain) == []
    facts = make_facts(400)
    feed(FactsSink(client, plain, TOPIC, batch_size=250), facts)

    changed = ensure_schema(client, cube)  # hour, day, hour_all, day_all: created and backfilled
    assert sum(s.startswith("INSERT INTO") for s in changed) == 4
    assert ensure_schema(client, cube) == []
    assert_totals_exact(client, cube, facts)


# --- totals, quantiles -------------------------------------------------------------------


def test_cube_totals_equal_python_totals(client, cube: CubeSpec) -> None:
    facts = make_facts()
    sink = FactsSink(client, cube, TOPIC, batch_size=400)
    feed(sink, facts, flush_every=1111)
    assert sink.committable() == {p: 1500 for p in range(len(TENANTS))}
    assert_totals_exact(client, cube, facts)

    # Hourly roll-up and raw-facts agree too, for a range aligned on hours.
    api = Cube(client, cube)
    window = (START + dt.timedelta(hours=5), START + dt.timedelta(hours=29))
    built = api.sql(["task_count"], ["tenant"], time_range=window, granularity="hour")
    assert built.rollup == "hour"
    df = api.query(["task_count"], ["tenant"], time_range=window)
    for row in df.itertuples():
        exact = sum(1 for _, _, f in facts if f["tenant"] == row.tenant and window[0] <= f["event_time"] < window[1])
        assert row.task_count == exact


def test_quantiles_within_documented_error(client, cube: CubeSpec) -> None:
    facts = make_facts()
    feed(FactsSink(client, cube, TOPIC, batch_size=1000), facts)
    df = Cube(client, cube).query(["response_time_p50", "response_time_p95", "response_time_p99", "response_time_mean"], ["tenant"])
    for row in df.itertuples():
        values = np.array([f["response_time_ms"] for _, _, f in facts if f["tenant"] == row.tenant])
        assert row.response_time_mean == pytest.approx(values.mean(), rel=1e-9)
        for level, got in ((0.5, row.response_time_p50), (0.95, row.response_time_p95), (0.99, row.response_time_p99)):
            # quantileDD: within the relative accuracy of a value at that rank
            lower, upper = np.quantile(values, level, method="lower"), np.quantile(values, level, method="higher")
            assert lower * (1 - QUANTILE_ACCURACY) - 1e-9 <= got <= upper * (1 + QUANTILE_ACCURACY) + 1e-9, (row.tenant, level, got, lower, upper)


# --- exactly once --------------------------------------------------------------------------


def test_resending_the_same_batch_does_not_double_count(client, cube: CubeSpec) -> None:
    facts = make_facts(300)
    flaky = FlakyClient(client)
    feed(FactsSink(flaky, cube, TOPIC, batch_size=128), facts)
    for args, kwargs in flaky.insert_calls:  # every batch again, with its token
        assert kwargs["settings"]["insert_deduplication_token"].startswith(f"{cube_tables(cube).facts}:{TOPIC}:")
        client.insert(*args, **kwargs)
    assert_totals_exact(client, cube, facts)


def test_restart_after_crash_resends_same_batches_and_skips_nothing_twice(client, cube: CubeSpec) -> None:
    facts = make_facts(1000)
    by_partition = defaultdict(list)
    for item in facts:
        by_partition[item[0]].append(item)
    tables = cube_tables(cube)

    # Before the crash: batches of 100 plus timer flushes; the last commit happened after row 600.
    first = FactsSink(client, cube, TOPIC, batch_size=100)
    committed: dict[int, int] = {}
    for i in range(1000):
        for p in by_partition:
            first.add(*by_partition[p][i])
        if i == 437:
            first.flush()  # the 1 s timer: short batches ending at 437
        if i == 600:
            committed = first.flush()
        if i == 820:
            # The process dies between writing the facts and the cube's part of this batch.
            client.command(f"DETACH TABLE {tables.views['minute']}")
            first.flush()
            client.command(f"ATTACH TABLE {tables.views['minute']}")
    # ... and dies with its last rows still buffered, never flushed.
    assert committed == {p: 601 for p in by_partition}
    in_clickhouse = {p: max(b[2] for b in first.inserted_batches if b[0] == p) for p in by_partition}
    assert first.resume_offsets() == in_clickhouse and min(in_clickhouse.values()) > 820
    written_after_commit = [b for b in first.inserted_batches if b[1] >= 601]

    # After the restart: a new sink (even with another batch size) re-reads from the commit.
    second = FactsSink(client, cube, TOPIC, batch_size=64)
    assert second.resume_offsets() == in_clickhouse
    for i in range(601, 1000):
        for p in by_partition:
            second.add(*by_partition[p][i])
    assert second.flush() == {p: 1000 for p in by_partition}
    resent = [b for b in second.inserted_batches if b[2] <= in_clickhouse[b[0]]]
    assert sorted(resent) == sorted(written_after_commit)  # same boundaries, hence same tokens
    assert_totals_exact(client, cube, facts)


def test_commit_inside_a_recorded_batch_skips_its_rows(client, cube: CubeSpec) -> None:
    facts = make_facts(500)
    feed(FactsSink(client, cube, TOPIC, batch_size=200), facts)  # batches 0-199, 200-399, 400-499
    restarted = FactsSink(client, cube, TOPIC, batch_size=200)
    for p, o, f in facts:
        if o >= 250:  # a commit that something else moved into the middle of a batch
            restarted.add(p, o, f)
    assert restarted.flush() == {p: 500 for p in range(len(TENANTS))}
    assert all(b[1] >= 400 for b in restarted.inserted_batches)  # 250-399 skipped, 400-499 re-sent
    assert_totals_exact(client, cube, facts)


def test_clickhouse_down_then_back_loses_nothing_and_counts_once(client, cube: CubeSpec) -> None:
    facts = make_facts(600)
    waits: list[RetryInfo] = []
    flaky = FlakyClient(client, insert_failures=7, query_failures=2)
    sink = FactsSink(flaky, cube, TOPIC, batch_size=150, backoff_initial_s=0.001, backoff_max_s=0.004, on_retry=waits.append)
    feed(sink, facts)
    assert [w.attempt for w in waits if w.operation.startswith("insert")] == [1, 2, 3, 4, 5, 6, 7]
    assert [w.wait_s for w in waits if w.operation.startswith("insert")] == [0.001, 0.002, 0.004, 0.004, 0.004, 0.004, 0.004]
    assert all(isinstance(w.error, OperationalError) for w in waits)
    assert_totals_exact(client, cube, facts)


def test_close_aborts_a_waiting_retry(client, cube: CubeSpec) -> None:
    waits: list[RetryInfo] = []
    sink = FactsSink(FlakyClient(client, insert_failures=10**9), cube, TOPIC, batch_size=10, backoff_initial_s=0.001,
                     on_retry=lambda info: waits.append(info) or (len(waits) >= 3 and sink.close()))
    p, o, f = make_facts(1)[0]
    sink.add(p, o, f)
    with pytest.raises(SinkClosed):
        sink.flush()
    assert sink.committable() == {0: 0}  # nothing acknowledged: the offset must not be committed


def test_invalid_fact_is_rejected_before_it_can_poison_a_batch(client, cube: CubeSpec) -> None:
    sink = FactsSink(client, cube, TOPIC)
    _, _, fact = make_facts(1)[0]
    for bad in ({"outcome": "cancelled"}, {"response_time_ms": -1}, {"cost": float("nan")}, {"event_time": "yesterday"}):
        with pytest.raises(InvalidFact):
            sink.add(0, 0, {**fact, **bad})
    sink.skip(0, 0)
    sink.add(0, 1, fact)
    assert sink.flush() == {0: 2}


# --- tenant isolation ------------------------------------------------------------------------


def test_tenant_scoped_query_never_returns_another_tenant(client, cube: CubeSpec) -> None:
    facts = make_facts(400)
    feed(FactsSink(client, cube, TOPIC, batch_size=500), facts)
    api = Cube(client, cube)
    for tenant in TENANTS:
        df = api.query(["task_count", "cost"], ["tenant", "time", "region"], granularity="hour", tenant=tenant)
        assert set(df["tenant"]) == {tenant}
        assert df["task_count"].sum() == 400
        other = next(t for t in TENANTS if t != tenant)
        assert api.query(["task_count"], ["tenant"], filters={"tenant": other}, tenant=tenant).empty
        assert api.query(["task_count"], ["tenant"], filters={"tenant": [other, tenant]}, tenant=tenant)["tenant"].tolist() == [tenant]
        # A hostile tenant string is a value, not SQL.
        assert api.query(["task_count"], ["tenant"], tenant=f"{tenant}' OR '1'='1").empty
