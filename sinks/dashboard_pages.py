"""The dashboard routes of the sink's query app (``add_dashboard_routes``); the pages are built by ``sinks.dashboards``.

- ``GET /dashboards?tenant=T&role=R`` -> the list page (``format=json``: ``{"dashboards": [...]}``).
- ``GET /dashboards/{id}?tenant=T&role=R&range=6h|from=ISO&to=ISO`` -> the dashboard page
  (``format=json``: the dashboard itself). 404 for an id the tenant does not have, 422 for a
  saved dashboard that cannot be read, 400 for a bad parameter; as a page that says so.
- ``GET /static/plotly.min.js`` (the bundle inside the installed ``plotly`` package) and
  ``GET /static/dashboard.js``: cacheable, so a second page load reads them from the browser cache.

Saved dashboards come from the events archive this process writes (``read_archive`` of the
tenant's ``DashboardSaved``/``DashboardDeleted`` events), read per request under the shared
ClickHouse lock in a worker thread, like every query of the app. ``tenant`` scopes what a page
lists and queries; like the rest of the query API it does not authenticate (bind to loopback).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from typing import Any

from aiohttp import web
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from schemas import default_registry
from schemas.dashboards import DashboardError, range_seconds
from schemas.settings import Settings
from schemas.topology import load_topology
from sinks.dashboards import (
    DASHBOARD_EVENTS,
    STATIC_DIR,
    BrokenDashboardError,
    Entry,
    UnknownDashboard,
    catalogue,
    find,
    plotly_bundle,
    render_dashboard,
    render_error,
    render_list,
    saved_dashboards,
)
from sinks.events_archive import archive_table, read_archive

log = logging.getLogger(__name__)
_CACHE = {"Cache-Control": "public, max-age=86400"}
_PARAMS = {"tenant", "role", "format", "range", "from", "to"}


class DashboardRequestError(ValueError):
    """A bad parameter of a dashboard request (unknown name, empty tenant, malformed time or range)."""


def _checked(query: Any) -> dict[str, str | None]:
    unknown = sorted(set(query) - _PARAMS)
    if unknown:
        raise DashboardRequestError(f"unknown parameter(s) {', '.join(unknown)} (known: {', '.join(sorted(_PARAMS))})")
    values: dict[str, str | None] = {name: query.get(name) for name in _PARAMS}
    for name in ("tenant", "role"):
        if values[name] is not None and not values[name].strip():
            raise DashboardRequestError(f"{name} must not be empty")
    if values["format"] not in (None, "html", "json"):
        raise DashboardRequestError(f"format must be html or json, got {values['format']!r}")
    if values["range"]:
        try:
            range_seconds(values["range"])
        except DashboardError as exc:
            raise DashboardRequestError(str(exc)) from None
    for name in ("from", "to"):
        if values[name]:
            try:
                dt.datetime.fromisoformat(values[name].replace("Z", "+00:00"))
            except ValueError:
                raise DashboardRequestError(f"{name} {values[name]!r} is not an ISO-8601 time (e.g. 2025-01-31T12:00:00Z)") from None
    return values


def add_dashboard_routes(app: web.Application, settings: Settings, client: Client, lock: threading.Lock) -> None:
    """Add the dashboard pages, their JSON and their static scripts to the query ``app``."""
    topology = load_topology(settings.topology_path)
    defaults = list(topology.dashboards)
    archive = archive_table(topology)
    registry = default_registry()
    bundle = plotly_bundle()

    def entries(tenant: str | None, role: str | None) -> list[Entry]:
        """The catalogue; when the archive cannot be read, the defaults and a broken entry saying why."""
        saved: dict[tuple[str, str], Entry] = {}
        if tenant is not None and archive is not None:
            try:
                with lock:
                    table, _ = read_archive(client, archive, tenant=tenant, types=list(DASHBOARD_EVENTS))
            except DatabaseError as exc:  # the defaults still work; the saved ones say why they are missing
                log.warning("dashboards: reading saved dashboards failed: %s", exc)
                saved = {(tenant, "(saved)"): Entry("(saved)", "saved", None, f"saved dashboards cannot be read now: {exc}")}
            else:
                saved = saved_dashboards(table, registry)
        return catalogue(defaults, saved, tenant, role)

    async def load(request: web.Request) -> tuple[dict[str, str | None], list[Entry]] | web.Response:
        wants_json = request.query.get("format") == "json"
        try:
            params = _checked(request.query)
        except DashboardRequestError as exc:
            return _fail(400, str(exc), wants_json)
        return params, await asyncio.to_thread(entries, params["tenant"], params["role"])

    async def list_page(request: web.Request) -> web.Response:
        loaded = await load(request)
        if isinstance(loaded, web.Response):
            return loaded
        params, found = loaded
        if params["format"] == "json":
            return web.json_response({"tenant": params["tenant"], "dashboards": [e.summary() for e in found]})
        return web.Response(text=render_list(found, params["tenant"], params["role"]), content_type="text/html")

    async def dashboard_page(request: web.Request) -> web.Response:
        loaded = await load(request)
        if isinstance(loaded, web.Response):
            return loaded
        params, found = loaded
        wants_json = params["format"] == "json"
        try:
            spec = find(found, request.match_info["id"])
        except UnknownDashboard as exc:
            return _fail(404, str(exc), wants_json)
        except BrokenDashboardError as exc:
            return _fail(422, str(exc), wants_json)
        if wants_json:
            return web.json_response({"tenant": params["tenant"], "dashboard": spec.model_dump(mode="json")})
        page = render_dashboard(spec, params["tenant"], params["role"], params["from"], params["to"], params["range"])
        return web.Response(text=page, content_type="text/html")

    async def plotly_js(request: web.Request) -> web.FileResponse:
        return web.FileResponse(bundle, headers={**_CACHE, "Content-Type": "application/javascript"})

    async def dashboard_js(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "dashboard.js", headers={"Cache-Control": "no-cache", "Content-Type": "application/javascript"})

    app.router.add_get("/dashboards", list_page)
    app.router.add_get("/dashboards/{id}", dashboard_page)
    app.router.add_get("/static/plotly.min.js", plotly_js)
    app.router.add_get("/static/dashboard.js", dashboard_js)


def _fail(status: int, message: str, as_json: bool) -> web.Response:
    if as_json:
        return web.json_response({"error": message}, status=status)
    return web.Response(text=render_error(status, message), status=status, content_type="text/html")
