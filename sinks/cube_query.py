"""The cube query API: measures by dimensions over a time range, from the coarsest roll-up that answers.

``Cube(client, spec).query(...)`` returns a pandas DataFrame with one column per dimension
(``time`` is the bucket start, UTC) and per measure. The SQL is built here from whitelisted
names only (the cube's declared dimensions and measures); every value (tenant, filter values,
time bounds) is bound server-side as a ``{name:Type}`` parameter, never put into the SQL text.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Sequence

import pandas as pd
from clickhouse_connect.driver.client import Client

from sinks.clickhouse_schema import QUANTILE_LEVELS, cube_dimensions, cube_tables, merge_expr
from schemas.topology import CubeSpec

Granularity = Literal["minute", "hour", "day"]
GRANULARITIES: tuple[str, ...] = ("minute", "hour", "day")
_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}
_TRUNCATE = {"minute": "toStartOfMinute", "hour": "toStartOfHour", "day": "toStartOfDay"}
_QUANTILES = merge_expr("rt_quantiles_state")

#: SQL of each measure over a cube table's state columns.
MEASURE_SQL: dict[str, str] = {
    "task_count": merge_expr("count_state"),
    "success_rate": f"{merge_expr('success_state')} / {merge_expr('count_state')}",
    "response_time_mean": merge_expr("rt_mean_state"),
    "cost": merge_expr("cost_state"),
    **{f"response_time_p{round(level * 100)}": f"{_QUANTILES}[{i}]" for i, level in enumerate(QUANTILE_LEVELS, start=1)},
}


class CubeQueryError(ValueError):
    """A cube query names an unknown measure/dimension/filter or has a malformed argument."""


@dataclass(frozen=True)
class CubeQuery:
    """A built query: the SQL text, its server-side parameters, and the roll-up it reads."""

    sql: str
    parameters: dict[str, Any]
    rollup: str
    table: str


def _utc(value: Any, what: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise CubeQueryError(f"{what} must be a datetime, got {value!r}")
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def _aligned(moment: dt.datetime, granularity: str) -> bool:
    return moment.microsecond == 0 and int(moment.timestamp()) % _SECONDS[granularity] == 0


def choose_rollup(spec: CubeSpec, granularity: str, time_range: tuple[dt.datetime, dt.datetime] | None, by_time: bool) -> str:
    """The coarsest declared roll-up that answers exactly (``build_query`` reads its all-tenant
    table when the query neither scopes, filters nor groups by tenant).

    A roll-up answers when both time bounds fall on its bucket boundaries and, if ``time`` is
    a dimension, its bucket is no coarser than ``granularity``. The minute roll-up is the
    fallback: with unaligned bounds a minute bucket counts when its start lies in the range.
    """
    for rollup in reversed(GRANULARITIES):
        if rollup not in spec.rollups:
            continue
        if by_time and _SECONDS[rollup] > _SECONDS[granularity]:
            continue
        if time_range is not None and not all(_aligned(t, rollup) for t in time_range):
            continue
        return rollup
    return "minute"


def build_query(
    spec: CubeSpec,
    measures: Sequence[str],
    dimensions: Sequence[str] = (),
    filters: Mapping[str, str | Iterable[str]] | None = None,
    time_range: tuple[dt.datetime, dt.datetime] | None = None,
    granularity: str = "minute",
    tenant: str | None = None,
) -> CubeQuery:
    """Build the SQL and parameters of a cube query (pure: no ClickHouse needed).

    ``filters`` maps a dimension to one value or to a list of values (IN). ``time_range`` is
    half-open [start, end); naive datetimes are UTC. With ``tenant`` the query is always
    restricted to that tenant (``tenant = {tenant:String}``), whatever the filters say.
    Raises CubeQueryError for any name the cube does not declare or a malformed argument.
    """
    if isinstance(measures, str) or isinstance(dimensions, str):
        raise CubeQueryError("measures and dimensions must be lists of names, not a single string")
    if not measures:
        raise CubeQueryError(f"cube '{spec.name}': name at least one measure ({', '.join(spec.measures)})")
    for kind, names, known in (("measure", measures, spec.measures), ("dimension", dimensions, spec.dimensions)):
        for name in names:
            if name not in known:
                raise CubeQueryError(f"cube '{spec.name}' has no {kind} {name!r} (it has: {', '.join(known)})")
        if len(set(names)) != len(names):
            raise CubeQueryError(f"cube '{spec.name}': a {kind} is listed twice in {list(names)}")
    if granularity not in GRANULARITIES:
        raise CubeQueryError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if tenant is not None and (not isinstance(tenant, str) or not tenant):
        raise CubeQueryError(f"tenant must be a non-empty string, got {tenant!r}")

    params: dict[str, Any] = {}
    where: list[str] = []
    if tenant is not None:
        where.append("tenant = {tenant:String}")
        params["tenant"] = tenant
    if time_range is not None:
        if not isinstance(time_range, (tuple, list)) or len(time_range) != 2:
            raise CubeQueryError("time_range must be a (start, end) pair of datetimes")
        start, end = _utc(time_range[0], "time_range start"), _utc(time_range[1], "time_range end")
        if start >= end:
            raise CubeQueryError(f"time_range start {start.isoformat()} is not before its end {end.isoformat()}")
        time_range = (start, end)
        where += ["ts >= {t_start:DateTime64(3, 'UTC')}", "ts < {t_end:DateTime64(3, 'UTC')}"]
        params.update(t_start=start, t_end=end)
    filterable = cube_dimensions(spec)
    for i, (name, value) in enumerate(sorted((filters or {}).items())):
        if name not in filterable:
            hint = " (use time_range)" if name == "time" else ""
            raise CubeQueryError(f"cube '{spec.name}' cannot filter on {name!r}{hint} (filterable: {', '.join(filterable)})")
        if isinstance(value, str):
            where.append(f"{name} = {{f{i}:String}}")
            params[f"f{i}"] = value
        else:
            values = list(value)
            if not values or not all(isinstance(v, str) for v in values):
                raise CubeQueryError(f"filter {name!r} needs a string or a non-empty list of strings, got {value!r}")
            where.append(f"{name} IN {{f{i}:Array(String)}}")
            params[f"f{i}"] = values

    by_time = "time" in dimensions
    rollup = choose_rollup(spec, granularity, time_range, by_time)
    tables = cube_tables(spec)
    table = tables.rollups[rollup]
    if tenant is None and "tenant" not in dimensions and "tenant" not in (filters or {}) and rollup in tables.all_tenants:
        table = tables.all_tenants[rollup]  # same answer from far fewer rows: no tenant split
    keys: list[str] = []
    select: list[str] = []
    for name in dimensions:
        if name == "time":
            expr = "ts" if rollup == granularity else f"{_TRUNCATE[granularity]}(ts, 'UTC')"
            select.append(f"{expr} AS `time`")
            keys.append("`time`")
        else:
            select.append(name)
            keys.append(name)
    select += [f"{MEASURE_SQL[m]} AS `{m}`" for m in measures]
    sql = f"SELECT {', '.join(select)}\nFROM {table}"
    if where:
        sql += "\nWHERE " + "\n  AND ".join(where)
    if keys:
        sql += f"\nGROUP BY {', '.join(keys)}\nORDER BY {', '.join(keys)}"
    return CubeQuery(sql, params, rollup, table)


class Cube:
    """A declared cube, queried through a clickhouse-connect client."""

    def __init__(self, client: Client, spec: CubeSpec) -> None:
        self.client = client
        self.spec = spec

    def sql(
        self,
        measures: Sequence[str],
        dimensions: Sequence[str] = (),
        filters: Mapping[str, str | Iterable[str]] | None = None,
        time_range: tuple[dt.datetime, dt.datetime] | None = None,
        granularity: str = "minute",
        tenant: str | None = None,
    ) -> CubeQuery:
        """The query ``query`` would run (see ``build_query``)."""
        return build_query(self.spec, measures, dimensions, filters, time_range, granularity, tenant)

    def query(
        self,
        measures: Sequence[str],
        dimensions: Sequence[str] = (),
        filters: Mapping[str, str | Iterable[str]] | None = None,
        time_range: tuple[dt.datetime, dt.datetime] | None = None,
        granularity: str = "minute",
        tenant: str | None = None,
    ) -> pd.DataFrame:
        """Measures grouped by dimensions, ordered by them; tenant-scoped when ``tenant`` is given.

        Columns: the dimensions in the order asked (``time`` = bucket start, UTC), then the
        measures. Without dimensions: one row of totals (measures of no rows: count 0, others NaN).
        """
        built = self.sql(measures, dimensions, filters, time_range, granularity, tenant)
        frame = self.client.query_df(built.sql, parameters=built.parameters)
        if "time" in frame.columns:
            # chdb drops the zone of DateTime('UTC') columns, a server keeps it: make both UTC-aware.
            times = pd.to_datetime(frame["time"])
            frame["time"] = times.dt.tz_localize("UTC") if times.dt.tz is None else times.dt.tz_convert("UTC")
        return frame
