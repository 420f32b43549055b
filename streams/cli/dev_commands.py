"""``agentstream dev up|down|status``: the local Kafka + Redis stack, without Docker."""

from __future__ import annotations

import typer
from rich.table import Table

from connectors.local_stack import LocalStack, StackError
from streams.cli.console import console, fail
from schemas.settings import get_settings

dev = typer.Typer(help="Run the local stack (KRaft Kafka from Maven jars, redis-server from apt; ClickHouse is embedded).", no_args_is_help=True)


@dev.command()
def up(timeout: float = typer.Option(90.0, help="Seconds to wait for each service to answer.")) -> None:
    """Install what is missing, start Kafka and Redis on 127.0.0.1, wait until they answer. Idempotent."""
    try:
        started = LocalStack(get_settings()).up(echo=console.print, timeout=timeout)
    except StackError as exc:
        fail(str(exc))
    console.print(f"[green]stack up[/] ({'started ' + ', '.join(started) if started else 'already running'})")


@dev.command()
def down() -> None:
    """Stop the services that `dev up` started (and nothing else)."""
    stopped = LocalStack(get_settings()).down(echo=console.print)
    console.print(f"[green]stack down[/] ({'stopped ' + ', '.join(stopped) if stopped else 'nothing was running'})")


@dev.command()
def status() -> None:
    """Show each service of the local stack: pid, address, state, log file."""
    table = Table("service", "pid", "address", "state", "log")
    rows = LocalStack(get_settings()).status()
    for row in rows:
        state = "[green]running[/]" if row.running else "[red]stopped[/]"
        table.add_row(row.name, str(row.pid or "-"), row.address, state, str(row.log))
    console.print(table)
    if not all(row.running for row in rows):
        raise typer.Exit(1)
