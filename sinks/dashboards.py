"""Dashboards for people: which ones a tenant sees, and the HTML that draws them (pure: no I/O).

Two sources, one catalogue: the defaults declared in ``topology.yaml`` (every tenant gets them)
and the dashboards tenants saved (``DashboardSaved`` / ``DashboardDeleted`` events, read from the
events archive the sink keeps; ``saved_dashboards`` folds them, the last event of a stream wins).
A saved dashboard is only ever listed for its own tenant; a saved one whose payload no longer
parses is listed as broken with the reason, and nothing else is affected.

A page is static HTML plus a JSON config (the dashboard, the tenant, the time range); the
browser script ``dashboard_static/dashboard.js`` fetches each widget's rows from the cube query
API (``GET /cubes/{name}?...&tenant=T``), so every number on a page comes from a query the cube
API builds from declared names, never from SQL in the page. The charting library is the
``plotly.min.js`` bundle of the installed ``plotly`` package, served by the sink itself: the
page needs no network beyond the sink.
"""

from __future__ import annotations

import html
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlencode

import pyarrow as pa

from schemas import SchemaError, SchemaRegistry
from schemas.dashboards import DashboardError, DashboardSpec, parse_dashboard
from sinks.events_archive import archive_headers

#: The events that make up saved dashboards.
DASHBOARD_EVENTS: tuple[str, ...] = ("DashboardSaved", "DashboardDeleted")
STATIC_DIR = Path(__file__).resolve().parent / "dashboard_static"
#: Time-range choices of the page's picker (relative to now).
RANGE_CHOICES: tuple[str, ...] = ("15m", "1h", "6h", "24h", "7d", "30d")


class UnknownDashboard(LookupError):
    """No dashboard of that id is visible to that tenant and role."""


class BrokenDashboardError(ValueError):
    """A saved dashboard exists but cannot be drawn (its saved payload is malformed)."""


@dataclass(frozen=True)
class Entry:
    """One dashboard a tenant may open: its spec (None when broken), where it comes from, why it is broken."""

    id: str
    origin: str  # "default" or "saved"
    spec: DashboardSpec | None
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        """The JSON description of the entry (what ``/dashboards?format=json`` lists)."""
        out: dict[str, Any] = {"id": self.id, "origin": self.origin}
        if self.spec is not None:
            out.update(name=self.spec.name, description=self.spec.description, roles=list(self.spec.roles), widgets=len(self.spec.widgets))
        if self.error is not None:
            out["error"] = self.error
        return out


def saved_dashboards(events: pa.Table, registry: SchemaRegistry) -> dict[tuple[str, str], Entry]:
    """(tenant, dashboard id) -> the saved dashboard, folded from archived dashboard events.

    ``events`` has the columns of ``sinks.events_archive.read_archive`` (Avro ``value`` included).
    Per stream the event of the highest version wins: ``DashboardSaved`` -> the dashboard (or a
    broken entry naming the problem), ``DashboardDeleted`` -> gone.
    """
    last: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
    for row in events.to_pylist():
        if row["event_type"] not in DASHBOARD_EVENTS or not row["stream_id"].startswith("dashboard-"):
            continue
        key = (row["tenant"], row["stream_id"])
        if key not in last or row["version"] > last[key][0]:
            last[key] = (row["version"], row)
    out: dict[tuple[str, str], Entry] = {}
    for (tenant, stream), (_, row) in sorted(last.items()):
        dashboard_id = stream[len("dashboard-") :]
        if row["event_type"] == "DashboardDeleted":
            continue
        try:
            _, payload = registry.decode(row["value"], archive_headers(row))
            spec = parse_dashboard(payload.model_dump())
        except (SchemaError, DashboardError) as exc:
            out[(tenant, dashboard_id)] = Entry(dashboard_id, "saved", None, f"saved dashboard '{dashboard_id}' cannot be read: {exc}")
            continue
        if spec.id != dashboard_id:
            out[(tenant, dashboard_id)] = Entry(dashboard_id, "saved", None, f"saved dashboard '{dashboard_id}' carries the id '{spec.id}'")
            continue
        out[(tenant, dashboard_id)] = Entry(dashboard_id, "saved", spec)
    return out


def catalogue(defaults: Sequence[DashboardSpec], saved: Mapping[tuple[str, str], Entry], tenant: str | None, role: str | None = None) -> list[Entry]:
    """The dashboards ``tenant`` may open as ``role``: the defaults, then its own saved ones.

    Without a tenant (an operator's all-tenant view) only the defaults. A saved dashboard with
    the id of a default one is listed as well, under its own origin; ``find`` prefers it.
    """
    entries = [Entry(d.id, "default", d) for d in defaults if d.visible_to(role)]
    if tenant is not None:
        for (owner, _), entry in sorted(saved.items()):
            if owner == tenant and (entry.spec is None or entry.spec.visible_to(role)):
                entries.append(entry)
    return entries


def find(entries: Iterable[Entry], dashboard_id: str) -> DashboardSpec:
    """The dashboard ``dashboard_id`` among ``entries`` (a saved one before a default one).

    UnknownDashboard when there is none, BrokenDashboardError when it cannot be drawn.
    """
    matches = sorted((e for e in entries if e.id == dashboard_id), key=lambda e: e.origin != "saved")
    if not matches:
        raise UnknownDashboard(f"no dashboard '{dashboard_id}' for this tenant")
    if matches[0].spec is None:
        raise BrokenDashboardError(matches[0].error or f"dashboard '{dashboard_id}' cannot be drawn")
    return matches[0].spec


# --- HTML --------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 18px;display:flex;gap:18px;align-items:center;flex-wrap:wrap}
header a{color:#9cc3ff}header h1{font-size:18px;margin:0}
form.range{display:flex;gap:6px;align-items:center;font-size:13px}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:14px;padding:14px}
.widget{background:#fff;border-radius:6px;box-shadow:0 1px 3px #0002;padding:10px;min-height:120px;overflow:auto}
.widget h2{font-size:14px;margin:0 0 6px}
.widget .body{min-height:80px}.plot{height:260px}
.metric{font-size:42px;font-weight:600;padding:20px 0}
.error{color:#a40000;background:#fff0f0;border:1px solid #f3b0b0;padding:8px;border-radius:4px;font-size:13px;white-space:pre-wrap}
.loading{color:#777;font-size:13px}
table.rows{border-collapse:collapse;font-size:13px;width:100%}table.rows td,table.rows th{border-bottom:1px solid #e3e5ea;padding:3px 6px;text-align:right}
table.rows td:first-child,table.rows th:first-child{text-align:left}
ul.list{padding:14px 30px}ul.list li{margin:8px 0}.muted{color:#777;font-size:13px}
"""


def _page(title: str, body: str, scripts: Sequence[str] = ()) -> str:
    tags = "".join(f'<script src="{html.escape(s)}"></script>' for s in scripts)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        '<link rel=icon href="data:,">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>{body}{tags}</body></html>"
    )


def _query(tenant: str | None, role: str | None, **extra: str | None) -> str:
    params = {k: v for k, v in {"tenant": tenant, "role": role, **extra}.items() if v}
    return f"?{urlencode(params)}" if params else ""


def render_list(entries: Sequence[Entry], tenant: str | None, role: str | None) -> str:
    """The ``/dashboards`` page: a link per dashboard, broken ones with their reason."""
    scope = f"tenant {html.escape(tenant)}" if tenant else "all tenants"
    items = []
    for entry in entries:
        if entry.spec is None:
            items.append(f'<li><b>{html.escape(entry.id)}</b> <span class="error">{html.escape(entry.error or "broken")}</span></li>')
            continue
        link = f"/dashboards/{html.escape(entry.id)}{html.escape(_query(tenant, role))}"
        items.append(
            f'<li><a href="{link}">{html.escape(entry.spec.name)}</a> <span class="muted">{entry.origin} · '
            f"{len(entry.spec.widgets)} widgets · {html.escape(entry.spec.description)}</span></li>"
        )
    body = f"<header><h1>Dashboards</h1><span>{scope}</span></header><ul class=list>{''.join(items) or '<li>none</li>'}</ul>"
    return _page("Dashboards", body)


def page_config(spec: DashboardSpec, tenant: str | None, time_from: str | None, time_to: str | None, range_text: str | None) -> dict[str, Any]:
    """What the page script needs: the dashboard, the tenant its queries are scoped to, the range."""
    return {"dashboard": spec.model_dump(mode="json"), "tenant": tenant, "from": time_from, "to": time_to, "range": range_text}


def _script_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>`` or ``<!--`` can close it)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_dashboard(spec: DashboardSpec, tenant: str | None, role: str | None, time_from: str | None, time_to: str | None, range_text: str | None) -> str:
    """The ``/dashboards/{id}`` page: a box per widget, a time range picker, the config and scripts."""
    scope = f"tenant {html.escape(tenant)}" if tenant else "all tenants"
    options = ['<option value="">each widget\'s own</option>'] + [
        f'<option value="{r}"{" selected" if r == range_text else ""}>last {r}</option>' for r in RANGE_CHOICES
    ]
    picker = (
        '<form class="range" method="get">'
        + (f'<input type=hidden name=tenant value="{html.escape(tenant)}">' if tenant else "")
        + (f'<input type=hidden name=role value="{html.escape(role)}">' if role else "")
        + f'<label>range <select name="range" id="range">{"".join(options)}</select></label>'
        + f'<label>from <input name="from" id="from" size=22 placeholder="ISO time" value="{html.escape(time_from or "")}"></label>'
        + f'<label>to <input name="to" id="to" size=22 placeholder="ISO time" value="{html.escape(time_to or "")}"></label>'
        + "<button type=submit>apply</button></form>"
    )
    boxes = "".join(
        f'<section class="widget" id="w-{html.escape(w.id)}" data-widget="{html.escape(w.id)}" data-type="{w.type}" data-status="loading">'
        f'<h2>{html.escape(w.title)}</h2><div class="body"><div class="loading">loading…</div></div></section>'
        for w in spec.widgets
    )
    body = (
        f'<header><h1>{html.escape(spec.name)}</h1><span>{scope}</span>'
        f'<a href="/dashboards{html.escape(_query(tenant, role))}">all dashboards</a>{picker}</header>'
        f"<main>{boxes}</main>"
        f'<script type="application/json" id="dashboard-config">{_script_json(page_config(spec, tenant, time_from, time_to, range_text))}</script>'
    )
    return _page(spec.name, body, ["/static/plotly.min.js", "/static/dashboard.js"])


def render_error(status: int, message: str) -> str:
    """A page that says what went wrong (unknown dashboard, broken dashboard, bad parameter)."""
    return _page(f"Error {status}", f'<header><h1>Dashboards</h1><a href="/dashboards">all dashboards</a></header><p class="error" style="margin:14px">{html.escape(message)}</p>')


def plotly_bundle() -> Path:
    """The ``plotly.min.js`` shipped inside the installed ``plotly`` package (FileNotFoundError if absent)."""
    found = importlib.util.find_spec("plotly")
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError("the plotly package is not installed (pip install plotly)")
    path = Path(list(found.submodule_search_locations)[0]) / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the plotly package has no bundled plotly.min.js")
    return path
