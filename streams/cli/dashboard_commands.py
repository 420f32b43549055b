"""``agentstream dashboards list|show|export``: the declared and saved dashboards from the CLI.

Defaults come from ``topology.yaml``; a tenant's saved dashboards (``--tenant``) from the events
archive through ``QueryClient`` (the sink's query API when it runs). ``export ID --grafana``
writes Grafana provisioning files (``sinks.grafana``) that the optional ``grafana`` compose
profile loads. Exit codes as the other analytics commands: 2 bad input (unknown or broken
dashboard, a widget its cube cannot answer), 3 no query service reachable, 1 ClickHouse failed.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from schemas import default_registry
from schemas.settings import get_settings
from schemas.topology import Topology, TopologyError, load_topology
from sinks.dashboards import DASHBOARD_EVENTS, BrokenDashboardError, Entry, UnknownDashboard, catalogue, find, saved_dashboards
from sinks.grafana import GrafanaExportError, provisioning
from sinks.query_client import QueryClient
from sinks.query_errors import NoArchive, QueryError, QueryFailed, QueryUnavailable
from streams.cli.console import console, fail

dashboards_cli = typer.Typer(help="List, show and export dashboards (declared in topology.yaml, or saved by a tenant).", no_args_is_help=True)

TenantOption = typer.Option(None, "--tenant", "-t", help="Also the dashboards this tenant saved (read from the events archive).")
RoleOption = typer.Option(None, "--role", help="Only the dashboards this role may see.")


def _topology() -> Topology:
    try:
        return load_topology(get_settings().topology_path)
    except TopologyError as exc:
        fail(str(exc))


def _entries(topology: Topology, tenant: str | None, role: str | None) -> list[Entry]:
    saved: dict[tuple[str, str], Entry] = {}
    if tenant is not None:
        try:
            table, _ = QueryClient(get_settings()).events(tenant=tenant, types=list(DASHBOARD_EVENTS))
        except QueryUnavailable as exc:
            fail(f"cannot read the saved dashboards of {tenant}: {exc}", code=3)
        except NoArchive as exc:
            fail(str(exc), code=2)
        except QueryError as exc:
            fail(str(exc), code=2)
        except QueryFailed as exc:
            fail(str(exc), code=1)
        saved = saved_dashboards(table, default_registry())
    return catalogue(topology.dashboards, saved, tenant, role)


@dashboards_cli.command("list")
def list_dashboards(tenant: str | None = TenantOption, role: str | None = RoleOption, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The dashboards a tenant (or, without --tenant, everyone) gets; broken saved ones with the reason."""
    entries = _entries(_topology(), tenant, role)
    if as_json:
        typer.echo(json.dumps([e.summary() for e in entries], indent=2))
        return
    table = Table("id", "name", "origin", "widgets", "roles", "problem")
    for entry in entries:
        spec = entry.spec
        table.add_row(entry.id, spec.name if spec else "", entry.origin, str(len(spec.widgets)) if spec else "", ", ".join(spec.roles) if spec else "", entry.error or "")
    console.print(table)


@dashboards_cli.command()
def show(
    dashboard_id: str = typer.Argument(..., help="Dashboard id."),
    tenant: str | None = TenantOption,
    role: str | None = RoleOption,
    as_json: bool = typer.Option(False, "--json", help="Print the dashboard as JSON."),
) -> None:
    """One dashboard and its widgets (cube, measures, dimensions, granularity, range, refresh)."""
    try:
        spec = find(_entries(_topology(), tenant, role), dashboard_id)
    except (UnknownDashboard, BrokenDashboardError) as exc:
        fail(str(exc.args[0]), code=2)
    if as_json:
        typer.echo(json.dumps(spec.model_dump(mode="json"), indent=2))
        return
    table = Table("widget", "type", "title", "cube", "measures", "dimensions", "granularity", "range", "refresh", "filters", title=f"{spec.name} ({spec.id})")
    for w in spec.widgets:
        filters = "; ".join(f"{k}={','.join(v)}" for k, v in w.filters.items())
        table.add_row(w.id, w.type, w.title, w.cube, ", ".join(w.measures), ", ".join(w.dimensions), w.granularity, w.range, f"{w.refresh_s}s", filters)
    console.print(table)


@dashboards_cli.command()
def export(
    dashboard_id: str = typer.Argument(..., help="Dashboard id."),
    grafana: bool = typer.Option(False, "--grafana", help="Write Grafana provisioning files (data source, provider, dashboard)."),
    out: Path = typer.Option(Path("grafana/provisioning"), "--out", "-o", help="Provisioning directory to write into."),
    tenant: str | None = TenantOption,
    clickhouse_host: str = typer.Option("clickhouse", help="ClickHouse host as Grafana reaches it."),
    clickhouse_port: int = typer.Option(8123, help="ClickHouse HTTP port as Grafana reaches it."),
) -> None:
    """Write the dashboard as Grafana provisioning JSON; its queries are the cube SQL (scoped to --tenant if given)."""
    if not grafana:
        fail("say which format: --grafana (the only export there is)", code=2)
    topology = _topology()
    try:
        spec = find(_entries(topology, tenant, None), dashboard_id)
        files = provisioning(spec, {c.name: c for c in topology.cubes}, tenant, host=clickhouse_host, port=clickhouse_port)
    except (UnknownDashboard, BrokenDashboardError, GrafanaExportError) as exc:
        fail(str(exc.args[0]), code=2)
    for relative, text in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        console.print(f"wrote {path}")


@dashboards_cli.command()
def serve(port: int = typer.Option(6068, help="Port to serve the dashboards and the cube API on (AGENTSTREAM_WEB_HOST)."),) -> None:
    """Serve the dashboards (and the query API they use) from this process, against a ClickHouse server.

    With embedded ClickHouse the sink owns the data and already serves them on its port.
    """
    import threading

    from aiohttp import web

    from connectors.clickhouse import clickhouse_client
    from sinks.query_server import build_query_app

    settings = get_settings()
    if not settings.clickhouse_url.startswith(("http://", "https://")):
        fail(f"the sink serves the dashboards of embedded ClickHouse ({settings.clickhouse_url}) at its query port "
             f"(http://{settings.web_host}:{settings.sink_port}/dashboards); `dashboards serve` needs a ClickHouse server URL", code=2)
    _topology()
    try:
        client = clickhouse_client(settings)
    except Exception as exc:
        fail(f"cannot reach the ClickHouse server: {exc}", code=3)
    console.print(f"dashboards on http://{settings.web_host}:{port}/dashboards")
    web.run_app(build_query_app(settings, client, threading.Lock()), host=settings.web_host, port=port, print=None)
