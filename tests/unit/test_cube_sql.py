"""Cube query SQL building: roll-up choice, tenant scoping, server-side parameters, name checks."""

from __future__ import annotations

import datetime as dt

import pytest

from sinks.cube_query import CubeQueryError, build_query
from schemas.topology import CubeSpec

UTC = dt.timezone.utc
SPEC = CubeSpec(
    name="task_cube",
    source="clickhouse_facts",
    dimensions=["tenant", "agent_type", "region", "time"],
    measures=["task_count", "success_rate", "response_time_p50", "response_time_p95", "response_time_p99", "response_time_mean", "cost"],
)
DAY = (dt.datetime(2026, 1, 1, tzinfo=UTC), dt.datetime(2026, 1, 31, tzinfo=UTC))
HOURS = (dt.datetime(2026, 1, 1, 3, tzinfo=UTC), dt.datetime(2026, 1, 1, 9, tzinfo=UTC))
MINUTES = (dt.datetime(2026, 1, 1, 3, 7, tzinfo=UTC), dt.datetime(2026, 1, 1, 9, 1, tzinfo=UTC))
UNALIGNED = (dt.datetime(2026, 1, 1, 3, 7, 30, tzinfo=UTC), dt.datetime(2026, 1, 1, 9, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("time_range", "granularity", "dimensions", "rollup"),
    [
        (DAY, "day", ["time"], "day"),
        (DAY, "hour", ["time"], "hour"),  # time by hour: the day roll-up is too coarse
        (DAY, "minute", ["tenant"], "day"),  # no time dimension: the coarsest aligned one
        (HOURS, "day", ["time"], "hour"),  # bounds not on days
        (MINUTES, "day", ["tenant"], "minute"),
        (UNALIGNED, "minute", ["time"], "minute"),  # the fallback
        (None, "day", ["time", "tenant"], "day"),
        (None, "minute", ["tenant"], "day"),
    ],
)
def test_coarsest_rollup_that_answers(time_range, granularity, dimensions, rollup) -> None:
    built = build_query(SPEC, ["task_count"], dimensions, time_range=time_range, granularity=granularity)
    assert built.rollup == rollup
    assert f"FROM agentstream.task_cube_{rollup}" in built.sql


def test_declared_rollups_only() -> None:
    spec = SPEC.model_copy(update={"rollups": ["minute", "hour"]})
    assert build_query(spec, ["task_count"], ["time"], time_range=DAY, granularity="day").rollup == "hour"
    assert "toStartOfDay(ts, 'UTC') AS `time`" in build_query(spec, ["task_count"], ["time"], time_range=DAY, granularity="day").sql


def test_merge_combinators_and_success_rate() -> None:
    sql = build_query(SPEC, ["task_count", "success_rate", "response_time_p99", "response_time_mean", "cost"]).sql
    assert "countMerge(count_state) AS `task_count`" in sql
    assert "countIfMerge(success_state) / countMerge(count_state) AS `success_rate`" in sql
    assert "quantilesDDMerge(0.01, 0.5, 0.95, 0.99)(rt_quantiles_state)[3] AS `response_time_p99`" in sql
    assert "avgMerge(rt_mean_state)" in sql and "sumMerge(cost_state)" in sql


def test_tenant_scope_always_present_and_bound() -> None:
    evil = "a' OR 1=1 --"
    for filters in (None, {"tenant": "someone-else"}, {"region": ["eu", "us"]}):
        built = build_query(SPEC, ["task_count"], ["tenant", "time"], filters=filters, time_range=HOURS, granularity="hour", tenant=evil)
        assert "tenant = {tenant:String}" in built.sql
        assert built.parameters["tenant"] == evil
        assert evil not in built.sql
    unscoped = build_query(SPEC, ["task_count"], ["tenant"])
    assert "{tenant:String}" not in unscoped.sql and "tenant" not in unscoped.parameters


def test_values_are_parameters_never_sql_text() -> None:
    built = build_query(
        SPEC,
        ["cost"],
        ["region"],
        filters={"region": ["eu'; DROP TABLE x", "us"], "agent_type": "planner"},
        time_range=UNALIGNED,
        tenant="t-1",
    )
    assert "DROP" not in built.sql and "planner" not in built.sql and "2026" not in built.sql
    assert "agent_type = {f0:String}" in built.sql and "region IN {f1:Array(String)}" in built.sql
    assert "ts >= {t_start:DateTime64(3, 'UTC')}" in built.sql and "ts < {t_end:DateTime64(3, 'UTC')}" in built.sql
    assert built.parameters["f1"] == ["eu'; DROP TABLE x", "us"]
    assert built.parameters["t_start"] == UNALIGNED[0]


def test_naive_times_are_utc() -> None:
    naive = (dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 2))
    built = build_query(SPEC, ["task_count"], time_range=naive)
    assert built.parameters["t_start"] == dt.datetime(2026, 1, 1, tzinfo=UTC)
    assert built.rollup == "day"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"measures": ["revenue"]}, "no measure 'revenue'"),
        ({"measures": ["task_count"], "dimensions": ["agent_id"]}, "no dimension 'agent_id'"),
        ({"measures": ["task_count"], "dimensions": ["region; DROP TABLE t"]}, "no dimension"),
        ({"measures": ["task_count"], "filters": {"os": "linux"}}, "cannot filter on 'os'"),
        ({"measures": ["task_count"], "filters": {"time": "x"}}, "use time_range"),
        ({"measures": ["task_count"], "filters": {"region": []}}, "non-empty list"),
        ({"measures": ["task_count"], "filters": {"region": [1]}}, "non-empty list"),
        ({"measures": []}, "at least one measure"),
        ({"measures": "task_count"}, "lists of names"),
        ({"measures": ["task_count"], "granularity": "week"}, "granularity"),
        ({"measures": ["task_count"], "time_range": (DAY[1], DAY[0])}, "not before"),
        ({"measures": ["task_count"], "time_range": ("2026-01-01", DAY[1])}, "must be a datetime"),
        ({"measures": ["task_count"], "tenant": ""}, "tenant"),
        ({"measures": ["task_count", "task_count"]}, "twice"),
    ],
)
def test_bad_requests_are_typed_errors(kwargs, message) -> None:
    with pytest.raises(CubeQueryError, match=message):
        build_query(SPEC, **kwargs)


def test_measures_are_those_the_cube_declares() -> None:
    small = SPEC.model_copy(update={"measures": ["task_count"]})
    with pytest.raises(CubeQueryError, match="no measure 'cost'"):
        build_query(small, ["cost"])


def test_cube_spec_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown dimension 'os'"):
        CubeSpec(name="c", source="s", dimensions=["tenant", "time", "os"], measures=["task_count"])
    with pytest.raises(ValueError, match="unknown measure 'revenue'"):
        CubeSpec(name="c", source="s", dimensions=["tenant", "time"], measures=["revenue"])
    with pytest.raises(ValueError, match="'tenant' is required"):
        CubeSpec(name="c", source="s", dimensions=["time"], measures=["task_count"])
    with pytest.raises(ValueError, match="'minute' is required"):
        CubeSpec(name="c", source="s", dimensions=["tenant", "time"], measures=["task_count"], rollups=["hour"])
    spec = CubeSpec(name="c", source="s", dimensions=["tenant", "time", "agent_id"], measures=["cost"])
    assert (spec.database, spec.facts_table, spec.ttl_days_raw, spec.ttl_days_day, spec.rollups) == ("agentstream", "task_facts", 90, 0, ["minute", "hour", "day"])
    with pytest.raises(ValueError, match="all-tenant roll-up 'day' is not one of the roll-ups"):
        CubeSpec(name="c", source="s", dimensions=["tenant", "time"], measures=["cost"], rollups=["minute"], all_tenant_rollups=["day"])


ALL = SPEC.model_copy(update={"all_tenant_rollups": ["hour", "day"]})


@pytest.mark.parametrize(
    ("kwargs", "table"),
    [
        (dict(dimensions=["time"], granularity="day", time_range=DAY), "agentstream.task_cube_day_all"),
        (dict(dimensions=["time", "agent_type"], granularity="hour", time_range=DAY, filters={"region": "eu"}), "agentstream.task_cube_hour_all"),
        (dict(dimensions=["time"], granularity="minute", time_range=MINUTES), "agentstream.task_cube_minute"),  # no all-tenant minute
        (dict(dimensions=["time"], granularity="day", time_range=DAY, tenant="acme"), "agentstream.task_cube_day"),  # tenant-scoped
        (dict(dimensions=["time"], granularity="day", time_range=DAY, filters={"tenant": "acme"}), "agentstream.task_cube_day"),
        (dict(dimensions=["time", "tenant"], granularity="day", time_range=DAY), "agentstream.task_cube_day"),
    ],
)
def test_all_tenant_rollup_only_when_the_query_ignores_tenants(kwargs, table) -> None:
    built = build_query(ALL, ["task_count", "response_time_p95"], **kwargs)
    assert built.table == table and f"FROM {table}\n" in built.sql + "\n"
