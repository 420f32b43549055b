"""Dashboards in real headless Chromium over data loaded by the pipeline.

Task events go onto events.platform; the session worker builds the facts; a sink process (its own
chdb path) writes the cubes and the events archive and serves the pages. Tenant A saves a custom
dashboard through the command path. Each default dashboard (and A's own) is opened; once every
widget has drawn, the numbers on the page are read back and compared with the cube query API
(QueryClient, and ``agentstream cube query`` for one widget) on the same range. Any JavaScript
console error fails the test. Screenshots go to DATA_DIR/screenshots, copied out when a test
fails (tests/integration/conftest.py), like the workers' logs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from schemas.messages import CommandAccepted, CommandRejected
from schemas.topology import load_topology
from sinks.query_client import QueryClient
from streams.client import send_command
from streams.supervisor import WorkerProcess
from tests.browser import BrowserMissing, chromium, console_errors
from tests.helpers import produce_task_events, run_cli, tenant

pytestmark = pytest.mark.integration

UTC = dt.timezone.utc
TASKS = 1200

READ_WIDGETS = """
const out = {};
for (const box of document.querySelectorAll('section.widget')) {
  const w = {status: box.dataset.status, type: box.dataset.type, text: box.querySelector('.body').innerText};
  if (box.plot) w.traces = box.plot.data.map(t => ({measure: t.meta && t.meta.measure, group: t.meta && t.meta.group,
                                                    x: t.x, y: t.y, value: t.value}));
  const metric = box.querySelector('.metric');
  if (metric) { w.value = metric.dataset.value === '' ? null : Number(metric.dataset.value); w.shown = metric.textContent; }
  if (box.dataset.value !== undefined && !metric) { w.value = box.dataset.value === '' ? null : Number(box.dataset.value);
    const n = box.querySelector('text.number'); w.shown = n ? n.textContent : null; }
  const table = box.querySelector('table.rows');
  if (table) { w.header = [...table.tHead.rows[0].cells].map(c => c.textContent);
    w.rows = [...table.tBodies[0].rows].map(r => [...r.cells].map(c => c.dataset.value !== undefined ? Number(c.dataset.value) : c.textContent)); }
  out[box.dataset.widget] = w;
}
return out;
"""

CUSTOM = {
    "dashboard_id": "mine",
    "name": "A's own",
    "widgets": [
        {"id": "llm-tasks", "title": "LLM tasks", "type": "metric", "cube": "task_cube", "measures": ["task_count"], "filters": {"agent_type": ["llm"]}, "refresh_s": 5},
        {"id": "by-type", "title": "Tasks by type and hour", "type": "chart", "cube": "task_cube", "measures": ["task_count"], "dimensions": ["time", "agent_type"], "refresh_s": 5},
    ],
    "roles": ["*"],
}


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _sql(port: int, sql: str) -> list[list[Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/sql", data=json.dumps({"sql": sql, "format": "json"}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())["rows"]


def _until(check, timeout: float, what: str, sink: WorkerProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{sink.log_tail()}")


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None or (isinstance(b, float) and pd.isna(b)):
        return (a is None) and (b is None or pd.isna(b))
    return a == pytest.approx(float(b), rel=1e-9, abs=1e-12)


def _expected(queries: QueryClient, widget: dict, tenant_id: str, window: tuple[str, str]) -> pd.DataFrame:
    return queries.cube(widget["cube"], widget["measures"], widget.get("dimensions") or [], widget.get("granularity", "hour"),
                        window[0], window[1], tenant_id, widget.get("filters") or None)


def _check_widget(widget: dict, shown: dict, expected: pd.DataFrame) -> None:
    """The numbers a widget shows are those of the cube query."""
    wid = widget["id"]
    assert shown["status"] == "drawn", f"widget {wid}: {shown['status']}: {shown['text']}"
    kind = widget["type"]
    if kind in ("metric", "gauge"):
        want = expected[widget["measures"][0]].iloc[0] if len(expected) else None
        assert _close(shown["value"], want), (wid, shown["value"], want)
        if shown.get("shown") and want is not None:
            assert float(shown["shown"].replace("−", "-")) == pytest.approx(float(want), rel=1e-3), (wid, shown["shown"], want)
        return
    dims = widget.get("dimensions") or []
    if kind == "table":
        assert shown["header"] == [*dims, *widget["measures"]], wid
        assert len(shown["rows"]) == len(expected), (wid, shown["rows"], expected)
        for got, (_, want) in zip(shown["rows"], expected.iterrows()):
            for name, cell in zip(shown["header"], got):
                value = want[name]
                if name in widget["measures"]:
                    assert _close(cell, value), (wid, name, cell, value)
                else:
                    assert cell == str(value), (wid, name, cell, value)
        return
    # chart: one trace per measure (and per group of the other dimensions when over time)
    others = [d for d in dims if d != "time"]
    for measure in widget["measures"]:
        traces = [t for t in shown["traces"] if t["measure"] == measure]
        if "time" in dims:
            frame = expected.copy()
            frame["group"] = frame[others].astype(str).agg(" / ".join, axis=1) if others else ""
            assert sorted(t["group"] for t in traces) == sorted(frame["group"].unique()), wid
            for trace in traces:
                part = frame[frame["group"] == trace["group"]]
                assert [pd.Timestamp(x) for x in trace["x"]] == list(pd.to_datetime(part["time"], utc=True)), (wid, trace["group"])
                assert all(_close(y, v) for y, v in zip(trace["y"], part[measure])) and len(trace["y"]) == len(part), (wid, trace, part)
        else:
            (trace,) = traces
            assert trace["x"] == list(expected[dims].astype(str).agg(" / ".join, axis=1)), wid
            assert all(_close(y, v) for y, v in zip(trace["y"], expected[measure])) and len(trace["y"]) == len(expected), (wid, trace)


def _topology_with_a_removed_cube(tmp_path: Path, source: Path) -> Path:
    """The real topology plus a default dashboard one of whose widgets reads a cube that is not declared (any more)."""
    data = yaml.safe_load(source.read_text())
    data["dashboards"].append({"id": "legacy", "name": "Legacy", "widgets": [
        {"id": "ok", "title": "Tasks", "type": "metric", "cube": "task_cube", "measures": ["task_count"]},
        {"id": "gone", "title": "Old cube", "type": "metric", "cube": "old_cube", "measures": ["task_count"]},
    ]})
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_dashboards_show_the_cube_numbers_per_tenant(worker, applied, tmp_path: Path):
    a, b = tenant(), tenant()
    port = applied.sink_port
    topology = _topology_with_a_removed_cube(tmp_path, applied.topology_path)
    env = {"AGENTSTREAM_CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}", "AGENTSTREAM_TOPOLOGY_PATH": str(topology)}
    shots = applied.data_dir / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    sink = WorkerProcess(applied.data_dir / "logs" / f"sink-dashboards-{a}.log", env=env, args=["sink", "--max-delay", "0.3"]).start()
    try:
        now = dt.datetime.now(UTC).replace(microsecond=0)
        asyncio.run(produce_task_events(applied, [a, b], TASKS, now - dt.timedelta(hours=4)))

        # Custom dashboards go through the command path; a widget the cube cannot answer is refused.
        saved = send_command(applied, "SaveDashboard", a, CUSTOM, timeout=60)
        assert isinstance(saved, CommandAccepted), saved
        bad = {**CUSTOM, "dashboard_id": "bad", "widgets": [{**CUSTOM["widgets"][0], "measures": ["profit"]}]}
        refused = send_command(applied, "SaveDashboard", a, bad, timeout=60)
        assert isinstance(refused, CommandRejected) and "has no measure 'profit'" in refused.message, refused
        missing = send_command(applied, "DeleteDashboard", a, {"dashboard_id": "nope"}, timeout=60)
        assert isinstance(missing, CommandRejected) and missing.code == "NotFound", missing
        # A malformed saved dashboard (appended as a raw event: schema-valid, but a chart with no dimension).
        malformed = {**CUSTOM, "dashboard_id": "broken", "widgets": [{**CUSTOM["widgets"][1], "dimensions": []}]}
        appended = send_command(applied, "AppendEvents", a, {"stream_id": "dashboard-broken", "events": [
            {"type": "DashboardSaved", "data_json": json.dumps(malformed)}]}, expected_version=0, timeout=60)
        assert isinstance(appended, CommandAccepted), appended

        names = f"'{a}','{b}'"
        _until(lambda: _sql(port, f"SELECT count() FROM agentstream.task_facts WHERE tenant IN ({names})")[0][0] == TASKS, 180, "the facts", sink)
        _until(lambda: b"broken" in _get(f"http://127.0.0.1:{port}/dashboards?tenant={a}&format=json")[1], 60, "the saved dashboards", sink)
        listed = {d["id"]: d for d in json.loads(_get(f"http://127.0.0.1:{port}/dashboards?tenant={a}&format=json")[1])["dashboards"]}
        assert "a chart needs a dimension" in listed["broken"]["error"] and "error" not in listed["mine"]
        status, body = _get(f"http://127.0.0.1:{port}/dashboards/broken?tenant={a}")
        assert status == 422 and b"a chart needs a dimension" in body

        # Isolation: B lists no dashboard of A, and cannot open it.
        status, body = _get(f"http://127.0.0.1:{port}/dashboards?tenant={b}&format=json")
        assert status == 200 and a not in body.decode() and "mine" not in [d["id"] for d in json.loads(body)["dashboards"]]
        status, body = _get(f"http://127.0.0.1:{port}/dashboards/mine?tenant={b}&format=json")
        assert status == 404 and "no dashboard 'mine'" in json.loads(body)["error"]
        assert _get(f"http://127.0.0.1:{port}/dashboards/nope?tenant={a}")[0] == 404
        cli_env = {"AGENTSTREAM_SINK_PORT": str(port), "AGENTSTREAM_WEB_HOST": "127.0.0.1"}
        listed = run_cli("dashboards", "list", "--tenant", a, "--json", env=cli_env)
        assert listed.returncode == 0, listed.stderr
        assert "mine" in [d["id"] for d in json.loads(listed.stdout)]
        hidden = run_cli("dashboards", "show", "mine", "--tenant", b, env=cli_env)
        assert hidden.returncode == 2 and "no dashboard 'mine'" in hidden.stderr
        assert _get(f"http://127.0.0.1:{port}/dashboards/tasks?tenant={a}&range=forever")[0] == 400

        start = (now - dt.timedelta(hours=6)).replace(minute=0, second=0)
        window = (start.isoformat(), (now.replace(minute=0, second=0) + dt.timedelta(hours=1)).isoformat())
        queries = QueryClient(applied.model_copy(update={"web_host": "127.0.0.1"}))
        defaults = [d for d in load_topology(topology).dashboards if d.id != "legacy"]
        pages = [(d.id, [w.model_dump() for w in d.widgets], t) for d in defaults for t in (a, b)] + [("mine", CUSTOM["widgets"], a)]
        began = time.monotonic()
        with chromium() as driver:
            for dashboard_id, widgets, who in pages:
                driver.get(f"http://127.0.0.1:{port}/dashboards/{dashboard_id}?tenant={who}&from={window[0]}&to={window[1]}".replace("+", "%2B"))
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    done = driver.execute_script("return window.dashboardTimings && window.dashboardTimings.allDrawn !== null")
                    if done:
                        break
                    time.sleep(0.05)
                shown = driver.execute_script(READ_WIDGETS)
                driver.save_screenshot(str(shots / f"{dashboard_id}-{who}.png"))
                assert not console_errors(driver), f"{dashboard_id}: JavaScript console errors"
                for widget in widgets:
                    _check_widget({"granularity": "hour", **widget}, shown[widget["id"]], _expected(queries, {"granularity": "hour", **widget}, who, window))
                other = b if who == a else a
                assert other not in json.dumps(shown), f"{dashboard_id} for {who} shows {other}"

            # The same numbers as `agentstream cube query` (the CLI, through the sink).
            cli = run_cli("cube", "query", "task_cube", "--measures", "cost,task_count", "--dimensions", "region", "--tenant", a,
                          "--from", window[0], "--to", window[1], "--granularity", "hour", "--format", "csv",
                          env=cli_env)
            assert cli.returncode == 0, cli.stderr
            from_cli = pd.read_csv(io.StringIO(cli.stdout))
            driver.get(f"http://127.0.0.1:{port}/dashboards/cost?tenant={a}&from={window[0]}&to={window[1]}".replace("+", "%2B"))
            time.sleep(0.2)
            _until(lambda: driver.execute_script("return window.dashboardTimings.allDrawn !== null"), 30, "the cost dashboard", sink)
            table = driver.execute_script(READ_WIDGETS)["table"]
            assert [r[0] for r in table["rows"]] == list(from_cli["region"])
            assert [r[1] for r in table["rows"]] == pytest.approx(list(from_cli["cost"]), rel=1e-9)
            assert [r[2] for r in table["rows"]] == list(from_cli["task_count"])
            assert not console_errors(driver)

            # A widget whose cube was removed says so; the rest of the page draws.
            driver.get(f"http://127.0.0.1:{port}/dashboards/legacy?tenant={a}")
            _until(lambda: driver.execute_script("return window.dashboardTimings.allDrawn !== null"), 30, "the legacy dashboard", sink)
            legacy = driver.execute_script(READ_WIDGETS)
            driver.save_screenshot(str(shots / f"legacy-{a}.png"))
            assert legacy["ok"]["status"] == "drawn" and legacy["gone"]["status"] == "error", legacy
            assert "no cube named 'old_cube'" in legacy["gone"]["text"], legacy["gone"]
            console_errors(driver)  # the 404 of the removed cube's query is expected here

            # The sink goes away: a widget says so in place, the page stays.
            driver.get(f"http://127.0.0.1:{port}/dashboards/mine?tenant={a}")
            _until(lambda: driver.execute_script("return window.dashboardTimings.allDrawn !== null"), 30, "A's dashboard", sink)
            sink.stop()
            deadline = time.monotonic() + 20
            status = ""
            while time.monotonic() < deadline and status != "error":
                status = driver.execute_script("return document.getElementById('w-llm-tasks').dataset.status")
                time.sleep(0.25)
            message = driver.execute_script("return document.getElementById('w-llm-tasks').innerText")
            driver.save_screenshot(str(shots / "mine-sink-down.png"))
            assert status == "error" and "not reachable" in message, message
        print(f"browser part: {time.monotonic() - began:.1f}s for {len(pages) + 2} page loads")
    except BrowserMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        sink.stop()
