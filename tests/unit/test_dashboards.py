"""Dashboards without a browser: the model, the checks against the cubes, the Dashboard decider,
the fold of saved dashboards and the pages' HTML (pure: no Kafka, no ClickHouse)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from schemas import default_registry
from schemas.dashboards import CubeShape, DashboardError, check_dashboard, parse_dashboard, saved_payload, window
from schemas.settings import REPO_ROOT
from schemas.messages import EventMeta
from schemas.topology import CodeView, load_topology, validate
from sinks.dashboards import BrokenDashboardError, UnknownDashboard, catalogue, find, plotly_bundle, render_dashboard, render_list, saved_dashboards
from sinks.events_archive import READ_COLUMNS
from streams.domain import DASHBOARD, Command, Rejection, RejectionCode, aggregate_for, aggregate_for_stream, replay
from streams.domain.dashboards import DashboardState, dashboard_aggregate

REG = default_registry()
CUBES = {"task_cube": CubeShape(name="task_cube", measures=["task_count", "cost"], dimensions=["tenant", "region", "time"], rollups=["minute", "hour"])}
WIDGET = {"id": "n", "title": "Tasks", "type": "metric", "cube": "task_cube", "measures": ["task_count"]}


def saved(dashboard_id: str = "ops", **widget: object) -> dict:
    return {"dashboard_id": dashboard_id, "name": "Ops", "widgets": [{**WIDGET, **widget}]}


@pytest.mark.parametrize(
    "widget, words",
    [
        ({"measures": ["task_count", "cost"]}, "exactly one measure"),
        ({"type": "gauge", "dimensions": ["region"]}, "no dimensions"),
        ({"type": "chart"}, "a chart needs a dimension"),
        ({"range": "forever"}, "not a relative range"),
        ({"type": "pie"}, "type"),
        ({"refresh_s": 1}, "refresh_s"),
        ({"filters": {"time": ["x"]}}, "filter on time"),
    ],
)
def test_a_malformed_dashboard_is_refused_with_the_reason(widget, words):
    with pytest.raises(DashboardError, match=words):
        parse_dashboard(saved(**widget))


def test_widget_ids_are_unique():
    with pytest.raises(DashboardError, match="listed twice"):
        parse_dashboard({"id": "d", "name": "D", "widgets": [WIDGET, WIDGET]})


@pytest.mark.parametrize(
    "widget, words",
    [
        ({"cube": "gone"}, "no cube named 'gone'"),
        ({"measures": ["profit"]}, "has no measure 'profit'"),
        ({"type": "table", "dimensions": ["agent_type"]}, "has no dimension 'agent_type'"),
        ({"granularity": "day"}, "has no granularity 'day'"),
        ({"filters": {"planet": ["mars"]}}, "cannot filter on 'planet'"),
    ],
)
def test_widgets_the_cube_cannot_answer_are_named(widget, words):
    problems = check_dashboard(parse_dashboard(saved(**widget)), CUBES)
    assert len(problems) == 1 and words in problems[0] and "widget 'n'" in problems[0]


def test_the_declared_dashboards_fit_the_declared_cubes_and_validate_names_a_bad_one(tmp_path: Path):
    from streams.worker import code_view

    real = load_topology(REPO_ROOT / "topology.yaml")
    assert {d.id for d in real.dashboards} >= {"tasks", "response-times", "cost"}
    assert validate(real, code_view()) == []
    data = yaml.safe_load((REPO_ROOT / "topology.yaml").read_text())
    data["dashboards"][0]["widgets"][0]["measures"] = ["profit"]
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data))
    view = code_view()
    problems = [str(p) for p in validate(load_topology(path), CodeView(view.agents, view.tables, view.schemas))]
    assert problems == ["dashboards: dashboard 'tasks' widget 'total': cube 'task_cube' has no measure 'profit' (it has: " + ", ".join(real.cubes[0].measures) + ")"]


def test_a_relative_window_ends_at_the_end_of_the_current_bucket():
    now = dt.datetime(2025, 3, 1, 10, 17, 5, tzinfo=dt.timezone.utc)
    assert window("6h", "hour", now) == (dt.datetime(2025, 3, 1, 5, tzinfo=dt.timezone.utc), dt.datetime(2025, 3, 1, 11, tzinfo=dt.timezone.utc))
    assert window("15m", "day", now)[1] - window("15m", "day", now)[0] == dt.timedelta(days=1)


# ------------------------------------------------------------------ the decider


def decide(command_type: str, data: dict, state: DashboardState | None = None):
    aggregate = dashboard_aggregate()
    return aggregate.decide(Command(command_type, data, "t1"), state or aggregate.initial(), {"cubes": CUBES})


def test_save_then_delete():
    events = decide("SaveDashboard", saved())
    assert [e.type for e in events] == ["DashboardSaved"]
    assert events[0].data["dashboard_id"] == "ops" and events[0].data["widgets"][0]["measures"] == ["task_count"]
    REG.validate("DashboardSaved", events[0].data)  # the event carries exactly its schema's fields
    state = replay(DASHBOARD, events)
    assert state.exists
    deleted = decide("DeleteDashboard", {"dashboard_id": "ops"}, state)
    assert [e.type for e in deleted] == ["DashboardDeleted"]
    assert not replay(DASHBOARD, [*events, *deleted]).exists


def test_save_refuses_what_the_cubes_lack_and_delete_what_does_not_exist():
    refused = decide("SaveDashboard", saved(measures=["profit"], type="table"))
    assert refused.code == RejectionCode.VALIDATION_FAILED and "has no measure 'profit'" in refused.message
    shape = decide("SaveDashboard", saved(type="chart"))
    assert shape.code == RejectionCode.VALIDATION_FAILED and "a chart needs a dimension" in shape.message
    missing = decide("DeleteDashboard", {"dashboard_id": "ops"})
    assert missing.code == RejectionCode.NOT_FOUND


def test_the_registered_aggregate_owns_the_dashboard_commands_and_streams():
    assert aggregate_for("SaveDashboard") is DASHBOARD and aggregate_for("DeleteDashboard") is DASHBOARD
    assert aggregate_for_stream("dashboard-ops") is DASHBOARD
    assert DASHBOARD.events == {"DashboardSaved", "DashboardDeleted"}
    cubes = {c.name: c for c in load_topology(REPO_ROOT / "topology.yaml").cubes}  # as the command handler passes them
    events = DASHBOARD.decide(Command("SaveDashboard", saved(), "t1"), DASHBOARD.initial(), {"cubes": cubes})
    assert [e.type for e in events] == ["DashboardSaved"]
    refused = DASHBOARD.decide(Command("SaveDashboard", saved(), "t1"), DASHBOARD.initial(), {})  # no cubes given: nothing fits
    assert isinstance(refused, Rejection)
    assert DASHBOARD.load(json.loads(json.dumps(DASHBOARD.dump(replay(DASHBOARD, events))))).exists


# ------------------------------------------------------------------ saved dashboards, pages


def archived(rows: list[tuple[str, str, int, str, dict]]) -> pa.Table:
    """Archive rows (tenant, stream, version, type, payload) as ``read_archive`` returns them."""
    out = {name: [] for name in READ_COLUMNS}
    for offset, (tenant, stream, version, kind, payload) in enumerate(rows):
        value, headers = REG.encode(kind, payload)
        meta = EventMeta(event_id=f"e{offset}", tenant_id=tenant, stream_id=stream, version=version,
                         occurred_at=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc), command_id="c")
        row = dict(tenant=tenant, stream_id=stream, version=version, event_type=kind, schema_version=1, event_id=meta.event_id,
                   command_id="c", occurred_at=meta.occurred_at, appended_at=meta.occurred_at, value=value, kafka_partition=0, kafka_offset=offset,
                   schema_id=int.from_bytes(value[1:5], "big"))
        for name in READ_COLUMNS:
            out[name].append(row[name])
    return pa.table({name: pa.array(values, kind) for (name, kind), values in zip(READ_COLUMNS.items(), out.values())})


def payload(dashboard_id: str, name: str = "Ops", roles: list[str] | None = None) -> dict:
    return saved_payload(parse_dashboard({**saved(dashboard_id), "name": name, "roles": roles or ["*"]}))


def test_saved_dashboards_fold_to_the_last_event_per_stream_and_stay_with_their_tenant():
    table = archived([
        ("A", "dashboard-ops", 1, "DashboardSaved", payload("ops", "first")),
        ("A", "dashboard-ops", 2, "DashboardSaved", payload("ops", "second")),
        ("A", "dashboard-old", 1, "DashboardSaved", payload("old")),
        ("A", "dashboard-old", 2, "DashboardDeleted", {"dashboard_id": "old"}),
        ("B", "dashboard-b", 1, "DashboardSaved", payload("b", roles=["admin"])),
        ("B", "dashboard-odd", 1, "DashboardSaved", payload("other-id")),
    ])
    found = saved_dashboards(table, REG)
    assert sorted(found) == [("A", "ops"), ("B", "b"), ("B", "odd")]
    assert found[("A", "ops")].spec.name == "second"
    assert found[("B", "odd")].spec is None and "carries the id 'other-id'" in found[("B", "odd")].error

    defaults = load_topology(REPO_ROOT / "topology.yaml").dashboards
    for_a = catalogue(defaults, found, "A")
    assert [e.id for e in for_a] == [d.id for d in defaults] + ["ops"]
    assert "b" not in [e.id for e in catalogue(defaults, found, "A", "admin")]
    assert [e.id for e in catalogue(defaults, found, "B", "viewer")][-1] == "odd"  # broken: listed with its reason
    assert "b" in [e.id for e in catalogue(defaults, found, "B", "admin")]
    assert [e.id for e in catalogue(defaults, found, None)] == [d.id for d in defaults]
    assert find(for_a, "ops").name == "second"
    with pytest.raises(UnknownDashboard):
        find(for_a, "b")
    with pytest.raises(BrokenDashboardError, match="other-id"):
        find(catalogue(defaults, found, "B"), "odd")


def test_pages_escape_what_people_typed():
    spec = parse_dashboard({"id": "x", "name": "<script>alert(1)</script>", "widgets": [{**WIDGET, "title": "</script><b>"}]})
    page = render_dashboard(spec, "t<1>", None, None, None, "6h")
    assert "<script>alert" not in page and "</script><b>" not in page
    config = page.split('id="dashboard-config">', 1)[1].split("</script>", 1)[0]
    assert json.loads(config)["dashboard"]["widgets"][0]["title"] == "</script><b>"
    assert '<script src="/static/plotly.min.js">' in page and "http" not in page.split("<body>", 1)[1].split('id="dashboard-config"')[0]
    listing = render_list(catalogue([spec], {}, "t1"), "t1", None)
    assert "&lt;script&gt;" in listing and "/dashboards/x?tenant=t1" in listing


def test_the_plotly_bundle_ships_in_the_package():
    bundle = plotly_bundle()
    assert bundle.stat().st_size > 1_000_000 and b"plotly" in bundle.read_bytes()[:2000].lower()


# ------------------------------------------------------------------ Grafana


def test_grafana_panels_run_the_cube_sql():
    import re

    from sinks.cube_query import build_query
    from sinks.grafana import GrafanaExportError, provisioning

    topology = load_topology(REPO_ROOT / "topology.yaml")
    cubes = {c.name: c for c in topology.cubes}
    spec = parse_dashboard({"id": "d", "name": "D", "widgets": [
        {**WIDGET, "type": "table", "measures": ["cost", "task_count"], "dimensions": ["region"], "filters": {"agent_type": ["llm", "it's"]}},
        {**WIDGET, "id": "t", "type": "chart", "dimensions": ["time"], "granularity": "minute"},
    ]})
    files = provisioning(spec, cubes, "acme")
    assert sorted(files) == ["dashboards/agentstream-d-acme.json", "dashboards/agentstream.yaml", "datasources/agentstream.yaml"]
    model = json.loads(files["dashboards/agentstream-d-acme.json"])
    assert [p["type"] for p in model["panels"]] == ["table", "timeseries"]
    for panel, widget in zip(model["panels"], spec.widgets):
        raw = panel["targets"][0]["rawSql"]
        start = dt.datetime(1970, 1, 2, tzinfo=dt.timezone.utc)
        step = dt.timedelta(hours=1) if widget.granularity == "hour" else dt.timedelta(minutes=1)
        built = build_query(cubes["task_cube"], widget.measures, widget.dimensions, widget.filters or None, (start + step, start + 2 * step), widget.granularity, "acme")
        assert re.sub(r"\{(\w+):[^{}]+\}", lambda m: "<" + m.group(1) + ">", built.sql) == (
            raw.replace("$__fromTime", "<t_start>").replace("$__toTime", "<t_end>").replace("'acme'", "<tenant>")
            .replace("['llm', 'it\\'s']", "<f0>")
        )
        assert built.rollup == widget.granularity
    assert "type: grafana-clickhouse-datasource" in files["datasources/agentstream.yaml"]
    with pytest.raises(GrafanaExportError, match="no measure 'profit'"):
        provisioning(parse_dashboard(saved(measures=["profit"])), cubes)
