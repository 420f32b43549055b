"""A dashboard as Grafana provisioning files, for people who already run Grafana (pure: no I/O).

``provisioning(spec, cubes, ...)`` returns the files (relative path -> text) of Grafana's
provisioning layout: a ClickHouse data source (the ``grafana-clickhouse-datasource`` plugin), a
dashboard provider and the dashboard's JSON. Each panel's query *is* the cube query the sink runs
(``sinks.cube_query.build_query``) with its server-side parameters written in: the time bounds
become the plugin's ``$__fromTime`` / ``$__toTime`` macros, the tenant and filter values quoted
SQL literals. The roll-up read is the one of the widget's granularity (as on the sink's pages:
a bucket counts when its start lies in Grafana's time range).

A panel per widget: ``chart`` over time -> time series, other charts -> bar chart, ``table`` ->
table, ``metric`` -> stat, ``gauge`` -> gauge.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any, Mapping

from schemas.dashboards import GRANULARITY_SECONDS, DashboardSpec, WidgetSpec, check_dashboard, range_seconds
from schemas.topology import CubeSpec
from sinks.cube_query import build_query

DATASOURCE_UID = "agentstream-clickhouse"
PLUGIN = "grafana-clickhouse-datasource"
#: Grafana panel type per widget type (charts over time are time series, other charts bars).
PANELS = {"table": "table", "metric": "stat", "gauge": "gauge"}
_PARAM = re.compile(r"\{(\w+):([^{}]+)\}")


class GrafanaExportError(ValueError):
    """The dashboard cannot be exported: a widget names something its cube does not have."""


def _literal(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def panel_sql(cube: CubeSpec, widget: WidgetSpec, tenant: str | None) -> str:
    """The cube SQL of ``widget`` with its parameters written in for the Grafana ClickHouse plugin."""
    step = dt.timedelta(seconds=GRANULARITY_SECONDS[widget.granularity])
    epoch = dt.datetime(1970, 1, 2, tzinfo=dt.timezone.utc)  # aligned to the granularity, no coarser: its roll-up answers
    built = build_query(cube, widget.measures, widget.dimensions, widget.filters or None, (epoch + step, epoch + 2 * step), widget.granularity, tenant)
    macros = {"t_start": "$__fromTime", "t_end": "$__toTime"}

    def put(match: re.Match[str]) -> str:
        name = match.group(1)
        return macros[name] if name in macros else _literal(built.parameters[name])

    return _PARAM.sub(put, built.sql)


def _panel(index: int, cube: CubeSpec, widget: WidgetSpec, tenant: str | None) -> dict[str, Any]:
    over_time = widget.type == "chart" and "time" in widget.dimensions
    kind = "timeseries" if over_time else "barchart" if widget.type == "chart" else PANELS[widget.type]
    panel: dict[str, Any] = {
        "id": index + 1,
        "title": widget.title,
        "type": kind,
        "datasource": {"type": PLUGIN, "uid": DATASOURCE_UID},
        "gridPos": {"x": (index % 2) * 12, "y": (index // 2) * 8, "w": 12, "h": 8},
        "interval": f"{GRANULARITY_SECONDS[widget.granularity]}s",
        "targets": [
            {
                "refId": "A",
                "datasource": {"type": PLUGIN, "uid": DATASOURCE_UID},
                "editorType": "sql",
                "queryType": "timeseries" if over_time else "table",
                "format": 0 if over_time else 1,  # the plugin's Format: 0 time series, 1 table
                "rawSql": panel_sql(cube, widget, tenant),
            }
        ],
    }
    if widget.type == "gauge":
        panel["fieldConfig"] = {"defaults": {"min": 0, "max": widget.gauge_max or 1}, "overrides": []}
    return panel


def dashboard_json(spec: DashboardSpec, cubes: Mapping[str, CubeSpec], tenant: str | None = None) -> dict[str, Any]:
    """The Grafana dashboard model of ``spec`` (GrafanaExportError when a widget's cube cannot answer it)."""
    problems = check_dashboard(spec, cubes)
    if problems:
        raise GrafanaExportError("; ".join(problems))
    refresh = min(w.refresh_s for w in spec.widgets)
    longest = max(spec.widgets, key=lambda w: range_seconds(w.range))
    uid = f"agentstream-{spec.id}" + (f"-{re.sub(r'[^A-Za-z0-9_-]', '-', tenant)}" if tenant else "")
    return {
        "uid": uid[:40],
        "title": spec.name + (f" ({tenant})" if tenant else ""),
        "description": spec.description,
        "tags": ["agentstream"],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": f"{refresh}s",
        "time": {"from": f"now-{longest.range}", "to": "now"},
        "panels": [_panel(i, cubes[w.cube], w, tenant) for i, w in enumerate(spec.widgets)],
    }


def datasource_yaml(host: str = "clickhouse", port: int = 8123, user: str = "agentstream", password_env: str = "CLICKHOUSE_PASSWORD", database: str = "agentstream") -> str:
    """The data source provisioning file: ClickHouse over HTTP, the password from Grafana's environment."""
    return (
        "apiVersion: 1\n"
        "datasources:\n"
        "  - name: agentstream ClickHouse\n"
        f"    type: {PLUGIN}\n"
        f"    uid: {DATASOURCE_UID}\n"
        "    jsonData:\n"
        f"      host: {host}\n"
        f"      port: {port}\n"
        "      protocol: http\n"
        f"      username: {user}\n"
        f"      defaultDatabase: {database}\n"
        "    secureJsonData:\n"
        f"      password: ${{{password_env}}}\n"
    )


PROVIDER_YAML = (
    "apiVersion: 1\n"
    "providers:\n"
    "  - name: agentstream\n"
    "    folder: agentstream\n"
    "    type: file\n"
    "    options:\n"
    "      path: /etc/grafana/provisioning/dashboards\n"
)


def provisioning(spec: DashboardSpec, cubes: Mapping[str, CubeSpec], tenant: str | None = None, **datasource: Any) -> dict[str, str]:
    """The provisioning files of one dashboard: relative path -> text (see the module docstring)."""
    model = dashboard_json(spec, cubes, tenant)
    return {
        "datasources/agentstream.yaml": datasource_yaml(**datasource),
        "dashboards/agentstream.yaml": PROVIDER_YAML,
        f"dashboards/{model['uid']}.json": json.dumps(model, indent=2) + "\n",
    }
