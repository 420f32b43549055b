"""The ClickHouse objects of a cube, created and migrated idempotently from its ``CubeSpec``.

For a cube ``C`` over facts table ``F`` in database ``D``:

- ``D.F``           raw facts, MergeTree, PARTITION BY month, ORDER BY tenant first, TTL ``ttl_days_raw``;
- ``D.C_minute``    AggregatingMergeTree with -State columns, fed by ``D.C_minute_mv`` from ``D.F``;
- ``D.C_hour``      fed by ``D.C_hour_mv`` from the minute table with -MergeState;
- ``D.C_day``       fed by ``D.C_day_mv`` from the hour table (or the minute table without hours);
- ``D.C_<g>_all``   for each of ``all_tenant_rollups``: the same roll-up without the tenant
                    dimension (key ``ts`` first), fed by ``D.C_<g>_all_mv`` from ``D.C_<g>``.

A roll-up created on an existing cube is backfilled from its source table right after its view
is created (``INSERT INTO target <the view's SELECT>``). The sink does that at start, before it
consumes; with several sink processes inserting meanwhile the backfill could count their blocks
twice, so add roll-ups with the sinks stopped.

Every table, the aggregate ones too, has ``non_replicated_deduplication_window``: ClickHouse
(checked on chdb 26.9) pushes a block that the facts table deduplicated on to the materialized
views anyway (``deduplicate_blocks_in_dependent_materialized_views``), so each view target must
deduplicate by itself. The window counts inserted blocks, so it must cover every block inserted
between a batch and its re-send after a crash (see sinks/clickhouse_sink.py).

The aggregate tables always hold all measure states (count, successes, cost, mean and quantiles
of the response time); the cube's ``measures`` only restrict what may be queried, so adding a
measure later needs no backfill. Dimensions are the table's key and cannot be changed in place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from connectors.clickhouse import run_ddl
from schemas.topology import CubeSpec

#: Blocks remembered for insert deduplication, per table (facts and every cube table).
DEDUP_WINDOW = 10_000

#: Relative accuracy of the response-time quantile sketch (DDSketch): ClickHouse documents
#: quantileDD's result to be within this relative error of the true quantile.
QUANTILE_ACCURACY = 0.01
QUANTILE_LEVELS = (0.5, 0.95, 0.99)

#: The last columns of every table a ``TableSink`` writes (sinks/clickhouse_sink.py): where the
#: row sits in Kafka, and the batch it was written in (lets a restarted sink re-send that batch).
BOOKKEEPING_COLUMNS: tuple[tuple[str, str], ...] = (
    ("kafka_topic", "LowCardinality(String)"),
    ("kafka_partition", "UInt32"),
    ("kafka_offset", "UInt64"),
    ("sink_batch_first", "UInt64"),
    ("sink_batch_last", "UInt64"),
)

#: Facts columns, in insert order. Bookkeeping columns come last: the sink fills them.
FACT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("tenant", "LowCardinality(String)"),
    ("agent_id", "String"),
    ("agent_type", "LowCardinality(String)"),
    ("region", "LowCardinality(String)"),
    ("task_id", "String"),
    ("outcome", "Enum8('completed' = 1, 'failed' = 2)"),
    ("response_time_ms", "UInt32"),
    ("cost", "Float64"),
    ("event_time", "DateTime64(3, 'UTC')"),
    *BOOKKEEPING_COLUMNS,
)

_QUANTILES_ARGS = f"({QUANTILE_ACCURACY}, {', '.join(map(str, QUANTILE_LEVELS))})"

#: Aggregate state columns of every cube table: (name, type, -State expression over the facts,
#: the aggregate function with a ``{c}`` where a combinator goes, e.g. ``sum{c}`` -> ``sumMerge``).
STATE_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("count_state", "AggregateFunction(count)", "countState()", "count{c}"),
    ("success_state", "AggregateFunction(countIf, UInt8)", "countIfState(outcome = 'completed')", "countIf{c}"),
    ("cost_state", "AggregateFunction(sum, Float64)", "sumState(cost)", "sum{c}"),
    ("rt_mean_state", "AggregateFunction(avg, UInt32)", "avgState(response_time_ms)", "avg{c}"),
    (
        "rt_quantiles_state",
        f"AggregateFunction(quantilesDD{_QUANTILES_ARGS}, UInt32)",
        f"quantilesDDState{_QUANTILES_ARGS}(response_time_ms)",
        "quantilesDD{c}" + _QUANTILES_ARGS,
    ),
)


def merge_expr(state_column: str, combinator: str = "Merge") -> str:
    """``<agg><combinator>(state_column)`` for a state column, e.g. ``sumMerge(cost_state)``."""
    template = next(t for name, _, _, t in STATE_COLUMNS if name == state_column)
    return f"{template.format(c=combinator)}({state_column})"


#: Dimension columns of the cube tables, in key order (``time`` is the bucket column ``ts``).
_DIMENSION_TYPES = {"tenant": "LowCardinality(String)", "agent_type": "LowCardinality(String)", "region": "LowCardinality(String)", "agent_id": "String"}
_BUCKET = {"minute": "toStartOfMinute", "hour": "toStartOfHour", "day": "toStartOfDay"}
_PARTITION = {"minute": "toYYYYMM(ts)", "hour": "toYYYYMM(ts)", "day": "toYear(ts)"}


class SchemaError(RuntimeError):
    """The existing ClickHouse objects cannot be migrated to the declared cube in place."""


@dataclass(frozen=True)
class CubeTables:
    """Fully qualified names of a cube's ClickHouse objects."""

    database: str
    facts: str
    rollups: dict[str, str]  # granularity -> table
    views: dict[str, str]  # granularity -> materialized view feeding it
    all_tenants: dict[str, str]  # granularity -> the roll-up without the tenant dimension

    @staticmethod
    def view_of(table: str) -> str:
        """The materialized view that feeds a cube table."""
        return f"{table}_mv"


def cube_tables(cube: CubeSpec) -> CubeTables:
    """The names of the objects ``ensure_schema`` creates for ``cube``."""
    db = cube.database
    rollups = {g: f"{db}.{cube.name}_{g}" for g in ("minute", "hour", "day") if g in cube.rollups}
    all_tenants = {g: f"{t}_all" for g, t in rollups.items() if g in cube.all_tenant_rollups}
    return CubeTables(db, f"{db}.{cube.facts_table}", rollups, {g: CubeTables.view_of(t) for g, t in rollups.items()}, all_tenants)


def cube_dimensions(cube: CubeSpec, all_tenants: bool = False) -> list[str]:
    """The non-time dimension columns of the cube tables (of the all-tenant ones: without tenant), in key order."""
    return [d for d in _DIMENSION_TYPES if d in cube.dimensions and not (all_tenants and d == "tenant")]


def _ttl(expr: str, days: int) -> str:
    return f"\nTTL {expr} + INTERVAL {days} DAY" if days > 0 else ""


def _facts_ddl(cube: CubeSpec, table: str) -> str:
    columns = ",\n    ".join(f"`{n}` {t}" for n, t in FACT_COLUMNS)
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (\n    {columns},\n"
        "    INDEX idx_kafka_offset kafka_offset TYPE minmax GRANULARITY 1\n)\n"
        "ENGINE = MergeTree\nPARTITION BY toYYYYMM(event_time)\n"
        "ORDER BY (tenant, agent_type, region, event_time, task_id)"
        f"{_ttl('toDateTime(event_time)', cube.ttl_days_raw)}\n"
        f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"
    )


def _rollup_ddl(cube: CubeSpec, granularity: str, table: str, all_tenants: bool = False) -> str:
    dims = cube_dimensions(cube, all_tenants)
    columns = [f"`{d}` {_DIMENSION_TYPES[d]}" for d in dims] + ["`ts` DateTime('UTC')"] + [f"`{n}` {t}" for n, t, _, _ in STATE_COLUMNS]
    key = ", ".join([*(["tenant"] if "tenant" in dims else []), "ts", *[d for d in dims if d != "tenant"]])
    ttl_days = getattr(cube, f"ttl_days_{granularity}")
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (\n    " + ",\n    ".join(columns) + "\n)\n"
        f"ENGINE = AggregatingMergeTree\nPARTITION BY {_PARTITION[granularity]}\nORDER BY ({key})"
        f"{_ttl('ts', ttl_days)}\n"
        f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"
    )


def _view_select(cube: CubeSpec, granularity: str, tables: CubeTables, all_tenants: bool = False) -> tuple[str, str]:
    """(source table, SELECT) of the view feeding a roll-up: the rows one insert into the source adds to it."""
    dims = cube_dimensions(cube, all_tenants)
    if all_tenants:
        source = tables.rollups[granularity]
        bucket = "src.ts"
        states = [f"{merge_expr(name, 'MergeState')} AS {name}" for name, *_ in STATE_COLUMNS]
    elif granularity == "minute":
        source = tables.facts
        bucket = "toStartOfMinute(toDateTime(src.event_time, 'UTC'))"
        states = [f"{expr} AS {name}" for name, _, expr, _ in STATE_COLUMNS]
    else:
        finer = [g for g in ("minute", "hour") if g in tables.rollups and list(_BUCKET).index(g) < list(_BUCKET).index(granularity)][-1]
        source = tables.rollups[finer]
        bucket = f"{_BUCKET[granularity]}(src.ts, 'UTC')"
        states = [f"{merge_expr(name, 'MergeState')} AS {name}" for name, *_ in STATE_COLUMNS]
    select = [f"src.{d} AS {d}" for d in dims] + [f"{bucket} AS ts"] + states
    group = ", ".join([*(f"src.{d}" for d in dims), bucket])
    return source, "SELECT " + ", ".join(select) + f"\nFROM {source} AS src\nGROUP BY {group}"


@dataclass(frozen=True)
class _Rollup:
    """One roll-up table: what it aggregates, its DDL, its view's DDL, and where a backfill reads from."""

    granularity: str
    all_tenants: bool
    table: str
    view: str
    source: str
    table_ddl: str
    view_ddl: str
    backfill: str


def _rollups(cube: CubeSpec) -> list[_Rollup]:
    """Every roll-up of the cube, in dependency order (a source before what it feeds)."""
    tables = cube_tables(cube)
    wanted = [(g, t, False) for g, t in tables.rollups.items()] + [(g, t, True) for g, t in tables.all_tenants.items()]
    out = []
    for granularity, table, all_tenants in wanted:
        source, select = _view_select(cube, granularity, tables, all_tenants)
        view = tables.view_of(table)
        out.append(
            _Rollup(
                granularity, all_tenants, table, view, source, _rollup_ddl(cube, granularity, table, all_tenants),
                f"CREATE MATERIALIZED VIEW IF NOT EXISTS {view} TO {table} AS\n{select}", f"INSERT INTO {table}\n{select}",
            )
        )
    return out


def schema_statements(cube: CubeSpec) -> list[str]:
    """Every CREATE statement of the cube, in dependency order (all ``IF NOT EXISTS``)."""
    tables = cube_tables(cube)
    out = [f"CREATE DATABASE IF NOT EXISTS {tables.database}", _facts_ddl(cube, tables.facts)]
    for rollup in _rollups(cube):
        out += [rollup.table_ddl, rollup.view_ddl]
    return out


def _existing(client: Client, database: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """(table -> engine_full, table -> {column: type}) for the database."""
    tables = {
        f"{database}.{name}": engine_full
        for name, engine_full in client.query("SELECT name, engine_full FROM system.tables WHERE database = {db:String}", parameters={"db": database}).result_rows
    }
    columns: dict[str, dict[str, str]] = {}
    for table, name, type_ in client.query("SELECT table, name, type FROM system.columns WHERE database = {db:String}", parameters={"db": database}).result_rows:
        columns.setdefault(f"{database}.{table}", {})[name] = type_
    return tables, columns


def _ttl_days(engine_full: str) -> int:
    match = re.search(r"\bTTL\b.*?toIntervalDay\((\d+)\)", engine_full)
    return int(match.group(1)) if match else 0


def ensure_schema(client: Client, cube: CubeSpec) -> list[str]:
    """Create or migrate the cube's objects; return the statements that changed something.

    Idempotent: on an up-to-date schema it runs no DDL and returns ``[]``. Migrations done in
    place: missing facts columns are added (``ADD COLUMN IF NOT EXISTS``), changed TTLs are
    modified, missing roll-ups and views are created, and a roll-up created next to an existing
    source is backfilled from it (module docstring). A cube table whose dimensions differ from
    the declaration raises SchemaError (its key cannot change in place: create a new cube).
    """
    tables = cube_tables(cube)
    existing, columns = _existing(client, tables.database)
    rollups = _rollups(cube)
    todo: list[str] = []
    if not existing:
        todo.append(f"CREATE DATABASE IF NOT EXISTS {tables.database}")
    if tables.facts not in existing:
        todo.append(_facts_ddl(cube, tables.facts))
    has_rows = set(existing)  # tables that may hold rows (a new table once it is backfilled)
    for rollup in rollups:
        if rollup.table not in existing:
            todo.append(rollup.table_ddl)
        if rollup.view not in existing:
            todo.append(rollup.view_ddl)
            if rollup.table not in existing and rollup.source in has_rows:
                todo.append(rollup.backfill)
                has_rows.add(rollup.table)

    facts_cols = columns.get(tables.facts)
    if facts_cols is not None:
        todo += [f"ALTER TABLE {tables.facts} ADD COLUMN IF NOT EXISTS `{n}` {t}" for n, t in FACT_COLUMNS if n not in facts_cols]
    ttl_of = {tables.facts: ("toDateTime(event_time)", cube.ttl_days_raw)}
    for rollup in rollups:
        ttl_of[rollup.table] = ("ts", getattr(cube, f"ttl_days_{rollup.granularity}"))
        have = columns.get(rollup.table)
        if have is None:
            continue
        want = {*cube_dimensions(cube, rollup.all_tenants), "ts", *(n for n, *_ in STATE_COLUMNS)}
        if set(have) != want:
            raise SchemaError(
                f"{rollup.table} has columns {sorted(have)} but cube '{cube.name}' needs {sorted(want)}: "
                "a cube's dimensions cannot change in place; declare a new cube (or drop the old tables)"
            )
    for table, (expr, days) in ttl_of.items():
        if table in existing and _ttl_days(existing[table]) != days:
            todo.append(f"ALTER TABLE {table} MODIFY TTL {expr} + INTERVAL {days} DAY" if days > 0 else f"ALTER TABLE {table} REMOVE TTL")
    return run_ddl(client, todo)
