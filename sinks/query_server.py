"""The sink process's query API: cubes, read-only SQL and archive reads over HTTP (aiohttp).

Why an HTTP API: embedded ClickHouse (chdb) lets only ONE process open a data path, and the
ClickHouse sink process (``agentstream sink``) owns it while it runs. So that process serves
the cubes and read-only SQL to the CLI, the worker and dashboards over HTTP
(``build_query_app``, on ``settings.web_host:settings.sink_port``); ``sinks.query_client`` is
the other end.

Routes:

- ``GET /health`` -> ``{"ok": true}``
- ``GET /cubes`` -> ``{"cubes": [{name, description, dimensions, measures, rollups}, ...]}``
- ``GET /cubes/{name}?measures=a,b&dimensions=c,d&granularity=minute|hour|day&from=ISO&to=ISO``
  ``&tenant=T&filter.<dim>=v1,v2&format=json|csv|parquet`` -> JSON ``{"columns", "rows", "rollup"}``
  (or CSV / Parquet; the roll-up read is in the ``X-Cube-Rollup`` header). Values are bound as
  server-side parameters (``sinks.cube_query``); with ``tenant`` only that tenant's rows come back.
- ``POST /sql`` ``{"sql": "SELECT ...", "format": "json|csv|parquet"}`` -> the result; raw SQL
  by design (an operator tool) but read-only (``sinks.sql_guard``).
- ``GET /events?tenant=T&stream_id=S&from_version=N&types=A,B&since=ISO&format=parquet|json|csv``
  -> archived events (``sinks.events_archive.read_archive``; every filter optional), and the
  archive's position per partition in the ``X-Archive-Positions`` header (JSON). Parquet carries
  the events' Avro bytes (``value``); JSON and CSV leave them out. 404 when no archive is declared.

Errors are ``{"error": ...}`` with the status ``sinks.query_errors.http_status`` gives: bad input
(cube, measure, dimension, time, format, SQL ClickHouse refuses) 400; unknown cube or no archive
404; ClickHouse failing on a well-formed query 500.

The API has no authentication: bind it to a loopback or private address (``web_host``), like
the worker's web server. ``tenant`` scopes a cube query; it does not authenticate a caller.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable, Mapping

import pyarrow as pa
from aiohttp import web
from clickhouse_connect.driver.client import Client

from schemas.settings import Settings
from schemas.topology import load_topology
from sinks.dashboard_pages import add_dashboard_routes
from sinks.events_archive import positions_header
from sinks.query_client import LocalQueries
from sinks.query_errors import QUERY_ERRORS, QueryError, http_status
from sinks.query_params import describe_cube
from sinks.table_formats import CONTENT_TYPES, check_format, encode

log = logging.getLogger(__name__)


def error_response(exc: Exception) -> web.Response:
    """``{"error": str(exc)}`` with the HTTP status of ``exc`` (``http_status``)."""
    return web.json_response({"error": str(exc)}, status=http_status(exc))


async def _run(what: str, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)`` in a worker thread, or the error response its query error maps to."""
    try:
        return await asyncio.to_thread(call, *args)
    except QUERY_ERRORS as exc:
        if http_status(exc) >= 500:
            log.warning("%s failed: %s", what, exc)
        return error_response(exc)


def _bad_format(fmt: Any) -> web.Response | None:
    """The 400 response for an unknown answer format, or None when ``fmt`` is one of ours."""
    try:
        check_format(fmt)
    except QueryError as exc:
        return error_response(exc)
    return None


def _respond(table: pa.Table, fmt: str, headers: Mapping[str, str] | None = None, **extra: Any) -> web.Response:
    return web.Response(body=encode(table, fmt, **extra), headers={"Content-Type": CONTENT_TYPES[fmt], **(headers or {})})


def build_query_app(settings: Settings, client: Client, lock: threading.Lock) -> web.Application:
    """The sink process's query API (routes in the module docstring) over ``client``.

    Every use of ``client`` holds ``lock`` and runs in a worker thread, so the event loop (and
    the sink's inserts, which take the same lock) keep going while a query runs. Cubes are those
    of ``settings.topology_path`` when the app is built.
    """
    local = LocalQueries(client, lock, load_topology(settings.topology_path))
    cubes = local.cubes

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def list_cubes(request: web.Request) -> web.Response:
        return web.json_response({"cubes": [describe_cube(c) for c in cubes.values()]})

    async def query_cube(request: web.Request) -> web.Response:
        fmt = request.query.get("format", "json")
        if (bad := _bad_format(fmt)) is not None:
            return bad
        outcome = await _run("cube query", local.cube_table, request.match_info["name"], request.query)
        if isinstance(outcome, web.Response):
            return outcome
        table, rollup = outcome
        return _respond(table, fmt, {"X-Cube-Rollup": rollup}, rollup=rollup)

    async def query_sql(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return error_response(QueryError('the body must be JSON: {"sql": "SELECT ...", "format": "json|csv|parquet"}'))
        if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
            return error_response(QueryError('the body must be a JSON object with "sql" (text) and optional "format"'))
        fmt = body.get("format", "json")
        if (bad := _bad_format(fmt)) is not None:
            return bad
        outcome = await _run("sql", local.sql_table, body["sql"])
        return outcome if isinstance(outcome, web.Response) else _respond(outcome, fmt)

    async def archived_events(request: web.Request) -> web.Response:
        params = dict(request.query)
        fmt = params.get("format", "parquet")
        if (bad := _bad_format(fmt)) is not None:
            return bad
        outcome = await _run("archive read", local.events, params)
        if isinstance(outcome, web.Response):
            return outcome
        table, positions = outcome
        if fmt != "parquet":
            table = table.drop_columns(["value"])
        return _respond(table, fmt, {"X-Archive-Positions": positions_header(positions)}, positions={str(p): o for p, o in positions.items()})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/events", archived_events)
    app.router.add_get("/cubes", list_cubes)
    app.router.add_get("/cubes/{name}", query_cube)
    app.router.add_post("/sql", query_sql)
    add_dashboard_routes(app, settings, client, lock)  # /dashboards pages (sinks/dashboard_pages.py)
    return app
