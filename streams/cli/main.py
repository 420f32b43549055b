"""The ``agentstream`` command line (typer + rich)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from streams.cli.analytics_commands import cube_cli, export_cli, sql
from streams.cli.console import console, fail
from streams.cli.dashboard_commands import dashboards_cli
from streams.cli.demo import demo
from streams.cli.dev_commands import dev
from streams.cli.drift_commands import drift_cli
from streams.cli.event_commands import events_cli
from streams.cli.projection_commands import agents_cli, projections_cli
from streams.cli.saga_commands import sagas_cli
from streams.cli.schema_commands import schemas_cli
from streams.cli.tenant_commands import billing_cli, tenants_cli
from streams.cli.topology_commands import topology_cli
from schemas.settings import get_settings

cli = typer.Typer(
    help="agentstream: the event backbone of a multi-tenant AI-agent platform (Kafka, Faust, Redis, ClickHouse).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
cli.add_typer(dev, name="dev")
cli.add_typer(schemas_cli, name="schemas")
cli.add_typer(topology_cli, name="topology")
cli.add_typer(projections_cli, name="projections")
cli.add_typer(agents_cli, name="agents")
cli.add_typer(events_cli, name="events")
cli.add_typer(sagas_cli, name="sagas")
cli.command()(demo)
cli.add_typer(cube_cli, name="cube")
cli.add_typer(export_cli, name="export")
cli.add_typer(dashboards_cli, name="dashboards")
cli.add_typer(drift_cli, name="drift")
cli.command()(sql)
cli.add_typer(tenants_cli, name="tenants")
cli.add_typer(billing_cli, name="billing")


@cli.command()
def config(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Print the effective settings (from AGENTSTREAM_* variables), secrets masked."""
    values = get_settings().masked()
    if as_json:
        typer.echo(json.dumps(values, default=str, indent=2))
        return
    table = Table("setting", "value", "environment variable")
    for name, value in values.items():
        table.add_row(name, str(value), f"AGENTSTREAM_{name.upper()}")
    console.print(table)


@cli.command()
def worker(
    agents: str = typer.Option("", "--agents", help="Comma-separated agents to run here (default: all): command_handler, facts_builder, projector, sagas, provisioner, billing, drift_detector."),
) -> None:
    """Start a worker running the runtime agents (another worker process joins their groups and takes partitions)."""
    from streams.worker import UnknownAgent, run, select

    names = agents.split(",") if agents else None
    try:
        select(names)
    except UnknownAgent as exc:
        fail(str(exc), code=2)
    run(names)


@cli.command()
def sink(
    batch_size: int = typer.Option(10_000, help="Rows per ClickHouse insert (per partition)."),
    max_delay: float = typer.Option(1.0, help="Seconds a partial batch may wait before it is written."),
) -> None:
    """Run the ClickHouse sink (facts.tasks -> cubes, events.platform -> archive, billing.usage -> usage table, exactly once) and the query API it serves."""
    import asyncio
    import logging
    import signal

    from sinks.clickhouse_schema import SchemaError
    from sinks.events_archive import archive_table
    from sinks.sink_consumer import SinkConsumer, facts_cube
    from schemas.topology import TopologyError, load_topology

    settings = get_settings()
    levels = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}
    logging.basicConfig(level=levels[settings.log_level], format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    try:
        topology = load_topology(settings.topology_path)
        facts_cube(topology)
        archive_table(topology)
    except (TopologyError, LookupError, ValueError) as exc:
        fail(str(exc))

    async def serve() -> None:
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await SinkConsumer(settings, topology, batch_size=batch_size, max_delay_s=max_delay).run(stop)

    try:
        asyncio.run(serve())
    except SchemaError as exc:
        fail(f"ClickHouse schema: {exc}")


@cli.command()
def send(
    command_type: str = typer.Argument(..., help="Command schema name, e.g. CreateAgent."),
    tenant: str = typer.Option(..., "--tenant", "-t", help="Tenant id (the message key)."),
    data: str = typer.Option("{}", "--data", "-d", help="Command payload as JSON."),
    command_id: str | None = typer.Option(None, "--id", help="Command id (default: a new one); a repeated id is answered with the first outcome."),
    expected_version: int | None = typer.Option(None, "--expected-version", help="Reject unless the stream is at this version."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the result on the results topic."),
    timeout: float = typer.Option(30.0, help="Seconds to wait for the result."),
) -> None:
    """Produce one command; with --wait print its outcome. Bad input is refused before anything is produced."""
    from schemas import SchemaError
    from streams.client import CommandTimeout, send_command
    from schemas.messages import CommandAccepted, CommandRejected

    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        fail(f"--data is not valid JSON: {exc}", code=2)
    if not isinstance(payload, dict):
        fail("--data must be a JSON object", code=2)
    try:
        outcome = send_command(
            get_settings(), command_type, tenant, payload, command_id=command_id, expected_version=expected_version, wait=wait, timeout=timeout
        )
    except SchemaError as exc:
        fail(str(exc), code=2)
    except ValueError as exc:  # envelope problems (tenant id, version) from pydantic
        fail(str(exc), code=2)
    except CommandTimeout as exc:
        fail(str(exc), code=3)
    if isinstance(outcome, str):
        console.print(f"sent {command_type} [bold]{outcome}[/]")
    elif isinstance(outcome, CommandAccepted):
        events = ", ".join(f"{e.type}@v{e.version}" for e in outcome.events)
        console.print(f"[green]accepted[/] {outcome.command_id}: {outcome.stream_id} -> v{outcome.new_version} ({events})")
    elif isinstance(outcome, CommandRejected):
        console.print(f"[red]rejected[/] {outcome.command_id}: {outcome.code}: {outcome.message}")
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    cli()
