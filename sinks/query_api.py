"""Queries for everyone: the sink process's HTTP query API and the client that finds a way to ClickHouse.

Why an HTTP API: embedded ClickHouse (chdb) lets only ONE process open a data path, and the
ClickHouse sink process (``agentstream sink``) owns it while it runs. So that process serves
the cubes and read-only SQL to the CLI, the worker and dashboards over HTTP
(``build_query_app``, on ``settings.web_host:settings.sink_port``). ``QueryClient`` picks the
way in this order:

1. the sink answers ``GET /health`` on ``sink_port`` -> HTTP;
2. ``settings.clickhouse_url`` is an http(s) ClickHouse server -> query it directly;
3. embedded chdb -> open the path in this process (works only when no other process holds it),
   else ``QueryUnavailable`` telling to start ``agentstream sink`` (or fix its port).

Every way runs the same code (``Cube`` for cubes, ``run_sql`` for SQL) and yields a
``pyarrow.Table``; over HTTP the table travels as Parquet, so types survive.

Routes of the app:

- ``GET /health`` -> ``{"ok": true}``
- ``GET /cubes`` -> ``{"cubes": [{name, description, dimensions, measures, rollups}, ...]}``
- ``GET /cubes/{name}?measures=a,b&dimensions=c,d&granularity=minute|hour|day&from=ISO&to=ISO``
  ``&tenant=T&filter.<dim>=v1,v2&format=json|csv|parquet`` -> JSON ``{"columns", "rows", "rollup"}``
  (or CSV / Parquet; the roll-up read is in the ``X-Cube-Rollup`` header). Values are bound as
  server-side parameters (``sinks.cube_query``); with ``tenant`` only that tenant's rows come back.
- ``POST /sql`` ``{"sql": "SELECT ...", "format": "json|csv|parquet"}`` -> the result.
- ``GET /events?tenant=T&stream_id=S&from_version=N&types=A,B&since=ISO&format=parquet|json|csv``
  -> archived events (``sinks.events_archive.read_archive``; every filter optional), and the
  archive's position per partition in the ``X-Archive-Positions`` header (JSON). Parquet carries
  the events' Avro bytes (``value``); JSON and CSV leave them out. 404 when no archive is declared.

``/sql`` is raw SQL by design (an operator tool) but read-only: the text must be one SELECT
(``WITH``/``UNION`` allowed; no ``FORMAT`` clause, no ``;``-separated statements); it runs as
``SELECT * FROM (<sql>) SETTINGS readonly=1``. The setting is put in the query and not passed as
a client setting: clickhouse-connect's chdb backend applies client settings with ``SET`` and
cannot restore ``readonly`` afterwards (a read-only session refuses ``SET readonly = 0``), which
would leave the sink's own session read-only (checked on chdb 26.9).

Errors: bad input (cube, measure, dimension, time, format, SQL ClickHouse refuses) -> 400
``{"error": ...}``; unknown cube -> 404; ClickHouse failing on a cube query -> 500.

The API has no authentication: bind it to a loopback or private address (``web_host``), like
the worker's web server. ``tenant`` scopes a cube query; it does not authenticate a caller.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import math
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from aiohttp import web
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from sinks.cube_query import GRANULARITIES, Cube, CubeQueryError, build_query
from sinks.dashboard_pages import add_dashboard_routes
from sinks.events_archive import archive_table, parse_positions, positions_header, read_archive
from schemas.exports import DueExport, ExportSpec, due_exports
from schemas.settings import Settings
from schemas.topology import CubeSpec, Topology, check_exports, load_topology

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("json", "csv", "parquet")
CONTENT_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}
#: Missing ``from``/``to`` of a cube query (both day-aligned, so roll-ups still answer).
_EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_LATEST = dt.datetime(2200, 1, 1, tzinfo=dt.timezone.utc)
_CUBE_PARAMS = ("measures", "dimensions", "granularity", "from", "to", "tenant", "format")


class QueryError(ValueError):
    """Bad input: an unknown measure/dimension, a malformed time or format, SQL ClickHouse refuses."""


class UnknownCube(QueryError):
    """No cube of that name is declared."""


class NoArchive(QueryError):
    """The topology declares no events archive (no ClickHouse sink of ``events.platform``)."""


class QueryFailed(RuntimeError):
    """ClickHouse (or the query service) failed on a well-formed query."""


class QueryUnavailable(RuntimeError):
    """No query service is reachable: the sink does not answer and the chdb path is held elsewhere."""


# --- parsing ---------------------------------------------------------------------------


def parse_time(text: str, what: str = "time") -> dt.datetime:
    """An ISO-8601 date or date-time (``Z`` accepted; without a zone: UTC) as an aware UTC datetime."""
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, AttributeError) as exc:
        raise QueryError(f"{what} {text!r} is not an ISO-8601 time (e.g. 2025-01-31T12:00:00Z)") from exc
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment.astimezone(dt.timezone.utc)


def _multi(params: Any) -> dict[str, list[str]]:
    """Query parameters as name -> every value given (aiohttp MultiDict or a plain mapping)."""
    out: dict[str, list[str]] = {}
    if hasattr(params, "getall"):
        return {key: list(params.getall(key)) for key in set(params.keys())}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = [value] if isinstance(value, str) else [str(v) for v in value]
    return out


def _names(values: Iterable[str]) -> list[str]:
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def cube_request(spec: CubeSpec, params: Any) -> dict[str, Any]:
    """Keyword arguments of ``Cube.query`` from query parameters (see the module docstring).

    Raises QueryError for an unknown parameter, a malformed time or anything ``build_query``
    refuses (unknown measure/dimension/filter, bad granularity), so a 400 names the problem.
    """
    given = _multi(params)
    unknown = sorted(k for k in given if k not in _CUBE_PARAMS and not k.startswith("filter."))
    if unknown:
        raise QueryError(f"unknown parameter(s) {', '.join(unknown)} (known: {', '.join(_CUBE_PARAMS)}, filter.<dimension>)")

    def one(name: str) -> str | None:
        values = given.get(name)
        return values[-1] if values else None

    filters: dict[str, list[str]] = {}
    for key, values in given.items():
        if key.startswith("filter."):
            filters[key[len("filter.") :]] = _names(values)
    start, end = one("from"), one("to")
    time_range = None
    if start is not None or end is not None:
        time_range = (parse_time(start, "from") if start else _EARLIEST, parse_time(end, "to") if end else _LATEST)
    kwargs: dict[str, Any] = {
        "measures": _names(given.get("measures", [])),
        "dimensions": _names(given.get("dimensions", [])),
        "filters": filters,
        "time_range": time_range,
        "granularity": one("granularity") or "minute",
        "tenant": one("tenant"),
    }
    try:
        build_query(spec, **kwargs)  # validates every name and value before ClickHouse sees it
    except CubeQueryError as exc:
        raise QueryError(str(exc)) from exc
    return kwargs


def cube_params(
    measures: Sequence[str],
    dimensions: Sequence[str] = (),
    granularity: str | None = None,
    time_from: str | dt.datetime | None = None,
    time_to: str | dt.datetime | None = None,
    tenant: str | None = None,
    filters: Mapping[str, str | Sequence[str]] | None = None,
) -> dict[str, str]:
    """The query parameters of a cube query (the inverse of ``cube_request``)."""
    params: dict[str, str] = {"measures": ",".join(measures)}
    if dimensions:
        params["dimensions"] = ",".join(dimensions)
    if granularity:
        params["granularity"] = granularity
    for key, value in (("from", time_from), ("to", time_to)):
        if value is not None:
            params[key] = value.isoformat() if isinstance(value, dt.datetime) else str(value)
    if tenant is not None:
        params["tenant"] = tenant
    for dim, values in (filters or {}).items():
        values = [values] if isinstance(values, str) else list(values)
        if any("," in v for v in values):
            raise QueryError(f"filter {dim!r}: values may not contain commas")
        params[f"filter.{dim}"] = ",".join(values)
    return params


def describe_cube(spec: CubeSpec) -> dict[str, Any]:
    """The public description of a cube (what ``GET /cubes`` lists)."""
    return {"name": spec.name, "description": spec.description, "dimensions": list(spec.dimensions), "measures": list(spec.measures), "rollups": list(spec.rollups)}


# --- running ---------------------------------------------------------------------------


_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*([A-Za-z]+)", re.S)


def _select(sql: str) -> str:
    if not isinstance(sql, str):
        raise QueryError("sql must be text")
    body = sql.strip()
    while body.endswith(";"):
        body = body[:-1].rstrip()
    if not body:
        raise QueryError("sql is empty")
    first = _FIRST_WORD.match(body)
    if first and first.group(1).upper() not in ("SELECT", "WITH", "FROM"):
        raise QueryError(f"only a SELECT query may run here (read-only), not {first.group(1).upper()}")
    return f"SELECT * FROM (\n{body}\n)"


def readonly_sql(sql: str) -> str:
    """``sql`` wrapped so that ClickHouse runs it as one read-only SELECT (QueryError if empty)."""
    return f"{_select(sql)} SETTINGS readonly=1"


def _strip_type(ch_type: str) -> str:
    for wrapper in ("Nullable(", "LowCardinality("):
        while ch_type.startswith(wrapper) and ch_type.endswith(")"):
            ch_type = ch_type[len(wrapper) : -1]
    return ch_type


_ENUM_ITEM = re.compile(r"'((?:[^'\\]|\\.)*)'\s*=\s*(-?\d+)")


def _fix_column(column: pa.ChunkedArray, ch_type: str) -> pa.ChunkedArray:
    """ClickHouse's Arrow output writes DateTime as uint32 seconds and Enum as its number: restore them."""
    base = _strip_type(ch_type)
    if not pa.types.is_integer(column.type):
        return column
    if base == "DateTime" or base.startswith("DateTime("):
        zone = re.match(r"DateTime\('([^']+)'\)", base)
        return column.cast(pa.int64()).cast(pa.timestamp("s", tz=zone.group(1) if zone else "UTC"))
    if base.startswith(("Enum8(", "Enum16(")):
        mapping = {int(n): re.sub(r"\\(.)", r"\1", label) for label, n in _ENUM_ITEM.findall(base)}
        return pa.chunked_array([pa.array([None if v is None else mapping.get(v, str(v)) for v in column.to_pylist()], pa.string())])
    return column


def run_sql(client: Client, sql: str) -> pa.Table:
    """The result of a read-only SELECT as an Arrow table (QueryError if ClickHouse refuses it)."""
    wrapped = readonly_sql(sql)
    try:
        types = [row[1] for row in client.query(f"DESCRIBE TABLE ({_select(sql)}) SETTINGS readonly=1").result_rows]
        table = client.query_arrow(wrapped)
    except DatabaseError as exc:
        raise QueryError(str(exc)) from exc
    if len(types) == table.num_columns:
        table = pa.table([_fix_column(table.column(i), t) for i, t in enumerate(types)], names=table.column_names)
    return table


def run_cube(client: Client, spec: CubeSpec, kwargs: Mapping[str, Any]) -> tuple[pa.Table, str]:
    """(result, roll-up read) of a cube query whose arguments ``cube_request`` checked."""
    built = build_query(spec, **kwargs)
    try:
        frame = Cube(client, spec).query(**kwargs)
    except DatabaseError as exc:
        raise QueryFailed(f"cube '{spec.name}': ClickHouse failed: {exc}") from exc
    return pa.Table.from_pandas(frame, preserve_index=False), built.rollup


# --- encoding --------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def table_json(table: pa.Table, **extra: Any) -> dict[str, Any]:
    """``{"columns": [...], "rows": [[...], ...], **extra}``: times in ISO-8601, NaN as null."""
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    rows = [[_jsonable(col[r]) for col in columns] for r in range(table.num_rows)]
    return {"columns": table.column_names, "rows": rows, **extra}


def table_csv(table: pa.Table, header: bool = True) -> bytes:
    """The table as CSV text (UTF-8), with a header row when ``header``; arrays, maps and
    tuples as JSON text."""
    frame = table.to_pandas()
    for i, field in enumerate(table.schema):
        if pa.types.is_nested(field.type):
            frame[field.name] = [json.dumps(_jsonable(v)) for v in table.column(i).to_pylist()]
    return frame.to_csv(index=False, header=header).encode()


def table_parquet(table: pa.Table) -> bytes:
    """The table as a Parquet file."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def encode(table: pa.Table, fmt: str, **extra: Any) -> bytes:
    """The table as ``fmt`` (json, csv, parquet); ``extra`` keys go into the JSON object."""
    if fmt == "json":
        return json.dumps(table_json(table, **extra), allow_nan=False).encode()
    if fmt == "csv":
        return table_csv(table)
    if fmt == "parquet":
        return table_parquet(table)
    raise QueryError(f"unknown format {fmt!r} (use {', '.join(FORMATS)})")


def write_table(table: pa.Table, path: Path, fmt: str, on_rows: Callable[[int], None] | None = None, chunk_rows: int = 65_536) -> int:
    """Write ``table`` to ``path`` as csv or parquet in chunks of ``chunk_rows`` (one Parquet row
    group each), calling ``on_rows(n)`` after each; atomic (temporary file, then rename). Returns bytes written."""
    if fmt not in ("csv", "parquet"):
        raise QueryError(f"cannot write format {fmt!r} to a file here (use csv or parquet)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if fmt == "parquet":
            with pq.ParquetWriter(tmp, table.schema) as writer:
                for offset in range(0, table.num_rows, chunk_rows):
                    chunk = table.slice(offset, chunk_rows)
                    writer.write_table(chunk)
                    if on_rows:
                        on_rows(chunk.num_rows)
        else:
            with open(tmp, "wb") as out:
                out.write(table_csv(table.slice(0, 0)))
                for offset in range(0, table.num_rows, chunk_rows):
                    chunk = table.slice(offset, chunk_rows)
                    out.write(table_csv(chunk, header=False))
                    if on_rows:
                        on_rows(chunk.num_rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


def archive_params(
    tenant: str | None, stream_id: str | None, from_version: int, types: Sequence[str] | None, since: dt.datetime | None
) -> dict[str, str]:
    """The HTTP query parameters of an archive read (the inverse of ``archive_request``)."""
    params = {"tenant": tenant, "stream_id": stream_id, "from_version": str(from_version) if from_version else None}
    params["types"] = ",".join(types) if types is not None else None
    params["since"] = since.isoformat() if since is not None else None
    return {k: v for k, v in params.items() if v is not None}


def archive_request(params: Mapping[str, str]) -> dict[str, Any]:
    """``read_archive`` keyword arguments from HTTP query parameters (QueryError names a bad one)."""
    unknown = sorted(set(params) - {"tenant", "stream_id", "from_version", "types", "since", "format"})
    if unknown:
        raise QueryError(f"unknown parameter(s) {', '.join(unknown)} (use tenant, stream_id, from_version, types, since, format)")
    kwargs: dict[str, Any] = {"tenant": params.get("tenant"), "stream_id": params.get("stream_id")}
    try:
        kwargs["from_version"] = int(params.get("from_version", "0"))
    except ValueError:
        raise QueryError(f"from_version must be a whole number, got {params['from_version']!r}") from None
    if kwargs["from_version"] < 0:
        raise QueryError("from_version must be 0 or more")
    kwargs["types"] = _names([params["types"]]) if "types" in params else None
    kwargs["since"] = parse_time(params["since"], "since") if "since" in params else None
    return kwargs


# --- the ways to ClickHouse --------------------------------------------------------------


class _Local:
    """Queries through a clickhouse-connect client of this process, every use under ``lock``."""

    def __init__(self, client: Client, lock: threading.Lock, topology: Topology) -> None:
        self.client, self.lock = client, lock
        self.cubes = {c.name: c for c in topology.cubes}
        self.archive = archive_table(topology)

    def spec(self, name: str) -> CubeSpec:
        spec = self.cubes.get(name)
        if spec is None:
            raise UnknownCube(f"no cube named {name!r} (declared: {', '.join(self.cubes) or 'none'})")
        return spec

    def cube_table(self, name: str, params: Any) -> tuple[pa.Table, str]:
        spec = self.spec(name)
        kwargs = cube_request(spec, params)
        with self.lock:
            return run_cube(self.client, spec, kwargs)

    def sql_table(self, sql: str) -> pa.Table:
        readonly_sql(sql)  # fail on empty input before taking the lock
        with self.lock:
            return run_sql(self.client, sql)

    def events(self, params: Mapping[str, str]) -> tuple[pa.Table, dict[int, int]]:
        if self.archive is None:
            raise NoArchive("topology.yaml declares no events archive (a clickhouse sink of events.platform)")
        kwargs = archive_request(params)
        try:
            with self.lock:
                return read_archive(self.client, self.archive, **kwargs)
        except DatabaseError as exc:
            raise QueryFailed(f"events archive {self.archive}: ClickHouse failed: {exc}") from exc


class _Remote:
    """Queries over the sink's HTTP API."""

    def __init__(self, base_url: str, timeout: float) -> None:
        self.base_url, self.timeout = base_url, timeout

    def _request(self, path: str, body: dict[str, Any] | None = None) -> tuple[bytes, Mapping[str, str]]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method="GET" if body is None else "POST")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace") or str(exc)
            if exc.code == 404:
                raise (NoArchive if path.startswith("/events") else UnknownCube)(message) from None
            if exc.code == 400:
                raise QueryError(message) from None
            raise QueryFailed(f"query service {self.base_url}: HTTP {exc.code}: {message}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise QueryUnavailable(f"the query service at {self.base_url} stopped answering: {exc}") from exc

    def cubes(self) -> list[dict[str, Any]]:
        return json.loads(self._request("/cubes")[0])["cubes"]

    def cube_table(self, name: str, params: Mapping[str, str]) -> tuple[pa.Table, str]:
        query = urllib.parse.urlencode({**params, "format": "parquet"})
        body, headers = self._request(f"/cubes/{urllib.parse.quote(name, safe='')}?{query}")
        return pq.read_table(io.BytesIO(body)), headers.get("X-Cube-Rollup", "")

    def sql_table(self, sql: str) -> pa.Table:
        body, _ = self._request("/sql", {"sql": sql, "format": "parquet"})
        return pq.read_table(io.BytesIO(body))

    def events(self, params: Mapping[str, str]) -> tuple[pa.Table, dict[int, int]]:
        body, headers = self._request(f"/events?{urllib.parse.urlencode({**params, 'format': 'parquet'})}")
        return pq.read_table(io.BytesIO(body)), parse_positions(headers.get("X-Archive-Positions", "{}"))


def _sink_url(settings: Settings) -> str:
    host = settings.web_host if settings.web_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.sink_port}"


def sink_answers(settings: Settings, timeout: float = 2.0, attempts: int = 2) -> bool:
    """True when the sink's query API answers ``GET /health`` with ``{"ok": true}`` (tried ``attempts`` times)."""
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(_sink_url(settings) + "/health", timeout=timeout) as response:
                return json.loads(response.read()).get("ok") is True
        except (ConnectionRefusedError, urllib.error.URLError) as exc:
            if isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
                return False  # nothing listens: no point in asking again
        except Exception:
            pass
    return False


def chdb_path_held(url: str) -> bool:
    """True when another process holds the embedded ClickHouse at ``chdb://PATH``.

    ClickHouse keeps an exclusive ``flock`` on ``PATH/status`` while it has the path open; we
    test it ourselves so that chdb never starts on a path that another process is using.
    """
    import fcntl

    status = Path(url[len("chdb://") :]) / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return False  # never opened (or not a directory path): nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class QueryClient:
    """Cube and read-only SQL queries from any process, by the first way that works (module docstring).

    Methods raise QueryError (bad input; UnknownCube for an unknown cube), QueryFailed
    (ClickHouse failed) or QueryUnavailable (no way to ClickHouse from this process).
    """

    def __init__(self, settings: Settings, *, timeout: float = 300.0, probe_timeout: float = 1.0, open_embedded: bool = True) -> None:
        self.settings = settings
        #: False for long-lived processes that must never take the chdb path from the sink (the worker).
        self.open_embedded = open_embedded
        self.timeout = timeout
        self.probe_timeout = probe_timeout
        self._backend: _Local | _Remote | None = None
        #: How queries travel once decided: "sink" (HTTP), "clickhouse" (a server) or "embedded".
        self.via: str | None = None
        self._topology: Topology | None = None

    @classmethod
    def local(cls, settings: Settings, client: Client, lock: threading.Lock) -> "QueryClient":
        """A client that queries through ``client`` under ``lock`` (for the process owning chdb)."""
        qc = cls(settings)
        qc._backend, qc.via = _Local(client, lock, qc.topology()), "local"
        return qc

    def topology(self) -> Topology:
        """The declared topology (``settings.topology_path``), read once."""
        if self._topology is None:
            self._topology = load_topology(self.settings.topology_path)
        return self._topology

    def _use_sink(self) -> _Remote:
        self._backend, self.via = _Remote(_sink_url(self.settings), self.timeout), "sink"
        return self._backend

    def _connect(self) -> _Local | _Remote:
        if self._backend is not None:
            return self._backend
        url = _sink_url(self.settings)
        if sink_answers(self.settings, self.probe_timeout):
            return self._use_sink()
        from connectors.clickhouse import clickhouse_client

        ch_url = self.settings.clickhouse_url
        if ch_url.startswith(("http://", "https://")):
            try:
                client = clickhouse_client(self.settings)
            except Exception as exc:
                raise QueryUnavailable(f"cannot reach the ClickHouse server: {exc}") from exc
            self._backend, self.via = _Local(client, threading.Lock(), self.topology()), "clickhouse"
            return self._backend
        hint = (
            f"no query service at {url} and the embedded ClickHouse at {ch_url!r} is held by another process "
            f"(chdb allows one process per path). Start `agentstream sink` (it owns the path and serves queries), "
            f"or, if it runs, check that its port is AGENTSTREAM_SINK_PORT={self.settings.sink_port}."
        )
        from connectors.clickhouse import _clients  # a path this process already opened is ours

        if not self.open_embedded or (ch_url not in _clients and chdb_path_held(ch_url)):
            raise QueryUnavailable(hint)
        try:
            client = clickhouse_client(self.settings)
        except Exception as exc:
            raise QueryUnavailable(f"{hint} ({exc})") from exc
        self._backend, self.via = _Local(client, threading.Lock(), self.topology()), "embedded"
        return self._backend

    def cubes(self) -> list[dict[str, Any]]:
        """The declared cubes (name, description, dimensions, measures, rollups): from the sink when
        it answers, else from the local topology (no ClickHouse needed)."""
        if self._backend is None:
            if not sink_answers(self.settings, self.probe_timeout):
                return [describe_cube(c) for c in self.topology().cubes]
            self._use_sink()  # it answered just now: no second probe
        backend = self._connect()
        if isinstance(backend, _Remote):
            return backend.cubes()
        return [describe_cube(c) for c in backend.cubes.values()]

    def cube_table(
        self,
        name: str,
        measures: Sequence[str],
        dimensions: Sequence[str] = (),
        granularity: str | None = None,
        time_from: str | dt.datetime | None = None,
        time_to: str | dt.datetime | None = None,
        tenant: str | None = None,
        filters: Mapping[str, str | Sequence[str]] | None = None,
    ) -> tuple[pa.Table, str]:
        """(result as Arrow, roll-up read) of a cube query; arguments as in ``cube``."""
        if granularity is not None and granularity not in GRANULARITIES:
            raise QueryError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
        params = cube_params(measures, dimensions, granularity, time_from, time_to, tenant, filters)
        return self._connect().cube_table(name, params)

    def cube_from_params(self, name: str, params: Mapping[str, str]) -> tuple[pa.Table, str]:
        """(result, roll-up) of a cube query given as the HTTP API's query parameters."""
        return self._connect().cube_table(name, params)

    def cube(
        self,
        name: str,
        measures: Sequence[str],
        dimensions: Sequence[str] = (),
        granularity: str | None = None,
        time_from: str | dt.datetime | None = None,
        time_to: str | dt.datetime | None = None,
        tenant: str | None = None,
        filters: Mapping[str, str | Sequence[str]] | None = None,
    ) -> pd.DataFrame:
        """Measures of cube ``name`` by dimensions (see ``Cube.query``) as a DataFrame.

        ``time_from``/``time_to`` are ISO-8601 text or datetimes (half-open range; one of them
        alone leaves the other side open); ``filters`` maps a dimension to a value or values;
        with ``tenant`` only that tenant's rows are read.
        """
        table, _ = self.cube_table(name, measures, dimensions, granularity, time_from, time_to, tenant, filters)
        return table.to_pandas()

    def sql_table(self, sql: str) -> pa.Table:
        """The result of a read-only SELECT as an Arrow table."""
        return self._connect().sql_table(sql)

    def sql(self, sql: str, fmt: str = "dataframe") -> bytes | pd.DataFrame:
        """The result of a read-only SELECT: a DataFrame (``fmt="dataframe"``) or json/csv/parquet bytes."""
        if fmt != "dataframe" and fmt not in FORMATS:
            raise QueryError(f"unknown format {fmt!r} (use dataframe, {', '.join(FORMATS)})")
        table = self.sql_table(sql)
        return table.to_pandas() if fmt == "dataframe" else encode(table, fmt)

    def events(
        self,
        tenant: str | None = None,
        stream_id: str | None = None,
        from_version: int = 0,
        types: Sequence[str] | None = None,
        since: dt.datetime | None = None,
    ) -> tuple[pa.Table, dict[int, int]]:
        """(archived events matching the filters, archive position per partition): see ``read_archive``.

        NoArchive when the topology declares no events archive.
        """
        return self._connect().events(archive_params(tenant, stream_id, from_version, types, since))


# --- the app -----------------------------------------------------------------------------


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _bad_format(fmt: str) -> web.Response:
    return _error(400, f"unknown format {fmt!r} (use {', '.join(FORMATS)})")


async def _run(what: str, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)`` in a worker thread, or the error response its exception maps to
    (404 unknown cube or no archive, 400 bad input, 500 ClickHouse failed)."""
    try:
        return await asyncio.to_thread(call, *args)
    except (UnknownCube, NoArchive) as exc:
        return _error(404, str(exc))
    except QueryError as exc:
        return _error(400, str(exc))
    except QueryFailed as exc:
        log.warning("%s failed: %s", what, exc)
        return _error(500, str(exc))


def _respond(table: pa.Table, fmt: str, headers: Mapping[str, str] | None = None, **extra: Any) -> web.Response:
    return web.Response(body=encode(table, fmt, **extra), headers={"Content-Type": CONTENT_TYPES[fmt], **(headers or {})})


def build_query_app(settings: Settings, client: Client, lock: threading.Lock) -> web.Application:
    """The sink process's query API (routes in the module docstring) over ``client``.

    Every use of ``client`` holds ``lock`` and runs in a worker thread, so the event loop (and
    the sink's inserts, which take the same lock) keep going while a query runs. Cubes are those
    of ``settings.topology_path`` when the app is built.
    """
    local = _Local(client, lock, load_topology(settings.topology_path))
    cubes = local.cubes

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def list_cubes(request: web.Request) -> web.Response:
        return web.json_response({"cubes": [describe_cube(c) for c in cubes.values()]})

    async def query_cube(request: web.Request) -> web.Response:
        fmt = request.query.get("format", "json")
        if fmt not in FORMATS:
            return _bad_format(fmt)
        outcome = await _run("cube query", local.cube_table, request.match_info["name"], request.query)
        if isinstance(outcome, web.Response):
            return outcome
        table, rollup = outcome
        return _respond(table, fmt, {"X-Cube-Rollup": rollup}, rollup=rollup)

    async def query_sql(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, 'the body must be JSON: {"sql": "SELECT ...", "format": "json|csv|parquet"}')
        if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
            return _error(400, 'the body must be a JSON object with "sql" (text) and optional "format"')
        fmt = body.get("format", "json")
        if fmt not in FORMATS:
            return _bad_format(fmt)
        outcome = await _run("sql", local.sql_table, body["sql"])
        return outcome if isinstance(outcome, web.Response) else _respond(outcome, fmt)

    async def archived_events(request: web.Request) -> web.Response:
        params = dict(request.query)
        fmt = params.get("format", "parquet")
        if fmt not in FORMATS:
            return _bad_format(fmt)
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


# --- scheduled exports -----------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    """The outcome of one scheduled export run: the file and its size, or the error."""

    name: str
    at: dt.datetime
    path: Path | None
    rows: int = 0
    bytes: int = 0
    error: str | None = None


def default_state_path(settings: Settings) -> Path:
    """Where the last run of each scheduled export is recorded (the sink and the CLI share it)."""
    return settings.data_dir / "exports" / "state.json"


def _load_state(state_path: Path) -> dict[str, dt.datetime]:
    try:
        raw = json.loads(Path(state_path).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise QueryError(f"{state_path}: not a JSON export state: {exc}") from exc
    return {name: dt.datetime.fromisoformat(at) for name, at in raw.items()}


def _save_state(state_path: Path, state: Mapping[str, dt.datetime]) -> None:
    state_path = Path(state_path)
    state_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_path.with_name(state_path.name + ".tmp")
    tmp.write_text(json.dumps({name: at.isoformat() for name, at in sorted(state.items())}, indent=2))
    os.replace(tmp, state_path)


def export_table(queries: QueryClient, spec: ExportSpec, at: dt.datetime) -> pa.Table:
    """The rows of one run of ``spec`` scheduled at ``at``."""
    if spec.sql is not None:
        return queries.sql_table(spec.sql)
    cube = next((c for c in queries.topology().cubes if c.name == spec.cube), None)
    if cube is None:
        raise UnknownCube(f"export '{spec.name}': no cube named {spec.cube!r}")
    time_range = spec.time_range(at)
    table, _ = queries.cube_table(
        cube.name,
        spec.measures or cube.measures,
        spec.dimensions or cube.dimensions,
        spec.granularity,
        time_range[0] if time_range else None,
        time_range[1] if time_range else None,
        spec.tenant,
        spec.filters,
    )
    return table


def run_exports(queries: QueryClient, state_path: Path, now: dt.datetime | None = None, on_result: Callable[[ExportResult], None] | None = None) -> list[ExportResult]:
    """Run the exports of ``queries.topology()`` that are due at ``now`` (default: the current time).

    Writes each file (relative paths under ``settings.data_dir``), then records its fire time in
    the JSON ``state_path``; a failed export is reported and retried at the next call. Raises
    QueryError when the exports disagree with the cubes (unknown cube, measure, duplicate name).
    """
    topology = queries.topology()
    problems = check_exports(topology.exports, topology.cubes)
    if problems:
        raise QueryError("; ".join(problems))
    now = now or dt.datetime.now(dt.timezone.utc)
    state = _load_state(state_path)
    results: list[ExportResult] = []
    due: list[DueExport] = due_exports(topology.exports, state, now)
    for item in due:
        target = Path(item.spec.target(item.at))
        if not target.is_absolute():
            target = queries.settings.data_dir / target
        try:
            table = export_table(queries, item.spec, item.at)
            size = write_table(table, target, item.spec.format)
        except (QueryError, QueryFailed, OSError) as exc:
            result = ExportResult(item.spec.name, item.at, target, error=str(exc))
            if on_result is None:
                log.warning("export %s failed: %s", item.spec.name, exc)
        else:
            result = ExportResult(item.spec.name, item.at, target, table.num_rows, size)
            state[item.spec.name] = item.at
            _save_state(state_path, state)
        results.append(result)
        if on_result:
            on_result(result)
    return results


def run_due_exports(settings: Settings, client: Client, lock: threading.Lock, state_path: Path, now: dt.datetime | None = None) -> list[ExportResult]:
    """For the sink process (on a timer): run the due scheduled exports through ``client`` under ``lock``.

    Blocking (run it with ``asyncio.to_thread``); see ``run_exports``.
    """
    return run_exports(QueryClient.local(settings, client, lock), state_path, now)
