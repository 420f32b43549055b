"""``agentstream sagas list|show``: the sagas of the Redis view (``streams.saga_view``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import typer
from rich.table import Table

from schemas.settings import get_settings
from streams.cli.console import console, fail

sagas_cli = typer.Typer(help="Inspect the sagas (task life cycles, tenant onboardings) and their pending deadlines.", no_args_is_help=True)


def _at(ms: int | float | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _redis() -> Any:
    from connectors.redis_store import redis_client  # lazily: `agentstream --help` stays fast

    return redis_client(get_settings())


def _next_deadline(doc: dict[str, Any]) -> str:
    pending = sorted(doc["deadlines"], key=lambda d: d["due_ms"])
    return f"{pending[0]['name']} at {_at(pending[0]['due_ms'])}" if pending else "-"


@sagas_cli.command("list")
def list_sagas(
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="Only this tenant's sagas."),
    state: str | None = typer.Option(None, "--state", "-s", help="Only sagas in this status (e.g. waiting_start, compensating, compensated, ready)."),
    limit: int = typer.Option(200, "--limit", help="At most this many, newest change first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON documents instead of a table."),
) -> None:
    """Sagas, newest change first, with their status, attempts and next deadline."""
    from redis.exceptions import RedisError

    from streams.saga_view import list_sagas as query

    try:
        docs = query(_redis(), tenant, state, limit)
    except RedisError as exc:
        fail(f"cannot reach Redis: {exc}")
    if as_json:
        typer.echo(json.dumps(docs, indent=2))
        return
    table = Table("tenant", "saga", "status", "attempts", "next deadline", "updated")
    for doc in docs:
        attempts = ", ".join(f"{k} {v}" for k, v in doc["attempts"].items() if v) or "-"
        table.add_row(doc["tenant_id"], doc["saga_id"], doc["status"], attempts, _next_deadline(doc), _at(doc["updated_at"] * 1000))
    console.print(table)
    console.print(f"{len(docs)} saga(s)")


@sagas_cli.command()
def show(
    saga_id: str = typer.Argument(..., help="Saga id, e.g. task:<task id> or onboarding:<tenant>."),
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="The saga's tenant (needed when several tenants have this id)."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON document."),
) -> None:
    """One saga: its steps with their times, pending deadlines and attempts (exit 1 if there is none)."""
    from redis.exceptions import RedisError

    from streams.saga_view import AmbiguousSagaId, SagaNotFound, get_saga

    try:
        doc = get_saga(_redis(), saga_id, tenant)
    except RedisError as exc:
        fail(f"cannot reach Redis: {exc}")
    except AmbiguousSagaId as exc:
        fail(str(exc), code=2)
    except SagaNotFound as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    head = Table("field", "value", title=f"saga {doc['saga_id']} of tenant {doc['tenant_id']}")
    head.add_row("type", doc["type"])
    head.add_row("status", doc["status"] + (" (terminal)" if doc["terminal"] else ""))
    for name, value in doc["attempts"].items():
        head.add_row(name, str(value))
    if doc.get("reason"):
        head.add_row("reason", str(doc["reason"]))
    console.print(head)
    steps = Table("at", "step", title="steps")
    for at_ms, what in doc["history"]:
        steps.add_row(_at(at_ms), what)
    console.print(steps)
    pending = Table("deadline", "due", "attempt", title="pending deadlines")
    for d in sorted(doc["deadlines"], key=lambda d: d["due_ms"]):
        pending.add_row(d["name"], _at(d["due_ms"]), str(d["attempt"]))
    console.print(pending if doc["deadlines"] else "no pending deadline")
