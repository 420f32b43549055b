"""``agentstream schemas list|check``: the Avro contracts in schemas/."""

from __future__ import annotations

import typer
from rich.table import Table

from schemas import SchemaError, SchemaRegistry
from streams.cli.console import console, fail

schemas_cli = typer.Typer(help="List and check the Avro schemas of commands and events.", no_args_is_help=True)


def _load() -> SchemaRegistry:
    try:
        return SchemaRegistry.load()
    except SchemaError as exc:
        fail(str(exc))


@schemas_cli.command("list")
def list_() -> None:
    """Every schema with its kind, versions and fields."""
    registry = _load()
    table = Table("schema", "kind", "versions", "fields (latest)")
    for name in registry.names():
        latest = registry.get(name)
        versions = ", ".join(f"v{v.version}" for v in registry.versions(name))
        table.add_row(name, registry.kind(name), versions, ", ".join(f["name"] for f in latest.raw["fields"]))
    console.print(table)


@schemas_cli.command()
def check() -> None:
    """Fail when a newer version of a schema cannot read data written with an older one."""
    registry = _load()
    problems = registry.check()
    for problem in problems:
        console.print(f"[red]incompatible[/] {problem}")
    if problems:
        raise typer.Exit(1)
    pairs = sum(len(registry.versions(n)) - 1 for n in registry.names())
    console.print(f"[green]compatible[/]: {len(registry.names())} schemas, {pairs} version upgrade(s) checked")
