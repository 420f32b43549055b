"""Scheduled exports: the crontab check, the export model and ``due_exports`` (pure)."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml
from pydantic import ValidationError

from schemas.exports import DueExport, ExportSpec, check_crontab, due_exports, last_fire
from schemas.topology import check_exports
from schemas.settings import REPO_ROOT
from schemas.topology import Topology, TopologyError, load_topology

UTC = dt.timezone.utc
REAL = REPO_ROOT / "topology.yaml"


def spec(**changes) -> ExportSpec:
    base = dict(name="daily", cube="task_cube", schedule="15 0 * * *", format="parquet", path="exports/{date}.parquet")
    return ExportSpec(**{**base, **changes})


def topology(*exports: ExportSpec) -> Topology:
    real = load_topology(REAL)
    return real.model_copy(update={"exports": list(exports)})


# --- crontab ---------------------------------------------------------------------------


@pytest.mark.parametrize("expr", ["15 0 * * *", "*/5 * * * *", "0 6 1 * mon", "0 0 * * 0-6", "30 2  *  * 1,3,5"])
def test_valid_crontabs_pass(expr):
    assert check_crontab(expr) == " ".join(expr.split())


@pytest.mark.parametrize(
    "expr, problem",
    [
        ("* * * *", "5 fields"),
        ("0 0 * * * *", "5 fields"),  # croniter would take a seconds field: refused
        ("", "5 fields"),
        ("61 * * * *", "not a valid crontab"),
        ("0 25 * * *", "not a valid crontab"),
        ("a b c d e", "not a valid crontab"),
        ("@daily", "5 fields"),
    ],
)
def test_malformed_crontabs_are_refused(expr, problem):
    with pytest.raises(ValueError, match=problem):
        check_crontab(expr)


def test_a_crontab_must_be_text():
    with pytest.raises(ValueError, match="crontab string"):
        check_crontab(15)  # type: ignore[arg-type]


# --- the model -------------------------------------------------------------------------


def test_an_export_spec_with_a_bad_schedule_names_it():
    with pytest.raises(ValidationError, match="must have 5 fields"):
        spec(schedule="0 0 * *")


@pytest.mark.parametrize(
    "changes, problem",
    [
        (dict(sql="SELECT 1"), "exactly one of 'cube' or 'sql'"),
        (dict(cube=None), "exactly one of 'cube' or 'sql'"),
        (dict(path="exports/daily.parquet"), "must contain {date}"),
        (dict(path="exports/{date}/{tenant}.parquet"), "only the {date} placeholder"),
        (dict(path="exports/{date}.csv"), "must end in .parquet"),
        (dict(format="xlsx", path="x/{date}.xlsx"), "format"),
        (dict(cube=None, sql="SELECT 1", measures=["cost"]), "cube exports only"),
        (dict(days=-1), "greater than or equal to 0"),
        (dict(name="bad name"), "pattern"),
        (dict(surprise=1), "Extra inputs"),
    ],
)
def test_malformed_export_specs_are_refused(changes, problem):
    with pytest.raises(ValidationError, match=problem):
        spec(**changes)


def test_target_and_time_range_follow_the_run_date():
    s = spec(days=2)
    at = dt.datetime(2025, 3, 10, 0, 15, tzinfo=UTC)
    assert s.target(at) == "exports/2025-03-10.parquet"
    assert s.time_range(at) == (dt.datetime(2025, 3, 8, tzinfo=UTC), dt.datetime(2025, 3, 10, tzinfo=UTC))
    assert spec().time_range(at) is None  # days=0: all time
    # another zone is converted to UTC first
    assert s.target(dt.datetime(2025, 3, 10, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))) == "exports/2025-03-09.parquet"


def test_the_real_topology_declares_a_valid_daily_parquet_export():
    real = load_topology(REAL)
    assert [e.name for e in real.exports] == ["task_cube_daily"]
    export = real.exports[0]
    assert export.cube == "task_cube" and export.format == "parquet" and export.granularity == "day"
    assert check_exports(real.exports, real.cubes) == []


def test_a_topology_file_with_a_bad_export_fails_to_load(tmp_path):
    data = yaml.safe_load(REAL.read_text())
    data["exports"][0]["schedule"] = "every day"
    bad = tmp_path / "topology.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(TopologyError, match="exports.0"):
        load_topology(bad)


def test_check_exports_finds_unknown_cubes_measures_and_duplicates():
    t = topology(
        spec(name="a", cube="nope"),
        spec(name="b", measures=["bogus"], dimensions=["planet"]),
        spec(name="c", cube=None, sql="SELECT 1"),
        spec(name="c", cube=None, sql="SELECT 2"),
    )
    problems = check_exports(t.exports, t.cubes)
    assert "export 'a': unknown cube 'nope'" in problems
    assert "export 'b': cube 'task_cube' has no measure 'bogus'" in problems
    assert "export 'b': cube 'task_cube' has no dimension 'planet'" in problems
    assert "exports: 'c' is declared twice" in problems
    assert len(problems) == 4


# --- when is an export due ---------------------------------------------------------------


def test_last_fire_is_at_or_before_now():
    assert last_fire("15 0 * * *", dt.datetime(2025, 1, 2, 0, 15, 0, tzinfo=UTC)) == dt.datetime(2025, 1, 2, 0, 15, tzinfo=UTC)
    assert last_fire("15 0 * * *", dt.datetime(2025, 1, 2, 0, 15, 59, 999, tzinfo=UTC)) == dt.datetime(2025, 1, 2, 0, 15, tzinfo=UTC)
    assert last_fire("15 0 * * *", dt.datetime(2025, 1, 2, 0, 14, 59, tzinfo=UTC)) == dt.datetime(2025, 1, 1, 0, 15, tzinfo=UTC)
    assert last_fire("*/5 * * * *", dt.datetime(2025, 1, 2, 10, 7, tzinfo=UTC)) == dt.datetime(2025, 1, 2, 10, 5, tzinfo=UTC)
    # naive = UTC
    assert last_fire("0 * * * *", dt.datetime(2025, 1, 2, 10, 30)) == dt.datetime(2025, 1, 2, 10, 0, tzinfo=UTC)


def test_an_export_that_never_ran_is_due_for_its_latest_fire_time():
    daily = spec()
    now = dt.datetime(2025, 1, 2, 14, 0, tzinfo=UTC)
    assert due_exports(topology(daily).exports, {}, now) == [DueExport(daily, dt.datetime(2025, 1, 2, 0, 15, tzinfo=UTC))]


def test_an_export_is_due_once_per_fire_time():
    daily = spec()
    t = topology(daily)
    fired = dt.datetime(2025, 1, 2, 0, 15, tzinfo=UTC)
    # it ran for today's fire time: not due again today
    assert due_exports(t.exports, {"daily": fired}, dt.datetime(2025, 1, 2, 23, 59, tzinfo=UTC)) == []
    # just before tomorrow's fire time: still not due
    assert due_exports(t.exports, {"daily": fired}, dt.datetime(2025, 1, 3, 0, 14, 59, tzinfo=UTC)) == []
    # at tomorrow's fire time: due, for that time
    assert due_exports(t.exports, {"daily": fired}, dt.datetime(2025, 1, 3, 0, 15, tzinfo=UTC)) == [DueExport(daily, fired + dt.timedelta(days=1))]


def test_missed_runs_are_caught_up_once_for_the_latest_fire_time():
    daily = spec()
    last = dt.datetime(2025, 1, 1, 0, 15, tzinfo=UTC)
    now = dt.datetime(2025, 1, 5, 8, 0, tzinfo=UTC)
    assert due_exports(topology(daily).exports, {"daily": last}, now) == [DueExport(daily, dt.datetime(2025, 1, 5, 0, 15, tzinfo=UTC))]


def test_due_exports_handles_each_export_and_naive_times():
    hourly = spec(name="hourly", schedule="0 * * * *")
    daily = spec(name="daily")
    t = topology(hourly, daily)
    now = dt.datetime(2025, 1, 2, 10, 30)  # naive: UTC
    last = {"hourly": dt.datetime(2025, 1, 2, 9, 0), "daily": dt.datetime(2025, 1, 2, 0, 15)}
    assert due_exports(t.exports, last, now) == [DueExport(hourly, dt.datetime(2025, 1, 2, 10, 0, tzinfo=UTC))]
    assert due_exports(topology().exports, {}, now) == []


def test_due_exports_is_pure():
    t = topology(spec())
    last = {"daily": dt.datetime(2025, 1, 1, 0, 15, tzinfo=UTC)}
    now = dt.datetime(2025, 1, 2, 1, 0, tzinfo=UTC)
    first = due_exports(t.exports, last, now)
    assert due_exports(t.exports, last, now) == first
    assert last == {"daily": dt.datetime(2025, 1, 1, 0, 15, tzinfo=UTC)}
