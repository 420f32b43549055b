"""``agentstream drift replay|evaluate|list|status|latest``: backtest detectors on a file; read the alerts.

``list`` and ``status`` read the alerts table that the sink fills from ``alerts.drift``
(``sinks.drift_alerts``); ``latest`` reads the Redis read model (``streams.drift_latest``).
``replay`` and ``evaluate`` read one column of a CSV or Parquet file in row order and run it
through ``DriftMonitor``, the code path of the worker: each row becomes a task fact of one key, so transforms, warm-up,
the re-arm rule and the bad-value reasons are the worker's. Alerts are printed with the 0-based
row index that raised them; ``evaluate`` adds delay, false alarms, precision and recall against
labelled change points (``streams.drift.evaluation``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from schemas.settings import get_settings
from schemas.topology import DriftMetricSpec, DriftSpec, TopologyError, load_topology
from streams.cli.console import console, fail

drift_cli = typer.Typer(help="Backtest drift detectors on a CSV/Parquet column (the worker's code path, without Kafka).", no_args_is_help=True)

FileOption = typer.Option(None, "--file", "-f", help="Topology file (default: AGENTSTREAM_TOPOLOGY_PATH or ./topology.yaml).")
MetricOption = typer.Option(..., "--metric", "-m", help="response_time, cost or failure: which declared detector (and transform) to use.")
ColumnOption = typer.Option(None, "--column", "-c", help="Column to read (default: the metric's name, else the file's only or first column).")
DetectorOption = typer.Option(None, "--detector", "-d", help="Another river detector than the declared one, e.g. ADWIN.")
ParamOption = typer.Option([], "--param", "-p", help="k=v constructor parameter (repeatable); replaces the declared ones when --detector is given.")
TransformOption = typer.Option(None, "--transform", help="none, log or log1p instead of the declared transform.")


def read_column(path: Path, column: str | None, metric: str) -> list[Any]:
    """The values of one column of a CSV or Parquet file, in row order (missing cells as None)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not path.exists():
        raise ValueError(f"{path}: no such file")
    try:
        table = pq.read_table(path) if path.suffix.lower() in (".parquet", ".pq") else pacsv.read_csv(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise ValueError(f"{path}: cannot read it as {'Parquet' if path.suffix.lower() in ('.parquet', '.pq') else 'CSV'}: {exc}") from exc
    names = table.column_names
    if column is None:
        column = metric if metric in names else names[0]
    if column not in names:
        raise ValueError(f"{path}: no column '{column}' (columns: {', '.join(names)})")
    return table.column(column).to_pylist()


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``k=v`` pairs as constructor parameters; values are read as JSON when they parse (numbers, true, null), else as text."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {pair!r} is not k=v")
        try:
            params[key] = json.loads(text)
        except ValueError:
            params[key] = text
    return params


def metric_spec(topology_file: Path | None, metric: str, detector: str | None, params: list[str], transform: str | None) -> DriftMetricSpec:
    """The declared detector of ``metric``, with the command line's replacements, checked against river."""
    from streams.drift.catalog import check

    topology = load_topology(topology_file or get_settings().topology_path)
    if topology.drift is None:
        raise ValueError("the topology has no drift section")
    spec = topology.drift.metric(metric)
    changes: dict[str, Any] = {}
    given = parse_params(params)
    if detector is not None and detector != spec.detector:
        changes.update(detector=detector, params=given)
    elif given:
        changes["params"] = {**spec.params, **given}
    if transform is not None:
        changes["transform"] = transform
    spec = DriftMetricSpec.model_validate({**spec.model_dump(), **changes})
    problems = check(spec.metric, spec.detector, spec.params)
    if problems:
        raise ValueError("; ".join(problems))
    return spec


def replay_values(spec: DriftMetricSpec, values: list[Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(one alert dict per alert with its 0-based row ``index``, skipped values per reason): the monitor on one key."""
    from streams.drift.monitor import FACT_FIELDS, DriftMonitor

    monitor = DriftMonitor(DriftSpec(alerts_topic="alerts.drift", metrics=[spec]))
    field = FACT_FIELDS[spec.metric]
    alerts: list[dict[str, Any]] = []
    for row, value in enumerate(values):
        if spec.metric == "failure" and isinstance(value, (bool, int, float)) and not isinstance(value, str) and value in (0, 1):
            value = "failed" if value else "completed"
        for alert in monitor.observe({"tenant": "replay", "agent_type": "replay", field: value}, offset=row):
            record = alert.to_dict()
            alerts.append({"index": row, "metric": spec.metric, "detector": record["detector"], "before": record["before"], "after": record["after"]})
    return alerts, {reason: n for (_, reason), n in monitor.skipped.items()}


def _load(file: Path, column: str | None, metric: str, topology_file: Path | None, detector: str | None, params: list[str], transform: str | None) -> tuple[DriftMetricSpec, list[Any]]:
    try:
        spec = metric_spec(topology_file, metric, detector, params, transform)
        values = read_column(file, column, metric)
    except (TopologyError, KeyError, ValueError) as exc:
        fail(str(exc).strip('"'), code=2)
    return spec, values


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.6g}"


@drift_cli.command()
def replay(
    file: Path = typer.Argument(..., help="CSV or Parquet file; one row per value, in order."),
    metric: str = MetricOption,
    column: str | None = ColumnOption,
    detector: str | None = DetectorOption,
    param: list[str] = ParamOption,
    transform: str | None = TransformOption,
    topology_file: Path | None = FileOption,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per alert."),
) -> None:
    """Run a declared (or given) detector over a column and print one line per alert with its 0-based row index."""
    spec, values = _load(file, column, metric, topology_file, detector, param, transform)
    alerts, skipped = replay_values(spec, values)
    for alert in alerts:
        if as_json:
            typer.echo(json.dumps(alert))
        else:
            b, a = alert["before"], alert["after"]
            typer.echo(f"{alert['index']}\t{spec.metric}\t{spec.detector}\tbefore mean={_fmt(b['mean'])} n={b['count']}\tafter mean={_fmt(a['mean'])} n={a['count']}")
    if not as_json:
        note = "; skipped " + ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) if skipped else ""
        console.print(f"[dim]{len(alerts)} alert(s) in {len(values)} values ({spec.detector} {spec.params}, transform {spec.transform}){note}[/]", highlight=False)


def read_labels(labels: str) -> list[int]:
    """Change points from ``labels``: a file with one 0-based index per line (or a CSV column), or a comma-separated list."""
    path = Path(labels)
    if path.exists():
        if path.suffix.lower() in (".parquet", ".pq", ".csv"):
            raw = [v for v in read_column(path, None, "index") if v is not None]
        else:
            raw = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    else:
        raw = [part.strip() for part in labels.split(",") if part.strip()]
    try:
        return sorted({int(v) for v in raw})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"labels must be 0-based row indices: {exc}") from exc


@drift_cli.command()
def evaluate(
    file: Path = typer.Argument(..., help="CSV or Parquet file; one row per value, in order."),
    labels: str = typer.Option(..., "--labels", "-l", help="Change points: a file (one index per line, or a CSV/Parquet column) or a list like 3000,7000."),
    metric: str = MetricOption,
    column: str | None = ColumnOption,
    detector: str | None = DetectorOption,
    param: list[str] = ParamOption,
    transform: str | None = TransformOption,
    max_delay: int | None = typer.Option(None, "--max-delay", help="An alert later than this after a change does not count as detecting it."),
    topology_file: Path | None = FileOption,
    as_json: bool = typer.Option(False, "--json", help="Print the evaluation as JSON."),
) -> None:
    """Replay and score the alerts against labelled change points: delay, false alarms, precision, recall."""
    from streams.drift.evaluation import evaluate as score

    spec, values = _load(file, column, metric, topology_file, detector, param, transform)
    try:
        changes = read_labels(labels)
        alerts, skipped = replay_values(spec, values)
        result = score([a["index"] for a in alerts], changes, len(values), max_delay)
    except ValueError as exc:
        fail(str(exc), code=2)
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), "detector": spec.detector, "params": spec.params, "skipped": skipped}))
        return
    table = Table("change point", "detected at", "delay", title=f"{spec.metric}: {spec.detector} {spec.params}")
    for point, delay in zip(result.changes, result.delays):
        table.add_row(str(point), "-" if delay is None else str(point + delay), "missed" if delay is None else str(delay))
    console.print(table)
    precision = "n/a" if result.precision is None else f"{result.precision:.2f}"
    recall = "n/a" if result.recall is None else f"{result.recall:.2f}"
    console.print(
        f"alerts {len(result.alerts)}, detected {result.detected}/{len(result.changes)}, false alarms {result.false_alarms} "
        f"({result.false_alarms_per_100k:.2f} per 100,000 values), median delay {result.median_delay}, precision {precision}, recall {recall}",
        highlight=False,
    )


def _show(table: Any, as_json: bool, title: str) -> None:
    """A query result as a JSON array of objects (one per row) or a rich table."""
    from sinks.table_formats import table_json
    from streams.cli.analytics_commands import _emit

    if as_json:
        data = table_json(table)
        typer.echo(json.dumps([dict(zip(data["columns"], row)) for row in data["rows"]]))
    else:
        _emit(table, "table", None, title=title)


def _alerts_table() -> str:
    from sinks.drift_alerts import alerts_table

    try:
        table = alerts_table(load_topology(get_settings().topology_path))
    except (TopologyError, ValueError) as exc:
        fail(str(exc))
    if table is None:
        fail("topology.yaml declares no ClickHouse sink of alerts.drift", code=2)
    return table


@drift_cli.command("list")
def list_alerts(
    tenant: str | None = typer.Option(None, "--tenant", "-t", help="Only this tenant's alerts."),
    since: str | None = typer.Option(None, "--since", help="Only alerts whose fact is at or after this ISO time (UTC if no zone)."),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many alerts, newest first."),
    as_json: bool = typer.Option(False, "--json", help="JSON rows instead of a table."),
) -> None:
    """The newest drift and anomaly alerts, from ClickHouse (written by `agentstream sink`)."""
    import datetime as dt

    from schemas.messages import EnvelopeError, check_tenant_id
    from sinks.drift_alerts import list_sql
    from sinks.query_client import QueryClient
    from streams.cli.analytics_commands import _errors

    try:
        checked = check_tenant_id(tenant) if tenant is not None else None
        when = dt.datetime.fromisoformat(since) if since else None
    except (EnvelopeError, ValueError) as exc:
        fail(f"--tenant/--since: {exc}", code=2)
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    sql = list_sql(_alerts_table(), tenant=checked, since=when, limit=limit)
    with _errors():
        table = QueryClient(get_settings()).sql_table(sql)
    _show(table, as_json, "drift alerts")


@drift_cli.command()
def status(as_json: bool = typer.Option(False, "--json", help="JSON rows instead of a table.")) -> None:
    """Per tenant, agent type and metric: how many alerts, the last one and its detector, from ClickHouse."""
    from sinks.drift_alerts import status_sql
    from sinks.query_client import QueryClient
    from streams.cli.analytics_commands import _errors

    sql = status_sql(_alerts_table())
    with _errors():
        table = QueryClient(get_settings()).sql_table(sql)
    _show(table, as_json, "drift status")


@drift_cli.command()
def latest(
    tenant: str = typer.Option(..., "--tenant", "-t", help="The tenant whose latest alerts to show."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (agent type -> metric -> alert)."),
) -> None:
    """The latest alert per agent type and metric of one tenant, from the Redis read model."""
    from connectors.redis_store import redis_client
    from schemas.messages import EnvelopeError, check_tenant_id
    from streams.drift_latest import read_latest

    try:
        checked = check_tenant_id(tenant)
    except EnvelopeError as exc:
        fail(str(exc), code=2)
    import redis

    try:
        state = read_latest(redis_client(get_settings()), checked)
    except redis.RedisError as exc:
        fail(f"Redis: {exc}", code=3)
    if as_json:
        typer.echo(json.dumps(state))
        return
    table = Table("agent type", "metric", "event time", "detector", "before", "after / score", title=f"latest drift of {checked}")
    for agent_type, metrics in state.items():
        for metric, alert in sorted(metrics.items()):
            if alert.get("type") == "AnomalyDetected":
                table.add_row(agent_type, metric, str(alert.get("event_time")), alert["detector"], "", f"score {alert['score']:.3f}")
            else:
                b, a = alert["before"], alert["after"]
                table.add_row(agent_type, metric, str(alert.get("event_time")), alert["detector"], f"{_fmt(b['mean'])} (n={b['count']})", f"{_fmt(a['mean'])} (n={a['count']})")
    console.print(table)
