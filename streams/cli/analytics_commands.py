"""``agentstream cube list|query``, ``agentstream sql`` and ``agentstream export``: analytics from the CLI.

All of them go through ``sinks.query_client.QueryClient``: the sink process's query API when it
runs (it owns the embedded chdb path), else the ClickHouse server of ``AGENTSTREAM_CLICKHOUSE_URL``,
else the embedded path itself when no process holds it. Exit codes: 2 for bad input (unknown
cube, measure, dimension, time, format, SQL ClickHouse refuses), 3 when no query service is
reachable, 1 when ClickHouse fails.
"""

from __future__ import annotations

import datetime as dt
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from sinks.export_runner import ExportResult, default_state_path, run_exports
from sinks.query_client import QueryClient
from sinks.query_errors import QueryError, QueryFailed, QueryUnavailable, UnknownCube
from sinks.query_params import parse_time
from sinks.table_formats import encode, write_table
from streams.cli.console import console, err_console, fail
from schemas.settings import get_settings
from schemas.topology import TopologyError

cube_cli = typer.Typer(help="List and query the cubes declared in topology.yaml.", no_args_is_help=True)
export_cli = typer.Typer(help="Export a cube query or a SQL query to Parquet/CSV (with a progress bar); run scheduled exports.")

OUTPUT_FORMATS = ("table", "csv", "json", "parquet")
#: Rows shown in a rich table; the rest is summarised (use --format csv/json/parquet for all).
MAX_TABLE_ROWS = 1000


@contextmanager
def _errors() -> Iterator[None]:
    """Turn query errors into CLI errors with the documented exit codes."""
    try:
        yield
    except QueryUnavailable as exc:
        fail(str(exc), code=3)
    except QueryError as exc:
        fail(str(exc), code=2)
    except (QueryFailed, TopologyError) as exc:
        fail(str(exc), code=1)


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _filters(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        dim, sep, values = item.partition("=")
        if not sep or not dim.strip() or not _split(values):
            fail(f"--filter {item!r}: use DIMENSION=VALUE[,VALUE...]", code=2)
        out.setdefault(dim.strip(), []).extend(_split(values))
    return out


def _check_time(value: str | None, what: str) -> str | None:
    if value is not None:
        try:
            parse_time(value, what)
        except QueryError as exc:
            fail(str(exc), code=2)
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "[dim]null[/]"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return str(value)


def _rich_table(table: pa.Table, title: str | None = None) -> Table:
    out = Table(*table.column_names, title=title)
    shown = table.slice(0, MAX_TABLE_ROWS)
    columns = [shown.column(i).to_pylist() for i in range(shown.num_columns)]
    for r in range(shown.num_rows):
        out.add_row(*(_cell(col[r]) for col in columns))
    return out


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _emit(table: pa.Table, fmt: str, out: Path | None, title: str | None = None, **extra: Any) -> None:
    """Print or write ``table`` as ``fmt`` (table, csv, json, parquet)."""
    if fmt not in OUTPUT_FORMATS:
        fail(f"unknown format {fmt!r}: use {', '.join(OUTPUT_FORMATS)}", code=2)
    if fmt == "table":
        if out is not None:
            fail("--format table prints to the terminal: use --format csv, json or parquet with --out", code=2)
        console.print(_rich_table(table, title))
        if table.num_rows > MAX_TABLE_ROWS:
            console.print(f"[dim]showing {MAX_TABLE_ROWS} of {table.num_rows} rows: use --format csv|json|parquet for all[/]")
        else:
            console.print(f"[dim]{table.num_rows} row(s)[/]")
        return
    if fmt == "parquet" and out is None:
        fail("--format parquet needs --out FILE", code=2)
    data = encode(table, fmt, **extra) if fmt != "json" else encode(table, fmt, **extra) + b"\n"
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    err_console.print(f"wrote {table.num_rows} row(s) to {out} ({_human(len(data))})")


def _cube_spec(queries: QueryClient, name: str) -> dict[str, Any]:
    cubes = {c["name"]: c for c in queries.cubes()}
    if name not in cubes:
        raise UnknownCube(f"no cube named {name!r} (declared: {', '.join(cubes) or 'none'})")
    return cubes[name]


FormatOption = typer.Option("table", "--format", "-F", help="table, csv, json or parquet (parquet needs --out).")
OutOption = typer.Option(None, "--out", "-o", help="Write to this file instead of the terminal.")
MeasuresOption = typer.Option(None, "--measures", "-m", help="Comma-separated measures (default: all the cube declares).")
GranularityOption = typer.Option(None, "--granularity", "-g", help="Time bucket: minute, hour or day (default minute).")
FromOption = typer.Option(None, "--from", help="Start of the time range, ISO-8601 (inclusive; UTC without a zone).")
ToOption = typer.Option(None, "--to", help="End of the time range, ISO-8601 (exclusive).")
TenantOption = typer.Option(None, "--tenant", "-t", help="Only this tenant's rows.")
FilterOption = typer.Option([], "--filter", help="DIMENSION=VALUE[,VALUE...]; repeatable.")


@cube_cli.command("list")
def list_cubes() -> None:
    """The declared cubes: dimensions, measures and roll-ups."""
    with _errors():
        cubes = QueryClient(get_settings()).cubes()
    table = Table("cube", "dimensions", "measures", "roll-ups", "description")
    for cube in cubes:
        table.add_row(f"[blue]{cube['name']}[/]", ", ".join(cube["dimensions"]), ", ".join(cube["measures"]), ", ".join(cube["rollups"]), cube.get("description", ""))
    console.print(table)


@cube_cli.command("query")
def query_cube(
    name: str = typer.Argument(..., help="Cube name (see `agentstream cube list`)."),
    measures: str | None = MeasuresOption,
    dimensions: str | None = typer.Option(None, "--dimensions", "-d", help="Comma-separated dimensions to group by (default: none, totals)."),
    granularity: str | None = GranularityOption,
    time_from: str | None = FromOption,
    time_to: str | None = ToOption,
    tenant: str | None = TenantOption,
    filter: list[str] = FilterOption,
    format: str = FormatOption,
    out: Path | None = OutOption,
) -> None:
    """Measures by dimensions from the coarsest roll-up that answers, e.g.
    `agentstream cube query task_cube -m task_count,cost -d tenant,time -g hour --from 2025-01-01 --tenant acme`."""
    if format not in OUTPUT_FORMATS:
        fail(f"unknown format {format!r}: use {', '.join(OUTPUT_FORMATS)}", code=2)
    filters = _filters(filter)
    _check_time(time_from, "--from")
    _check_time(time_to, "--to")
    queries = QueryClient(get_settings())
    with _errors():
        names = _split(measures) or _cube_spec(queries, name)["measures"]
        table, rollup = queries.cube_table(name, names, _split(dimensions), granularity, time_from, time_to, tenant, filters)
    _emit(table, format, out, title=f"{name} (from the {rollup} roll-up)", rollup=rollup)


def sql(
    query: str = typer.Argument(..., help="One SELECT query (WITH/UNION allowed); it runs read-only."),
    format: str = FormatOption,
    out: Path | None = OutOption,
) -> None:
    """Run a read-only SQL query on ClickHouse and print the result (rich table by default)."""
    if format not in OUTPUT_FORMATS:
        fail(f"unknown format {format!r}: use {', '.join(OUTPUT_FORMATS)}", code=2)
    if format == "parquet" and out is None:
        fail("--format parquet needs --out FILE", code=2)
    with _errors():
        table = QueryClient(get_settings()).sql_table(query)
    _emit(table, format, out)


@export_cli.callback(invoke_without_command=True)
def export(
    ctx: typer.Context,
    cube: str | None = typer.Option(None, "--cube", help="Export this cube (with the query options below)."),
    sql_text: str | None = typer.Option(None, "--sql", help="Export the result of this read-only SELECT."),
    out: Path | None = typer.Option(None, "--out", "-o", help="FILE.parquet or FILE.csv (the suffix picks the format)."),
    measures: str | None = MeasuresOption,
    dimensions: str | None = typer.Option(None, "--dimensions", "-d", help="Comma-separated dimensions (default: all the cube declares)."),
    granularity: str | None = GranularityOption,
    time_from: str | None = FromOption,
    time_to: str | None = ToOption,
    tenant: str | None = TenantOption,
    filter: list[str] = FilterOption,
    chunk_rows: int = typer.Option(65_536, "--chunk-rows", min=1, help="Rows per Parquet row group / CSV chunk."),
) -> None:
    """Export `--cube NAME [query options]` or `--sql "SELECT ..."` to `--out FILE.parquet|FILE.csv`."""
    if ctx.invoked_subcommand is not None:
        return
    if (cube is None) == (sql_text is None):
        fail("name exactly one of --cube NAME or --sql \"SELECT ...\" (or run `agentstream export run-due`)", code=2)
    if out is None:
        fail("--out FILE.parquet or FILE.csv is required", code=2)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("parquet", "csv"):
        fail(f"--out {out}: the file must end in .parquet or .csv", code=2)
    filters = _filters(filter)
    _check_time(time_from, "--from")
    _check_time(time_to, "--to")
    queries = QueryClient(get_settings())
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err_console) as progress:
        fetching = progress.add_task("querying", total=None)
        with _errors():
            if cube is not None:
                spec = _cube_spec(queries, cube)
                table, _ = queries.cube_table(
                    cube, _split(measures) or spec["measures"], _split(dimensions) or spec["dimensions"], granularity, time_from, time_to, tenant, filters
                )
            else:
                table = queries.sql_table(sql_text or "")
        progress.update(fetching, total=1, completed=1, description=f"fetched {table.num_rows} rows")
        writing = progress.add_task(f"writing {out.name}", total=table.num_rows)
        size = write_table(table, out, fmt, on_rows=lambda n: progress.advance(writing, n), chunk_rows=chunk_rows)
    console.print(f"[green]wrote[/] {table.num_rows} rows to {out} ({_human(size)})", highlight=False)


@export_cli.command("run-due")
def run_due(
    state: Path | None = typer.Option(None, "--state", help="JSON file of last runs (default: DATA_DIR/exports/state.json)."),
    now: str | None = typer.Option(None, "--now", help="Pretend it is this time (ISO-8601), e.g. to catch up."),
) -> None:
    """Run the scheduled exports of topology.yaml that are due now (once each), and record them."""
    settings = get_settings()
    moment = parse_time(_check_time(now, "--now"), "--now") if now is not None else None
    queries = QueryClient(settings)

    def report(result: ExportResult) -> None:
        if result.error:
            err_console.print(f"[red]✗[/] {result.name} ({result.at:%Y-%m-%d %H:%M}): {result.error}", highlight=False)
        else:
            console.print(f"[green]✓[/] {result.name} ({result.at:%Y-%m-%d %H:%M}): {result.rows} rows to {result.path} ({_human(result.bytes)})", highlight=False)

    with _errors():
        results = run_exports(queries, state or default_state_path(settings), moment, on_result=report)
    if not results:
        console.print("no export is due")
    if any(r.error for r in results):
        raise typer.Exit(1)
