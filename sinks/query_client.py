"""Queries from any process: ``QueryClient`` finds a way to ClickHouse and runs cubes, SQL and archive reads.

Embedded ClickHouse (chdb) lets only ONE process open a data path, and the ClickHouse sink
process (``agentstream sink``) owns it while it runs; it serves queries over HTTP
(``sinks.query_server``). ``QueryClient`` picks the way in this order:

1. the sink answers ``GET /health`` on ``sink_port`` -> HTTP (``RemoteQueries``);
2. ``settings.clickhouse_url`` is an http(s) ClickHouse server -> query it directly;
3. embedded chdb -> open the path in this process (works only when no other process holds it),
   else ``QueryUnavailable`` telling to start ``agentstream sink`` (or fix its port).

Ways 2 and 3, and the sink's server itself, run the same code (``LocalQueries``: ``Cube`` for
cubes, ``run_sql`` for SQL, ``read_archive`` for the archive) and yield a ``pyarrow.Table``;
over HTTP the table travels as Parquet (``sinks.table_formats``), so types survive. Errors are
those of ``sinks.query_errors`` whichever way the query went.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from schemas.settings import Settings
from schemas.topology import CubeSpec, Topology, load_topology
from sinks.cube_query import GRANULARITIES, Cube, build_query
from sinks.events_archive import archive_table, parse_positions, read_archive
from sinks.query_errors import NoArchive, QueryError, QueryFailed, QueryUnavailable, UnknownCube, error_for_status
from sinks.query_params import archive_params, archive_request, cube_params, cube_request, describe_cube
from sinks.sql_guard import readonly_sql, select_sql
from sinks.table_formats import FORMATS, encode, read_parquet

# --- running on a ClickHouse client -----------------------------------------------------


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
        types = [row[1] for row in client.query(f"DESCRIBE TABLE ({select_sql(sql)}) SETTINGS readonly=1").result_rows]
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


# --- the ways to ClickHouse --------------------------------------------------------------


class LocalQueries:
    """Queries through a clickhouse-connect client of this process, every use under ``lock``.

    Takes the HTTP API's parameters (``sinks.query_params``) and checks them before taking the
    lock; raises the errors of ``sinks.query_errors``. Blocking: servers run it in a worker thread.
    """

    def __init__(self, client: Client, lock: threading.Lock, topology: Topology) -> None:
        self.client, self.lock = client, lock
        self.cubes = {c.name: c for c in topology.cubes}
        self.archive = archive_table(topology)

    def spec(self, name: str) -> CubeSpec:
        """The declared cube ``name`` (UnknownCube otherwise)."""
        spec = self.cubes.get(name)
        if spec is None:
            raise UnknownCube(f"no cube named {name!r} (declared: {', '.join(self.cubes) or 'none'})")
        return spec

    def cube_table(self, name: str, params: Any) -> tuple[pa.Table, str]:
        """(result, roll-up read) of cube ``name`` queried with the API's parameters ``params``."""
        spec = self.spec(name)
        kwargs = cube_request(spec, params)
        with self.lock:
            return run_cube(self.client, spec, kwargs)

    def sql_table(self, sql: str) -> pa.Table:
        """The result of a read-only SELECT."""
        readonly_sql(sql)  # fail on empty input before taking the lock
        with self.lock:
            return run_sql(self.client, sql)

    def events(self, params: Mapping[str, str]) -> tuple[pa.Table, dict[int, int]]:
        """(archived events, archive position per partition) for the API's parameters ``params``."""
        if self.archive is None:
            raise NoArchive("topology.yaml declares no events archive (a clickhouse sink of events.platform)")
        kwargs = archive_request(params)
        try:
            with self.lock:
                return read_archive(self.client, self.archive, **kwargs)
        except DatabaseError as exc:
            raise QueryFailed(f"events archive {self.archive}: ClickHouse failed: {exc}") from exc


class RemoteQueries:
    """Queries over the sink's HTTP API; answers come back as Parquet and are read into tables."""

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
            raise error_for_status(exc.code, message, service=self.base_url, archive=path.startswith("/events")) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise QueryUnavailable(f"the query service at {self.base_url} stopped answering: {exc}") from exc

    def cubes(self) -> list[dict[str, Any]]:
        """The cubes the sink declares (``GET /cubes``)."""
        return json.loads(self._request("/cubes")[0])["cubes"]

    def cube_table(self, name: str, params: Mapping[str, str]) -> tuple[pa.Table, str]:
        """(result, roll-up read) of cube ``name`` queried with the API's parameters ``params``."""
        query = urllib.parse.urlencode({**params, "format": "parquet"})
        body, headers = self._request(f"/cubes/{urllib.parse.quote(name, safe='')}?{query}")
        return read_parquet(body), headers.get("X-Cube-Rollup", "")

    def sql_table(self, sql: str) -> pa.Table:
        """The result of a read-only SELECT."""
        body, _ = self._request("/sql", {"sql": sql, "format": "parquet"})
        return read_parquet(body)

    def events(self, params: Mapping[str, str]) -> tuple[pa.Table, dict[int, int]]:
        """(archived events, archive position per partition) for the API's parameters ``params``."""
        body, headers = self._request(f"/events?{urllib.parse.urlencode({**params, 'format': 'parquet'})}")
        return read_parquet(body), parse_positions(headers.get("X-Archive-Positions", "{}"))


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
        self._backend: LocalQueries | RemoteQueries | None = None
        #: How queries travel once decided: "sink" (HTTP), "clickhouse" (a server) or "embedded".
        self.via: str | None = None
        self._topology: Topology | None = None

    @classmethod
    def local(cls, settings: Settings, client: Client, lock: threading.Lock) -> "QueryClient":
        """A client that queries through ``client`` under ``lock`` (for the process owning chdb)."""
        qc = cls(settings)
        qc._backend, qc.via = LocalQueries(client, lock, qc.topology()), "local"
        return qc

    def topology(self) -> Topology:
        """The declared topology (``settings.topology_path``), read once."""
        if self._topology is None:
            self._topology = load_topology(self.settings.topology_path)
        return self._topology

    def _use_sink(self) -> RemoteQueries:
        self._backend, self.via = RemoteQueries(_sink_url(self.settings), self.timeout), "sink"
        return self._backend

    def _connect(self) -> LocalQueries | RemoteQueries:
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
            self._backend, self.via = LocalQueries(client, threading.Lock(), self.topology()), "clickhouse"
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
        self._backend, self.via = LocalQueries(client, threading.Lock(), self.topology()), "embedded"
        return self._backend

    def cubes(self) -> list[dict[str, Any]]:
        """The declared cubes (name, description, dimensions, measures, rollups): from the sink when
        it answers, else from the local topology (no ClickHouse needed)."""
        if self._backend is None:
            if not sink_answers(self.settings, self.probe_timeout):
                return [describe_cube(c) for c in self.topology().cubes]
            self._use_sink()  # it answered just now: no second probe
        backend = self._connect()
        if isinstance(backend, RemoteQueries):
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
