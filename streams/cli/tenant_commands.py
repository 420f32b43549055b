"""``agentstream tenants list|show|usage|quota set`` and ``agentstream billing invoice``: tenant admin from the CLI.

Tenants and their usage are read from the command side's committed state (the aggregates
changelog, ``streams.tenant_admin``): exactly what the next command is decided against. Limits
are changed the only way anything changes, by a command (``SetTenantQuota``). Invoices are read
from the ClickHouse usage table through ``sinks.query_client.QueryClient`` (the sink's query API
when it runs). Exit codes: 2 for bad input, 1 when a command is rejected or a read fails, 3 when
no query service is reachable or a command is not answered in time.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from datetime import datetime, timezone
from typing import Any

import typer
from rich.table import Table

from schemas.settings import get_settings
from streams.cli.console import console, fail

tenants_cli = typer.Typer(help="Tenants: list, show, usage against limits, and set quotas.", no_args_is_help=True)
quota_cli = typer.Typer(help="Change a tenant's limits (produces SetTenantQuota).", no_args_is_help=True)
billing_cli = typer.Typer(help="Billing: a tenant's invoice for a month, from the usage table.", no_args_is_help=True)
tenants_cli.add_typer(quota_cli, name="quota")

INVOICE_FORMATS = ("table", "csv", "json")


def _check_tenant(tenant: str) -> None:
    from schemas.messages import EnvelopeError, check_tenant_id

    try:
        check_tenant_id(tenant)
    except EnvelopeError as exc:
        fail(str(exc), code=2)


def _context() -> tuple[Any, Any, Any]:
    from schemas.topology import TopologyError, load_topology

    settings = get_settings()
    try:
        topology = load_topology(settings.topology_path)
    except TopologyError as exc:
        fail(str(exc))
    if topology.quotas is None:
        fail("topology.yaml declares no quotas section (plans)", code=2)
    return settings, topology, topology.quotas


def _read(settings: Any, topology: Any, tenant: str | None) -> dict[str, Any]:
    from confluent_kafka import KafkaException

    from streams.tenant_admin import read_tenants

    try:
        return read_tenants(settings, topology, tenant)
    except (KafkaException, TimeoutError) as exc:
        fail(f"cannot read the tenants' state: {exc}")


def _money(micros: int) -> str:
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole:,}.{frac:06d}"


@tenants_cli.command("list")
def list_tenants(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Every tenant the command side knows (created, or with a quota row), with plan and usage in brief."""
    settings, topology, plans = _context()
    found = _read(settings, topology, None)
    now = datetime.now(timezone.utc)
    rows = [
        {
            "tenant": t.tenant_id, "name": t.state.name if t.state else "", "plan": t.quota.plan,
            "onboarding": t.state.onboarding if t.state else "", "agents": t.quota.agents,
            "concurrent_tasks": t.quota.concurrent_tasks, "spent_micros": t.quota.spent_in(int(now.timestamp() * 1000)),
        }
        for t in found.values()
    ]
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    table = Table("tenant", "name", "plan", "onboarding", "agents", "tasks running", "spent this month", title="tenants")
    for r in rows:
        table.add_row(r["tenant"], r["name"], r["plan"], r["onboarding"], str(r["agents"]), str(r["concurrent_tasks"]), _money(r["spent_micros"]))
    console.print(table)
    console.print(f"{len(rows)} tenant(s)")


@tenants_cli.command("show")
def show(
    tenant: str = typer.Argument(..., help="Tenant id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """One tenant: its configuration, plan, limits (and which it set itself) and usage."""
    _check_tenant(tenant)
    settings, topology, plans = _context()
    info = _read(settings, topology, tenant).get(tenant)
    if info is None:
        fail(f"no tenant '{tenant}' (it has sent no command that was accepted)")
    now = datetime.now(timezone.utc)
    state = info.state.model_dump(mode="json") if info.state else None
    usage = info.usage(plans, now)
    if as_json:
        sys.stdout.write(json.dumps({"tenant": tenant, "version": info.version, "state": state, "plan": info.quota.plan,
                                     "overrides": info.quota.overrides, "usage": usage}) + "\n")
        return
    about = Table("field", "value", title=f"tenant {tenant}", show_header=False)
    if state is None:
        about.add_row("created", "no (commands were accepted under the free plan)")
    else:
        for name in ("name", "region", "plan", "onboarding", "settings", "grants"):
            about.add_row(name, json.dumps(state[name]) if isinstance(state[name], (dict, list)) else str(state[name]))
        about.add_row("version", str(info.version))
    console.print(about)
    console.print(_usage_table({tenant: usage}, {tenant: info.quota.overrides}, f"limits and usage of {tenant} ({info.quota.plan} plan)"))


def _usage_table(usage: dict[str, list[dict[str, Any]]], overrides: dict[str, dict[str, int]], title: str) -> Table:
    table = Table("tenant", "quota", "usage", "limit", "used", title=title)
    for tenant, rows in usage.items():
        for r in rows:
            share = "-" if r["percent"] is None else f"{r['percent']:.1f}%"
            style = "red" if r["percent"] is not None and r["percent"] >= 100 else ("yellow" if r["percent"] is not None and r["percent"] >= 80 else "")
            money = r["quota"] == "monthly_budget_micros"
            limit = (_money(r["limit"]) if money else f"{r['limit']:,}") + (" *" if r["quota"] in overrides.get(tenant, {}) else "")
            table.add_row(tenant, r["quota"], _money(r["usage"]) if money else f"{r['usage']:,}", limit, share, style=style)
    table.caption = "* set for the tenant (SetTenantQuota); others from its plan. Money in units of the billing currency."
    return table


@tenants_cli.command("usage")
def usage(
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="Only this tenant (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Usage against every limit (agents, concurrent tasks, hourly rate, storage, monthly budget)."""
    if tenant is not None:
        _check_tenant(tenant)
    settings, topology, plans = _context()
    found = _read(settings, topology, tenant)
    if tenant is not None and tenant not in found:
        fail(f"no tenant '{tenant}' (it has sent no command that was accepted)")
    now = datetime.now(timezone.utc)
    report = {t: info.usage(plans, now) for t, info in found.items()}
    if as_json:
        sys.stdout.write(json.dumps({"at": now.isoformat(), "tenants": report}) + "\n")
        return
    console.print(_usage_table(report, {t: i.quota.overrides for t, i in found.items()}, f"usage against limits at {now:%Y-%m-%d %H:%M:%S} UTC"))


@quota_cli.command("set")
def quota_set(
    tenant: str = typer.Option(..., "--tenant", "-t", help="Tenant id."),
    max_agents: int | None = typer.Option(None, "--max-agents", min=0, help="Agents the tenant may create."),
    max_concurrent_tasks: int | None = typer.Option(None, "--max-concurrent-tasks", min=0, help="Tasks holding a slot at once."),
    api_rate_per_hour: int | None = typer.Option(None, "--api-rate-per-hour", min=0, help="Accepted commands in any hour."),
    storage_limit_bytes: int | None = typer.Option(None, "--storage-limit-bytes", min=0, help="Bytes of the tenant's events."),
    monthly_budget_micros: int | None = typer.Option(None, "--monthly-budget-micros", min=0, help="Spent + reserved task cost per month, micro-units."),
    task_max_cost_micros: int | None = typer.Option(None, "--task-max-cost-micros", min=0, help="Reservation of an AssignTask without max_cost."),
    task_start_within_s: int | None = typer.Option(None, "--task-start-within-s", min=1, help="Seconds an agent has to start a task."),
    timeout: float = typer.Option(30.0, help="Seconds to wait for the result."),
) -> None:
    """Set some of a tenant's limits (the others keep their value): sends SetTenantQuota and waits for its result."""
    from streams.client import CommandTimeout, send_command
    from schemas.messages import CommandAccepted

    _check_tenant(tenant)
    values = {
        "max_agents": max_agents, "max_concurrent_tasks": max_concurrent_tasks, "api_rate_per_hour": api_rate_per_hour,
        "storage_limit_bytes": storage_limit_bytes, "monthly_budget_micros": monthly_budget_micros,
        "task_max_cost_micros": task_max_cost_micros, "task_start_within_s": task_start_within_s,
    }
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        fail("give at least one limit (e.g. --max-agents 10)", code=2)
    try:
        outcome = send_command(get_settings(), "SetTenantQuota", tenant, given, wait=True, timeout=timeout)
    except CommandTimeout as exc:
        fail(str(exc), code=3)
    if isinstance(outcome, CommandAccepted):
        console.print(f"[green]accepted[/] {outcome.command_id}: {tenant} limits set: " + ", ".join(f"{k}={v}" for k, v in given.items()))
    else:
        fail(f"rejected: {outcome.code}: {outcome.message}")  # type: ignore[union-attr]


@billing_cli.command("invoice")
def invoice_command(
    tenant: str = typer.Option(..., "--tenant", "-t", help="Tenant id."),
    month: str = typer.Option(..., "--month", "-m", help="UTC month, YYYY-MM."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json."),
) -> None:
    """The month's invoice of a tenant: a line per metric and the total, in integer micro-units."""
    from sinks.billing_usage import check_month
    from sinks.query_client import QueryClient
    from sinks.query_errors import QueryError, QueryFailed, QueryUnavailable
    from streams.tenant_admin import read_invoice

    _check_tenant(tenant)
    if fmt not in INVOICE_FORMATS:
        fail(f"unknown format {fmt!r} (use {', '.join(INVOICE_FORMATS)})", code=2)
    try:
        check_month(month)
    except ValueError as exc:
        fail(str(exc), code=2)
    settings, topology, _ = _context()
    try:
        bill = read_invoice(QueryClient(settings), topology, tenant, month)
    except LookupError as exc:
        fail(str(exc), code=2)
    except QueryUnavailable as exc:
        fail(str(exc), code=3)
    except (QueryError, QueryFailed) as exc:
        fail(str(exc))
    if fmt == "json":
        sys.stdout.write(bill.model_dump_json() + "\n")
        return
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["tenant", "month", "metric", "unit", "quantity", "records", "amount_micros"])
        for line in bill.lines:
            writer.writerow([tenant, month, line.metric, line.unit, line.quantity, line.records, line.amount_micros])
        writer.writerow([tenant, month, "total", "micros", "", "", bill.total_micros])
        sys.stdout.write(out.getvalue())
        return
    table = Table("metric", "unit", "quantity", "records", "amount (micros)", "amount", title=f"invoice {tenant} {month}")
    for line in bill.lines:
        table.add_row(line.metric, line.unit, f"{line.quantity:,}", f"{line.records:,}", f"{line.amount_micros:,}", _money(line.amount_micros))
    table.add_row("total", "", "", "", f"{bill.total_micros:,}", _money(bill.total_micros), style="bold")
    console.print(table)
