"""Dashboards as data: a dashboard is an id, a name, widgets and the roles that may see it.

A widget is one cube query (cube, measures, dimensions, granularity, a relative time range such
as ``24h``) drawn as a ``chart``, ``table``, ``metric`` or ``gauge``, refreshed every
``refresh_s`` seconds, narrowed by ``filters`` (dimension -> values). The same model serves the
defaults declared in ``topology.yaml`` (``dashboards:``, every tenant gets them) and the
dashboards a tenant saves with ``SaveDashboard`` (the ``DashboardSaved`` event carries exactly
these fields).

Two kinds of check, kept apart so a removed cube never stops a process: the *shape* (pydantic:
names, types, what each widget type needs) is checked when a dashboard is read; the *cube
references* (``check_dashboard``: does the cube exist and have this measure, dimension,
granularity?) are checked by ``topology validate`` and by the ``SaveDashboard`` decider, and a
page shows a widget whose cube went away as an error in that widget only.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

WidgetType = Literal["chart", "table", "metric", "gauge"]
#: The cube API's granularities (``sinks.cube_query.GRANULARITIES``), coarsest last.
GRANULARITY_SECONDS: dict[str, int] = {"minute": 60, "hour": 3600, "day": 86400}
_RANGE = re.compile(r"^([1-9][0-9]{0,4})([mhd])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
#: Every role may see a dashboard whose roles include this.
ANY_ROLE = "*"


class DashboardError(ValueError):
    """A dashboard is malformed (shape) or names something its cube does not have."""


def range_seconds(text: str) -> int:
    """Seconds of a relative range such as ``15m``, ``6h``, ``7d`` (DashboardError otherwise)."""
    match = _RANGE.match(text or "")
    if not match:
        raise DashboardError(f"range {text!r} is not a relative range like 15m, 6h or 7d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def window(range_text: str, granularity: str, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The half-open [from, to) a relative range covers at ``now``: ``to`` is the end of the
    current ``granularity`` bucket, so both bounds fall on bucket boundaries (roll-ups answer)."""
    step = GRANULARITY_SECONDS[granularity]
    seconds = int(now.timestamp())
    end = (seconds // step + (1 if seconds % step else 0)) * step
    start = end - max(range_seconds(range_text), step)
    start -= start % step
    utc = dt.timezone.utc
    return dt.datetime.fromtimestamp(start, utc), dt.datetime.fromtimestamp(end, utc)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WidgetSpec(_Spec):
    """One widget: a cube query, how to draw it, how often to refresh it.

    ``metric`` and ``gauge`` draw one number: one measure and no dimensions. A ``chart`` needs a
    dimension (``time`` draws lines over time, any other bars). ``gauge_max`` is the gauge's full
    scale (default 1, right for rates).
    """

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    title: str = Field(min_length=1, max_length=200)
    type: WidgetType
    cube: str = Field(min_length=1)
    measures: list[str] = Field(min_length=1)
    dimensions: list[str] = Field(default_factory=list)
    granularity: Literal["minute", "hour", "day"] = "hour"
    range: str = "24h"
    refresh_s: int = Field(default=60, ge=5, le=86400)
    filters: dict[str, list[str]] = Field(default_factory=dict)
    gauge_max: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _drawable(self) -> "WidgetSpec":
        range_seconds(self.range)
        if self.type in ("metric", "gauge") and (len(self.measures) != 1 or self.dimensions):
            raise ValueError(f"widget '{self.id}': a {self.type} shows one number: exactly one measure and no dimensions")
        if self.type == "chart" and not self.dimensions:
            raise ValueError(f"widget '{self.id}': a chart needs a dimension (time for lines over time, another for bars)")
        if "time" in self.filters:
            raise ValueError(f"widget '{self.id}': filter on time with range, not filters")
        for name, values in self.filters.items():
            if not values or any(not v or "," in v for v in values):
                raise ValueError(f"widget '{self.id}': filter {name!r} needs non-empty values without commas")
        return self


class DashboardSpec(_Spec):
    """A dashboard: id, name, widgets (ids unique) and the roles that may see it (``*``: all)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    widgets: list[WidgetSpec] = Field(min_length=1, max_length=50)
    roles: list[str] = Field(default_factory=lambda: [ANY_ROLE])

    @model_validator(mode="after")
    def _unique_widgets(self) -> "DashboardSpec":
        ids = [w.id for w in self.widgets]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"dashboard '{self.id}': widget id(s) {', '.join(twice)} listed twice")
        return self

    def visible_to(self, role: str | None) -> bool:
        """True when ``role`` may see it (no role given: the caller sees every dashboard)."""
        return role is None or ANY_ROLE in self.roles or role in self.roles


def parse_dashboard(data: Mapping[str, Any]) -> DashboardSpec:
    """A DashboardSpec from a mapping (``DashboardSaved`` payload or YAML), DashboardError naming each problem.

    The saved form names the id ``dashboard_id``; both spellings are accepted.
    """
    data = dict(data)
    if "dashboard_id" in data:
        data["id"] = data.pop("dashboard_id")
    widgets = data.get("widgets")
    if isinstance(widgets, list):
        data["widgets"] = [{k: v for k, v in w.items() if v is not None} if isinstance(w, dict) else w for w in widgets]
    try:
        return DashboardSpec.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(map(str, error["loc"]))
            lines.append(f"{where}: {error['msg']}" if where else error["msg"])
        raise DashboardError(f"dashboard {data.get('id')!r}: " + "; ".join(lines)) from exc


def saved_payload(spec: DashboardSpec) -> dict[str, Any]:
    """The ``SaveDashboard`` / ``DashboardSaved`` payload of ``spec`` (Avro field names)."""
    body = spec.model_dump(mode="json")
    body["dashboard_id"] = body.pop("id")
    return body


class CubeShape(_Spec):
    """What a widget may ask of a cube: its measures, dimensions and roll-ups (granularities)."""

    name: str
    measures: list[str]
    dimensions: list[str]
    rollups: list[str]


def check_dashboard(spec: DashboardSpec, cubes: Mapping[str, Any]) -> list[str]:
    """Every widget reference ``cubes`` (name -> anything with measures, dimensions, rollups:
    a CubeSpec or CubeShape) cannot answer; empty when all can.

    A widget's granularity must be one of its cube's roll-ups; filters must name a dimension.
    """
    problems: list[str] = []
    for widget in spec.widgets:
        where = f"dashboard '{spec.id}' widget '{widget.id}'"
        cube = cubes.get(widget.cube)
        if cube is None:
            problems.append(f"{where}: no cube named '{widget.cube}' (declared: {', '.join(sorted(cubes)) or 'none'})")
            continue
        problems += [f"{where}: cube '{widget.cube}' has no measure '{m}' (it has: {', '.join(cube.measures)})" for m in widget.measures if m not in cube.measures]
        problems += [f"{where}: cube '{widget.cube}' has no dimension '{d}' (it has: {', '.join(cube.dimensions)})" for d in widget.dimensions if d not in cube.dimensions]
        problems += [f"{where}: cube '{widget.cube}' cannot filter on '{d}' (it has: {', '.join(cube.dimensions)})" for d in widget.filters if d not in cube.dimensions]
        if widget.granularity not in cube.rollups:
            problems.append(f"{where}: cube '{widget.cube}' has no granularity '{widget.granularity}' (it has: {', '.join(cube.rollups)})")
    return problems


def check_dashboards(dashboards: Sequence[DashboardSpec], cubes: Mapping[str, Any]) -> list[str]:
    """Problems of declared dashboards: duplicate ids and every ``check_dashboard`` problem."""
    ids = [d.id for d in dashboards]
    problems = [f"dashboards: '{i}' is declared twice" for i in sorted({i for i in ids if ids.count(i) > 1})]
    for spec in dashboards:
        problems += check_dashboard(spec, cubes)
    return problems
