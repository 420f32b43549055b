"""``agentstream schemas list|check|register``: the Avro contracts in schemas/ and in the schema registry."""

from __future__ import annotations

import typer
from rich.table import Table

from pathlib import Path

from schemas import SCHEMA_ROOT, SchemaError, SchemaRegistry
from schemas.settings import get_settings
from streams.cli.console import console, fail

schemas_cli = typer.Typer(help="List, check and register the Avro schemas of commands and events.", no_args_is_help=True)


RootOption = typer.Option(SCHEMA_ROOT, "--schemas", help="Directory of the .avsc files.", file_okay=False)


def _load(root: Path = SCHEMA_ROOT) -> SchemaRegistry:
    try:
        return SchemaRegistry.load(root)
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
def check(
    offline: bool = typer.Option(False, "--offline", help="Only the local rules; do not ask the schema registry."),
    root: Path = RootOption,
) -> None:
    """Fail when a newer version of a schema cannot read data written with an older one.

    The local rules check every pair of versions in schemas/; then the schema registry judges
    every version it does not hold yet against what it holds, at the subject's declared level.
    """
    from schemas import wire

    registry = _load(root)
    problems = [str(p) for p in registry.check()]
    asked = ""
    if not offline:
        settings = get_settings()
        try:
            problems += [f"{p} (registry {settings.schema_registry_url})" for p in wire.check(registry, settings)]
        except SchemaError as exc:
            fail(str(exc))
        asked = f" and the schema registry at {settings.schema_registry_url}"
    for problem in problems:
        console.print(f"[red]incompatible[/] {problem}", highlight=False)
    if problems:
        raise typer.Exit(1)
    pairs = sum(len(registry.versions(n)) - 1 for n in registry.names())
    console.print(f"[green]compatible[/]: {len(registry.names())} schemas, {pairs} version upgrade(s) checked locally{asked}", highlight=False)


@schemas_cli.command()
def register(root: Path = RootOption) -> None:
    """Register every schema version under its subject (the record's full name), with the
    compatibility level that topology.yaml declares; an incompatible version is refused with the
    registry's reason. Idempotent. Workers do the same when they start."""
    from schemas import wire

    registry = _load(root)
    settings = get_settings()
    try:
        done = wire.register(registry, settings)
    except SchemaError as exc:
        fail(str(exc))
    table = Table("subject", "version", "id", "compatibility", title=f"schema registry {settings.schema_registry_url}")
    for reg in done:
        table.add_row(reg.subject, f"v{reg.version}", str(reg.schema_id), reg.compatibility)
    console.print(table)
    console.print(f"[green]registered[/]: {len(done)} schema versions of {len({r.subject for r in done})} subjects", highlight=False)
