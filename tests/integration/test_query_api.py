"""The sink's query API (cubes, read-only SQL), QueryClient and the analytics CLI, on real chdb.

No Kafka: facts are inserted directly. The test process holds the embedded chdb path (one
process per path), like the sink process would, and serves the app from a background event
loop; the CLI runs in subprocesses that reach it through AGENTSTREAM_SINK_PORT.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq
import pytest
import yaml
from aiohttp import web

from connectors.clickhouse import clickhouse_client
from sinks.clickhouse_schema import FACT_COLUMNS, cube_tables, ensure_schema
from sinks.clickhouse_sink import fact_row
from sinks.export_runner import run_due_exports
from sinks.query_client import QueryClient
from sinks.query_errors import QueryError, UnknownCube
from sinks.query_server import build_query_app
from schemas.settings import Settings, get_settings
from schemas.topology import CubeSpec, load_topology
from tests.helpers import run_cli

UTC = dt.timezone.utc
A, B = "tenant-A", "tenant-B"
#: Two days ago, midnight UTC (recent enough for the tables' TTLs).
DAY = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=2)
H10, H11 = DAY + dt.timedelta(hours=10), DAY + dt.timedelta(hours=11)


@pytest.fixture(scope="module")
def client():
    return clickhouse_client(get_settings())


@pytest.fixture(scope="module")
def lock() -> threading.Lock:
    return threading.Lock()


def facts() -> list[dict[str, Any]]:
    """A: 5 tasks at 10:xx (cost 1 each), 3 at 11:xx (cost 2 each, one failed); B: 4 at 10:xx (cost 10)."""
    out = []

    def add(tenant: str, at: dt.datetime, cost: float, outcome: str = "completed") -> None:
        n = len(out)
        out.append(
            dict(tenant=tenant, agent_id=f"agent-{n % 2}", agent_type="coder", region="eu", task_id=f"task-{n}",
                 outcome=outcome, response_time_ms=100 + n, cost=cost, event_time=at + dt.timedelta(minutes=n))
        )

    for _ in range(5):
        add(A, H10, 1.0)
    for i in range(3):
        add(A, H11, 2.0, "failed" if i == 0 else "completed")
    for _ in range(4):
        add(B, H10, 10.0)
    return out


@pytest.fixture(scope="module")
def cube(client, lock, tmp_path_factory) -> Iterator[tuple[CubeSpec, Path]]:
    """The real cube in a database of its own, with facts of tenants A and B; and a topology file declaring it."""
    settings = get_settings()
    base = load_topology(settings.topology_path).cubes[0]
    spec = base.model_copy(update={"database": f"db_{uuid.uuid4().hex[:12]}"})
    data = yaml.safe_load(Path(settings.topology_path).read_text())
    data["cubes"][0]["database"] = spec.database
    path = tmp_path_factory.mktemp("topology") / "topology.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with lock:
        ensure_schema(client, spec)
        rows = [fact_row(f) + ["facts.tasks", 0, i, i, i] for i, f in enumerate(facts())]
        client.insert(cube_tables(spec).facts, rows, column_names=[name for name, _ in FACT_COLUMNS])
    yield spec, path
    with lock:
        client.command(f"DROP DATABASE IF EXISTS {spec.database} SYNC")


@pytest.fixture(scope="module")
def settings(cube) -> Settings:
    return get_settings().model_copy(update={"topology_path": cube[1], "web_host": "127.0.0.1"})


@pytest.fixture(scope="module")
def port(settings, client, lock) -> Iterator[int]:
    """The query app served on 127.0.0.1 from a background event loop for the whole module."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    app = build_query_app(settings, client, lock)

    async def start() -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, runner.addresses[0][1]

    runner, bound = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield bound
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def get(port: int, path: str, **params: str) -> tuple[int, bytes, dict[str, str]]:
    url = f"http://127.0.0.1:{port}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def post_sql(port: int, sql: str, fmt: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    body = {"sql": sql} if fmt is None else {"sql": sql, "format": fmt}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/sql", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def hours(**extra: str) -> dict[str, str]:
    return {
        "measures": "task_count,cost,success_rate",
        "dimensions": "tenant,time",
        "granularity": "hour",
        "from": DAY.isoformat(),
        "to": (DAY + dt.timedelta(days=1)).isoformat(),
        **extra,
    }


def cli_env(port: int, settings: Settings) -> dict[str, str]:
    return {"AGENTSTREAM_SINK_PORT": str(port), "AGENTSTREAM_TOPOLOGY_PATH": str(settings.topology_path), "AGENTSTREAM_WEB_HOST": "127.0.0.1"}


# --- the app ----------------------------------------------------------------------------


def test_health_and_cubes(port, cube):
    status, body, _ = get(port, "/health")
    assert (status, json.loads(body)) == (200, {"ok": True})
    status, body, _ = get(port, "/cubes")
    assert status == 200
    (listed,) = json.loads(body)["cubes"]
    assert listed["name"] == "task_cube"
    assert listed["dimensions"] == cube[0].dimensions and listed["measures"] == cube[0].measures and listed["rollups"] == ["minute", "hour", "day"]


def test_cube_query_for_a_tenant_returns_only_its_rows(port):
    status, body, headers = get(port, "/cubes/task_cube", **hours(tenant=A))
    assert status == 200, body
    result = json.loads(body)
    assert result["columns"] == ["tenant", "time", "task_count", "cost", "success_rate"]
    assert result["rollup"] == "hour" and headers["X-Cube-Rollup"] == "hour"
    assert [(r[0], r[1], r[2], r[3]) for r in result["rows"]] == [(A, H10.isoformat(), 5, 5.0), (A, H11.isoformat(), 3, 6.0)]
    assert result["rows"][1][4] == pytest.approx(2 / 3)
    assert B not in body.decode()


def test_a_filter_cannot_widen_a_tenant_scoped_query(port):
    status, body, _ = get(port, "/cubes/task_cube", **hours(tenant=A, **{"filter.tenant": B}))
    assert status == 200, body
    assert json.loads(body)["rows"] == []
    status, body, _ = get(port, "/cubes/task_cube", **hours(tenant=A, **{"filter.tenant": f"{A},{B}"}))
    assert {r[0] for r in json.loads(body)["rows"]} == {A}
    assert B not in body.decode()


def test_cube_query_without_tenant_sees_all_tenants_and_totals(port):
    status, body, _ = get(port, "/cubes/task_cube", measures="task_count,cost", dimensions="tenant")
    assert status == 200, body
    assert json.loads(body)["rows"] == [[A, 8, 11.0], [B, 4, 40.0]]
    status, body, _ = get(port, "/cubes/task_cube", measures="task_count", **{"filter.region": "eu,us"})
    assert json.loads(body)["rows"] == [[12]]


def test_cube_query_as_csv_and_parquet(port):
    status, body, headers = get(port, "/cubes/task_cube", **hours(tenant=B, format="csv"))
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert body.decode().splitlines()[0] == "tenant,time,task_count,cost,success_rate"
    assert len(body.decode().splitlines()) == 2
    status, body, headers = get(port, "/cubes/task_cube", **hours(format="parquet"))
    assert status == 200 and headers["Content-Type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(body))
    assert table.num_rows == 3 and sum(table.column("task_count").to_pylist()) == 12


@pytest.mark.parametrize(
    "params, fragment",
    [
        (dict(measures="bogus"), "no measure 'bogus'"),
        (dict(measures="task_count", dimensions="planet"), "no dimension 'planet'"),
        (dict(measures="task_count", granularity="week"), "granularity"),
        (dict(measures="task_count", **{"from": "yesterday"}), "not an ISO-8601 time"),
        (dict(measures="task_count", **{"filter.time": "x"}), "cannot filter on 'time'"),
        (dict(measures="task_count", measure="cost"), "unknown parameter"),
        (dict(), "at least one measure"),
        (dict(measures="task_count", format="xml"), "unknown format"),
    ],
)
def test_bad_cube_queries_are_400_with_the_reason(port, params, fragment):
    status, body, _ = get(port, "/cubes/task_cube", **params)
    assert status == 400
    assert fragment in json.loads(body)["error"]


def test_unknown_cube_is_404(port):
    status, body, _ = get(port, "/cubes/nope", measures="task_count")
    assert status == 404
    assert "no cube named 'nope'" in json.loads(body)["error"]


@pytest.mark.parametrize(
    "params, fragment",
    [
        (dict(from_version="two"), "from_version must be a whole number"),
        (dict(from_version="-1"), "from_version must be 0 or more"),
        (dict(since="last week"), "not an ISO-8601 time"),
        (dict(stream="agent-a1"), "unknown parameter"),
        (dict(format="xml"), "unknown format"),
    ],
)
def test_bad_archive_reads_are_400_with_the_reason(port, params, fragment):
    status, body, _ = get(port, "/events", **params)
    assert status == 400
    assert fragment in json.loads(body)["error"]


def test_archive_read_of_an_unknown_stream_is_empty_with_positions(port, client, lock):
    from sinks.events_archive import ensure_archive

    with lock:
        ensure_archive(client, "agentstream.event_archive")
        assert ensure_archive(client, "agentstream.event_archive") == []  # idempotent
        # An archive from before the positions table gets it, backfilled.
        client.command("DROP VIEW agentstream.event_archive_positions_mv")
        client.command("DROP TABLE agentstream.event_archive_positions")
        changed = ensure_archive(client, "agentstream.event_archive")
        assert len(changed) == 3 and changed[-1].startswith("INSERT INTO agentstream.event_archive_positions")
        assert ensure_archive(client, "agentstream.event_archive") == []
    status, body, headers = get(port, "/events", tenant="nobody", stream_id="agent-x", from_version="3")
    assert status == 200 and pq.read_table(io.BytesIO(body)).num_rows == 0
    assert json.loads(headers["X-Archive-Positions"]) == {}
    status, body, _ = get(port, "/events", tenant="nobody", format="json")
    assert status == 200 and json.loads(body)["rows"] == [] and "value" not in json.loads(body)["columns"]


def test_sql_as_json_csv_and_parquet(port, cube):
    sql = f"SELECT tenant, count() AS n, sum(cost) AS cost, max(event_time) AS last FROM {cube_tables(cube[0]).facts} GROUP BY tenant ORDER BY tenant"
    status, body, _ = post_sql(port, sql)
    assert status == 200, body
    result = json.loads(body)
    assert result["columns"] == ["tenant", "n", "cost", "last"]
    assert [r[:3] for r in result["rows"]] == [[A, 8, 11.0], [B, 4, 40.0]]
    assert dt.datetime.fromisoformat(result["rows"][0][3]) == H11 + dt.timedelta(minutes=7)
    status, body, headers = post_sql(port, sql, "csv")
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert body.decode().splitlines()[:2] == ["tenant,n,cost,last", f"{A},8,11.0,{(H11 + dt.timedelta(minutes=7)).isoformat(sep=' ')}"]
    status, body, headers = post_sql(port, sql, "parquet")
    assert status == 200 and headers["Content-Type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(body))
    assert table.column("n").to_pylist() == [8, 4]
    assert str(table.schema.field("last").type).startswith("timestamp")


def test_sql_types_survive_arrow(port, cube):
    # ClickHouse's Arrow output gives DateTime as uint32 and Enum as its number: the API restores them
    status, body, _ = post_sql(port, f"SELECT outcome, toStartOfHour(event_time) AS h FROM {cube_tables(cube[0]).facts} WHERE tenant = '{A}' ORDER BY task_id LIMIT 1")
    assert json.loads(body)["rows"] == [["completed", H10.isoformat()]]


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO {facts} SELECT * FROM {facts}",
        "DROP TABLE {facts}",
        "DROP DATABASE {db}",
        "SELECT 1; DROP TABLE {facts}",
        "ALTER TABLE {facts} DELETE WHERE 1",
        "TRUNCATE TABLE {facts}",
        "SET readonly = 0",
        "SELECT 1 FORMAT CSV",
        "",
    ],
)
def test_sql_cannot_change_anything(port, cube, client, lock, sql):
    spec = cube[0]
    facts_table = cube_tables(spec).facts
    status, body, _ = post_sql(port, sql.format(facts=facts_table, db=spec.database))
    assert status == 400
    assert json.loads(body)["error"]
    with lock:
        assert client.command(f"SELECT count() FROM {facts_table}") == 12
        # the session is not left read-only (the sink's inserts must keep working)
        assert client.command("SELECT getSetting('readonly')") == 0


def test_sql_errors_are_400_with_the_server_message(port):
    status, body, _ = post_sql(port, "SELECT * FROM no_such_table_here")
    assert status == 400
    assert "no_such_table_here" in json.loads(body)["error"]
    status, body, _ = post_sql(port, "SELECT 1", "xml")
    assert status == 400 and "unknown format" in json.loads(body)["error"]
    request = urllib.request.Request(f"http://127.0.0.1:{port}/sql", data=b"not json")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 400


# --- QueryClient ---------------------------------------------------------------------------


def test_query_client_goes_through_the_running_sink(port, settings, cube):
    queries = QueryClient(settings.model_copy(update={"sink_port": port}))
    frame = queries.cube("task_cube", ["task_count", "cost"], ["tenant", "time"], "hour", DAY, DAY + dt.timedelta(days=1), tenant=A)
    assert queries.via == "sink"
    assert list(frame["tenant"]) == [A, A] and list(frame["task_count"]) == [5, 3]
    assert [t.to_pydatetime() for t in frame["time"]] == [H10, H11]
    assert [c["name"] for c in queries.cubes()] == ["task_cube"]
    assert queries.sql("SELECT 1 AS x", "csv") == b"x\n1\n"
    frame = queries.sql(f"SELECT count() AS n FROM {cube_tables(cube[0]).facts} WHERE tenant = '{B}'")
    assert int(frame["n"][0]) == 4
    with pytest.raises(UnknownCube):
        queries.cube("nope", ["task_count"])
    with pytest.raises(QueryError, match="no measure 'bogus'"):
        queries.cube("task_cube", ["bogus"])
    with pytest.raises(QueryError, match="SELECT"):
        queries.sql("DROP TABLE x")


def test_query_client_in_the_owning_process_uses_the_local_client(settings, client, lock):
    # no sink on this port; the chdb path is already open in this process, so the client reuses it
    queries = QueryClient(settings.model_copy(update={"sink_port": free_port()}))
    frame = queries.cube("task_cube", ["task_count"], ["tenant"])
    assert queries.via == "embedded"
    assert list(frame["task_count"]) == [8, 4]


def test_run_due_exports_writes_the_daily_cube_file(settings, client, lock, tmp_path):
    local = settings.model_copy(update={"data_dir": tmp_path})
    state = tmp_path / "state.json"
    now = DAY + dt.timedelta(days=1, minutes=20)  # after the 00:15 fire time of the day after DAY
    (result,) = run_due_exports(local, client, lock, state, now)
    assert result.error is None
    assert result.path == tmp_path / "exports" / "task_cube" / f"{(DAY + dt.timedelta(days=1)).date()}.parquet"
    table = pq.read_table(result.path)
    assert table.num_rows == result.rows == 2  # one row per tenant for DAY
    assert sorted(zip(table.column("tenant").to_pylist(), table.column("task_count").to_pylist())) == [(A, 8), (B, 4)]
    assert json.loads(state.read_text()) == {"task_cube_daily": (DAY + dt.timedelta(days=1, minutes=15)).isoformat()}
    assert run_due_exports(local, client, lock, state, now + dt.timedelta(hours=1)) == []


# --- the CLI --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_cube_query_for_a_tenant_prints_only_its_rows(port, settings):
    env = cli_env(port, settings)
    args = ["cube", "query", "task_cube", "-m", "task_count,cost", "-d", "tenant,time", "-g", "hour", "--from", DAY.isoformat(), "--to", (DAY + dt.timedelta(days=1)).isoformat()]
    result = run_cli(*args, "--tenant", A, env=env)
    assert result.returncode == 0, result.stderr
    assert A in result.stdout and B not in result.stdout
    assert "hour roll-up" in result.stdout
    result = run_cli(*args, "--tenant", A, "--filter", f"tenant={B}", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == [] and B not in result.stdout
    result = run_cli(*args, "--tenant", B, "--format", "csv", env=env)
    assert result.stdout.splitlines()[1].startswith(f"{B},") and A not in result.stdout


def test_cli_cube_list(port, settings):
    result = run_cli("cube", "list", env=cli_env(port, settings))
    assert result.returncode == 0, result.stderr
    assert "task_cube" in result.stdout and "task_count" in result.stdout


def test_cli_sql(port, settings, tmp_path):
    env = cli_env(port, settings)
    result = run_cli("sql", "SELECT 1 AS x", "--format", "csv", env=env)
    assert (result.returncode, result.stdout) == (0, "x\n1\n"), result.stderr
    result = run_cli("sql", "SELECT number AS n FROM numbers(3)", env=env)
    assert result.returncode == 0 and "3 row(s)" in result.stdout
    result = run_cli("sql", "SELECT 2 AS y", "--format", "parquet", "--out", str(tmp_path / "y.parquet"), env=env)
    assert result.returncode == 0, result.stderr
    assert pq.read_table(tmp_path / "y.parquet").to_pylist() == [{"y": 2}]


def test_cli_export_sql_to_parquet_and_cube_to_csv(port, settings, cube, tmp_path):
    env = cli_env(port, settings)
    out = tmp_path / "facts.parquet"
    result = run_cli("export", "--sql", f"SELECT * FROM {cube_tables(cube[0]).facts} WHERE tenant = '{A}'", "--out", str(out), "--chunk-rows", "3", env=env)
    assert result.returncode == 0, result.stderr
    assert f"wrote 8 rows to {out}" in result.stdout
    parquet = pq.ParquetFile(out)
    assert parquet.metadata.num_rows == 8 and parquet.metadata.num_row_groups == 3
    assert set(parquet.read().column("tenant").to_pylist()) == {A}
    out = tmp_path / "cube.csv"
    result = run_cli("export", "--cube", "task_cube", "-m", "task_count", "-d", "tenant", "--tenant", B, "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    assert out.read_text().splitlines() == ["tenant,task_count", f"{B},4"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["cube", "query", "nope", "-m", "task_count"], "no cube named 'nope'"),
        (["cube", "query", "task_cube", "-m", "bogus"], "no measure 'bogus'"),
        (["cube", "query", "task_cube", "-m", "task_count", "--from", "last tuesday"], "not an ISO-8601 time"),
        (["cube", "query", "task_cube", "-m", "task_count", "--format", "xml"], "unknown format"),
        (["cube", "query", "task_cube", "-m", "task_count", "--filter", "region"], "DIMENSION=VALUE"),
        (["sql", "DROP TABLE x"], "only a SELECT"),
        (["sql", "SELECT * FROM no_such_table_here"], "no_such_table_here"),
        (["sql", "SELECT 1", "--format", "parquet"], "needs --out"),
        (["export", "--sql", "SELECT 1", "--out", "x.xlsx"], ".parquet or .csv"),
        (["export", "--out", "x.csv"], "exactly one of --cube"),
    ],
)
def test_cli_bad_input_exits_2(port, settings, args, fragment):
    result = run_cli(*args, env=cli_env(port, settings))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert fragment in " ".join(result.stderr.split())


def test_cli_without_a_sink_while_the_path_is_held_exits_3(settings, client):
    # this process holds the chdb path (the `client` fixture); nothing answers on the sink port
    env = {**cli_env(free_port(), settings)}
    result = run_cli("sql", "SELECT 1", env=env)
    assert result.returncode == 3, (result.stdout, result.stderr)
    message = " ".join(result.stderr.split())
    assert "agentstream sink" in message and "AGENTSTREAM_SINK_PORT" in message
