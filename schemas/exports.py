"""Scheduled exports declared in ``topology.yaml`` (``exports:``): what they are and when they are due.

An export writes the result of a cube query or of a read-only SQL query to a CSV or Parquet
file on a crontab schedule (5 fields, evaluated in UTC). This module is pure: the models,
the crontab check and ``due_exports``. Running them is ``sinks.export_runner``.

When is an export due? When its schedule fired at some minute ``t`` with
``last_run < t <= now``; it then runs once for the *latest* such ``t`` (missed runs are not
back-filled one by one), and ``{date}`` in its path is ``t``'s UTC date. An export that never
ran is due at once (for its latest fire time), so a fresh deployment produces today's file.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, model_validator

UTC = dt.timezone.utc


def check_crontab(expr: str) -> str:
    """``expr`` if it is a valid 5-field crontab (minute hour day-of-month month day-of-week).

    Raises ValueError naming the problem otherwise (wrong number of fields, bad field).
    """
    if not isinstance(expr, str):
        raise ValueError(f"schedule must be a crontab string, got {expr!r}")
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"schedule {expr!r} must have 5 fields (minute hour day-of-month month day-of-week), it has {len(fields)}")
    if not croniter.is_valid(" ".join(fields)):
        raise ValueError(f"schedule {expr!r} is not a valid crontab expression")
    return " ".join(fields)


class ExportSpec(BaseModel):
    """One scheduled export: a cube query or a read-only SQL query, written to ``path`` as CSV/Parquet.

    ``path`` must contain ``{date}`` (the UTC date of the scheduled run, ``YYYY-MM-DD``) and end
    in the format's suffix; a relative path is relative to the settings' ``data_dir``. For a cube
    export, ``measures``/``dimensions`` default to all the cube declares, and ``days`` > 0 limits
    the rows to the ``days`` whole UTC days before the run date (0: all time).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    schedule: str
    format: Literal["csv", "parquet"]
    path: str
    cube: str | None = None
    sql: str | None = None
    measures: list[str] = Field(default_factory=list)
    dimensions: list[str] = Field(default_factory=list)
    granularity: Literal["minute", "hour", "day"] = "day"
    days: int = Field(default=0, ge=0)
    tenant: str | None = None
    filters: dict[str, list[str]] = Field(default_factory=dict)
    description: str = ""

    @model_validator(mode="after")
    def _shape(self) -> "ExportSpec":
        problems: list[str] = []
        try:
            check_crontab(self.schedule)
        except ValueError as exc:
            problems.append(str(exc))
        if (self.cube is None) == (self.sql is None):
            problems.append("declare exactly one of 'cube' or 'sql'")
        if self.sql is not None and (self.measures or self.dimensions or self.days or self.tenant or self.filters):
            problems.append("measures, dimensions, days, tenant and filters apply to cube exports only")
        if "{date}" not in self.path:
            problems.append(f"path {self.path!r} must contain {{date}} (each run writes its own file)")
        elif re.search(r"\{(?!date\})[^}]*\}", self.path):
            problems.append(f"path {self.path!r} may use only the {{date}} placeholder")
        if not self.path.endswith(f".{self.format}"):
            problems.append(f"path {self.path!r} must end in .{self.format} (the format)")
        if problems:
            raise ValueError(f"export '{self.name}': " + "; ".join(problems))
        return self

    def target(self, at: dt.datetime) -> str:
        """The path of the run scheduled at ``at`` (``{date}`` filled with its UTC date)."""
        return self.path.replace("{date}", _utc(at).date().isoformat())

    def time_range(self, at: dt.datetime) -> tuple[dt.datetime, dt.datetime] | None:
        """For ``days`` > 0: [run date - days, run date) in UTC; None (all time) otherwise."""
        if not self.days:
            return None
        end = dt.datetime.combine(_utc(at).date(), dt.time(), UTC)
        return end - dt.timedelta(days=self.days), end


@dataclass(frozen=True)
class DueExport:
    """An export to run now, for the schedule's fire time ``at`` (UTC)."""

    spec: ExportSpec
    at: dt.datetime


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def last_fire(schedule: str, now: dt.datetime) -> dt.datetime:
    """The latest minute at or before ``now`` (UTC) at which ``schedule`` fires."""
    floor = _utc(now).replace(second=0, microsecond=0)
    prev = croniter(check_crontab(schedule), floor + dt.timedelta(minutes=1)).get_prev(dt.datetime)
    return _utc(prev)


def due_exports(exports: Sequence[ExportSpec], last_run: Mapping[str, dt.datetime], now: dt.datetime) -> list[DueExport]:
    """The ``exports`` due at ``now`` given when each last ran (pure).

    ``last_run`` maps an export name to the fire time of its last successful run (naive =
    UTC); a missing name has never run. See the module docstring for the rule.
    """
    due: list[DueExport] = []
    for export in exports:
        fired = last_fire(export.schedule, now)
        previous = last_run.get(export.name)
        if previous is None or _utc(previous) < fired:
            due.append(DueExport(export, fired))
    return due
