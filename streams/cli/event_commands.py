"""``agentstream events stream|by-type``: read the event store from the CLI.

Reads go through ``streams.event_store.EventStore``: the ClickHouse events archive (through the
running sink) plus the Kafka tail after it, or Kafka alone when no sink answers or with
``--kafka-only``. Exit codes: 2 for bad input (unknown event type, bad time or tenant), 1 when
Kafka cannot be read.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any, Coroutine

import typer
from rich.table import Table

from streams.cli.console import console, fail
from schemas.settings import get_settings

if TYPE_CHECKING:
    from streams.event_store import EventStore, StoredEvent

events_cli = typer.Typer(help="Read the event store: one stream, or events by type (archive + Kafka tail).", no_args_is_help=True)

FORMATS = ("table", "json")
#: Characters of an event's data shown in the table (``--format json`` shows all).
DATA_WIDTH = 100


def _store(kafka_only: bool) -> "EventStore":
    from streams.event_store import EventStore

    return EventStore(get_settings(), use_archive=not kafka_only)


def _check_tenant(tenant: str) -> None:
    from schemas.messages import EnvelopeError, check_tenant_id

    try:
        check_tenant_id(tenant)
    except EnvelopeError as exc:
        fail(str(exc), code=2)


def _read(call: Coroutine[Any, Any, list["StoredEvent"]]) -> list["StoredEvent"]:
    from aiokafka.errors import KafkaError

    try:
        return asyncio.run(call)
    except KafkaError as exc:
        fail(f"cannot read events.platform: {exc}")


def _show(events: list["StoredEvent"], fmt: str, via: str | None, title: str) -> None:
    if fmt == "json":
        rows = [
            {
                "type": e.type, "tenant_id": e.meta.tenant_id, "stream_id": e.meta.stream_id, "version": e.meta.version,
                "occurred_at": e.meta.occurred_at.isoformat(), "event_id": e.meta.event_id, "command_id": e.meta.command_id,
                "partition": e.partition, "offset": e.offset, "data": e.data,
            }
            for e in events
        ]
        sys.stdout.write(json.dumps(rows, default=str) + "\n")
        return
    table = Table("stream", "version", "type", "occurred at (UTC)", "event id", "data", title=title)
    for e in events:
        data = json.dumps(e.data, default=str)
        table.add_row(e.meta.stream_id, str(e.meta.version), e.type, e.meta.occurred_at.isoformat(), e.meta.event_id,
                      data if len(data) <= DATA_WIDTH else data[: DATA_WIDTH - 1] + "…")
    console.print(table)
    console.print(f"{len(events)} event(s), read via {via}")


def _format(fmt: str) -> str:
    if fmt not in FORMATS:
        fail(f"unknown format {fmt!r} (use {', '.join(FORMATS)})", code=2)
    return fmt


@events_cli.command("stream")
def stream(
    stream_id: str = typer.Argument(..., help="Stream id, e.g. agent-a1, task-t7 or tenant."),
    tenant: str = typer.Option(..., "--tenant", "-t", help="Tenant id: a read never crosses tenants."),
    from_version: int = typer.Option(0, "--from-version", min=0, help="Only events with a higher version."),
    fmt: str = typer.Option("table", "--format", "-f", help="table or json (every field, data in full)."),
    kafka_only: bool = typer.Option(False, "--kafka-only", help="Do not use the ClickHouse archive: scan Kafka."),
) -> None:
    """The events of one stream after --from-version, in version order."""
    _format(fmt)
    _check_tenant(tenant)
    store = _store(kafka_only)
    events = _read(store.get_events(tenant, stream_id, from_version))
    _show(events, fmt, store.last_read, f"{tenant} / {stream_id}")


@events_cli.command("by-type")
def by_type(
    types: str = typer.Argument(..., help="Event types, comma-separated, e.g. TaskFailed,AgentStopped."),
    since: str = typer.Option(..., "--since", help="ISO-8601 time (UTC if no offset): events appended at or after it."),
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="Only this tenant's events (default: all tenants)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table or json (every field, data in full)."),
    kafka_only: bool = typer.Option(False, "--kafka-only", help="Do not use the ClickHouse archive: scan Kafka."),
) -> None:
    """Events of the given types appended since --since, in append order."""
    from schemas import default_registry
    from sinks.query_errors import QueryError
    from sinks.query_params import parse_time

    _format(fmt)
    wanted = [t.strip() for t in types.split(",") if t.strip()]
    known = default_registry().names("event")
    unknown = [t for t in wanted if t not in known]
    if not wanted or unknown:
        fail(f"unknown event type(s) {', '.join(unknown) or '(none given)'} (known: {', '.join(sorted(known))})", code=2)
    try:
        moment = parse_time(since, "--since")
    except QueryError as exc:
        fail(str(exc), code=2)
    if tenant is not None:
        _check_tenant(tenant)
    store = _store(kafka_only)
    events = _read(store.get_events_by_type(wanted, moment, tenant_id=tenant))
    _show(events, fmt, store.last_read, f"{', '.join(wanted)} since {moment.isoformat()}" + (f" ({tenant})" if tenant else ""))
