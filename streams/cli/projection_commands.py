"""``agentstream projections list|status|rebuild`` and ``agentstream agents show|list``: the Redis read models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.cli.console import console, fail
from schemas.settings import get_settings

if TYPE_CHECKING:
    import redis

projections_cli = typer.Typer(help="Inspect and rebuild the read models (Redis projections of events.platform).", no_args_is_help=True)
agents_cli = typer.Typer(help="Query the agent read models of one tenant.", no_args_is_help=True)

TenantOption = typer.Option(..., "--tenant", "-t", help="Tenant id: queries never cross tenants.")


def _redis() -> "redis.Redis":
    from connectors.redis_store import redis_client  # lazily: `agentstream --help` stays fast

    return redis_client(get_settings())


@projections_cli.command("list")
def list_projections() -> None:
    """The projections, the read models each maintains, and the live generation."""
    from redis.exceptions import RedisError

    from streams.projections import PROJECTIONS
    from streams.queries import live_generation

    try:
        gen = live_generation(_redis())
    except RedisError as exc:
        fail(f"cannot reach Redis: {exc}")
    table = Table("projection", "read models", "live generation", "agent")
    for name, models in PROJECTIONS.items():
        table.add_row(name, ", ".join(models), str(gen) if gen is not None else "none yet", "projector")
    console.print(table)


@projections_cli.command()
def status() -> None:
    """Per partition of events.platform: the read models' checkpoint, the end offset and the lag."""
    from redis.exceptions import RedisError

    from streams.projection_rebuild import RebuildError, lag

    try:
        gen, rows = lag(get_settings())
    except (RedisError, RebuildError) as exc:
        fail(str(exc))
    table = Table("partition", "checkpoint", "end offset", "lag (events)", title=f"read_models, generation {gen if gen is not None else 'none yet'}")
    for row in rows:
        pending = str(row.pending) if row.exact else f">= {row.pending}"
        style = "green" if row.pending == 0 else "yellow"
        table.add_row(str(row.partition), "-" if row.checkpoint < 0 else str(row.checkpoint), str(row.end_offset), f"[{style}]{pending}[/]")
    console.print(table)
    total = sum(r.pending for r in rows)
    console.print("[green]up to date[/]" if total == 0 else f"[yellow]{total} event(s) not yet projected[/]")


@projections_cli.command()
def rebuild(
    name: str = typer.Argument(..., help="Projection (read_models) or one of its read models (agent_summary, tenant_overview)."),
    from_: str | None = typer.Option(
        None, "--from", help="ISO timestamp (UTC if no offset): build only from events since then, instead of from the beginning."
    ),
) -> None:
    """Replay events.platform into a new generation and swap it in atomically (readers never see a half-built model)."""
    from redis.exceptions import RedisError

    from streams.projections import PROJECTIONS, resolve_projection
    from streams.projection_rebuild import RebuildError, rebuild as run_rebuild

    try:
        projection = resolve_projection(name)
    except KeyError:
        known = ", ".join(sorted({*PROJECTIONS, *(m for ms in PROJECTIONS.values() for m in ms)}))
        fail(f"unknown projection '{name}': known are {known}", code=2)
    since = None
    if from_ is not None:
        try:
            since = datetime.fromisoformat(from_)
        except ValueError as exc:
            fail(f"--from is not an ISO timestamp: {exc}", code=2)
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
    with Progress(TextColumn("[bold]replaying[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("events"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("replay", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            report = run_rebuild(get_settings(), since, progress)
        except (RebuildError, RedisError) as exc:
            fail(f"rebuild failed: {exc}")
    table = Table("", "", title=f"rebuilt {projection}" + (f" from {since.isoformat()}" if since else " from the beginning"))
    table.add_row("generation", f"{report.old_generation} -> {report.new_generation}")
    table.add_row("events replayed", str(report.events_replayed))
    table.add_row("events skipped (unreadable)", str(report.events_rejected))
    table.add_row("tenants", str(report.tenants))
    table.add_row("agents", str(report.agents))
    table.add_row("old keys deleted", str(report.keys_deleted))
    table.add_row("seconds", f"{report.seconds:.1f}")
    console.print(table)


def _summary_table(summaries: list) -> Table:
    table = Table("agent", "status", "name", "type", "region", "assigned", "completed", "failed", "open", "cost", "last activity", "version")
    for s in summaries:
        table.add_row(
            s.agent_id, s.status, s.name, s.agent_type, s.region, str(s.tasks_assigned), str(s.tasks_completed), str(s.tasks_failed),
            str(s.open_tasks), f"{s.total_cost:.4f}", s.last_activity or "-", str(s.version),
        )  # fmt: skip
    return table


@agents_cli.command()
def show(agent_id: str = typer.Argument(..., help="Agent id."), tenant: str = TenantOption) -> None:
    """The summary of one agent of the tenant (exit 1 if the tenant has no such agent)."""
    from redis.exceptions import RedisError

    from streams.queries import get_agent_summary

    try:
        summary = get_agent_summary(_redis(), tenant, agent_id)
    except RedisError as exc:
        fail(f"cannot reach Redis: {exc}")
    if summary is None:
        fail(f"tenant '{tenant}' has no agent '{agent_id}' in the read models")
    table = Table("field", "value", title=f"agent {agent_id} of tenant {tenant}")
    for field, value in summary.model_dump(mode="json").items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        table.add_row(field, "-" if value is None else str(value))
    console.print(table)


@agents_cli.command("list")
def list_agents_command(tenant: str = TenantOption) -> None:
    """Every agent of the tenant, one row each."""
    from redis.exceptions import RedisError

    from streams.queries import list_agents

    try:
        summaries = list_agents(_redis(), tenant)
    except RedisError as exc:
        fail(f"cannot reach Redis: {exc}")
    if not summaries:
        console.print(f"tenant '{tenant}' has no agents in the read models")
        return
    console.print(_summary_table(summaries))
