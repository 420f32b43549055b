"""Drift and anomaly alerts in ClickHouse: ``alerts.drift`` into one table, exactly once.

The sink process writes it with the facts' protocol (``TableSink``: deterministic batches per
partition, insert deduplication tokens, offsets committed after the insert), so a crash never
doubles an alert. One row per alert (``DriftDetected`` or ``AnomalyDetected``, JSON as
``streams.drift.alerts`` writes them): tenant, agent type, kind, metric (``anomaly`` for an
anomaly), detector, the before/after means and counts (drift) or the score (anomaly), the fact's
event time and source position, and the whole alert as JSON. The table is declared as a
ClickHouse sink of ``alerts.drift`` in ``topology.yaml`` (``target`` is ``database.table``);
``agentstream drift list|status`` read it with the queries below.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any, Mapping

from clickhouse_connect.driver.client import Client

from connectors.clickhouse import run_ddl
from schemas.topology import Topology
from sinks.clickhouse_schema import BOOKKEEPING_COLUMNS, DEDUP_WINDOW
from sinks.clickhouse_sink import InvalidRow, TableSink

ALERTS_TOPIC = "alerts.drift"
KINDS = {"DriftDetected": "drift", "AnomalyDetected": "anomaly"}

#: Alert columns the sink fills from a record, in insert order (bookkeeping columns follow).
ALERT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("alert_id", "String"),
    ("kind", "Enum8('drift' = 1, 'anomaly' = 2)"),
    ("tenant", "LowCardinality(String)"),
    ("agent_type", "LowCardinality(String)"),
    ("metric", "LowCardinality(String)"),
    ("detector", "LowCardinality(String)"),
    ("event_time", "DateTime64(3, 'UTC')"),
    ("before_mean", "Float64"),
    ("before_count", "UInt64"),
    ("after_mean", "Float64"),
    ("after_count", "UInt64"),
    ("score", "Float64"),
    ("source_partition", "Int32"),
    ("source_offset", "Int64"),
    ("alert", "String"),
)


class InvalidAlert(InvalidRow):
    """A record of ``alerts.drift`` that is not an alert the table can hold."""


def alerts_table(topology: Topology) -> str | None:
    """``database.table`` of the alerts (the ClickHouse sink of ``alerts.drift``), or None."""
    for sink in topology.sinks:
        if sink.kind == "clickhouse" and ALERTS_TOPIC in sink.inputs:
            if "." not in sink.target:
                raise ValueError(f"sink '{sink.name}': the drift alerts target must be 'database.table', got {sink.target!r}")
            return sink.target
    return None


def alerts_statements(table: str) -> list[str]:
    """The CREATE statements of the alerts table (``IF NOT EXISTS``)."""
    database = table.split(".", 1)[0]
    columns = ",\n    ".join(f"`{n}` {t}" for n, t in (*ALERT_COLUMNS, *BOOKKEEPING_COLUMNS))
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}",
        f"CREATE TABLE IF NOT EXISTS {table} (\n    {columns}\n)\n"
        "ENGINE = MergeTree\nPARTITION BY toYYYYMM(event_time)\n"
        "ORDER BY (tenant, agent_type, event_time, alert_id)\n"
        f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}",
    ]


def ensure_alerts(client: Client, table: str) -> list[str]:
    """Create the alerts table, or add the columns it lacks; return the statements that ran (idempotent)."""
    database, name = table.split(".", 1)
    have = {
        row[0]
        for row in client.query(
            "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}", parameters={"db": database, "t": name}
        ).result_rows
    }
    if not have:
        return run_ddl(client, alerts_statements(table))
    return run_ddl(client, [f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS `{n}` {t}" for n, t in (*ALERT_COLUMNS, *BOOKKEEPING_COLUMNS) if n not in have])


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else math.nan


def alert_row(alert: Mapping[str, Any]) -> list[Any]:
    """The table row of one alert (the JSON value of an ``alerts.drift`` record); InvalidAlert if it is not one."""
    if not isinstance(alert, Mapping):
        raise InvalidAlert(f"an alert is a JSON object, got {type(alert).__name__}")
    kind = KINDS.get(alert.get("type"))  # type: ignore[arg-type]
    if kind is None:
        raise InvalidAlert(f"unknown alert type {alert.get('type')!r} (known: {', '.join(KINDS)})")
    missing = [k for k in ("alert_id", "tenant", "agent_type", "detector") if not isinstance(alert.get(k), str)]
    if missing:
        raise InvalidAlert(f"{alert.get('type')}: missing {', '.join(missing)}")
    try:
        when = dt.datetime.fromisoformat(alert["event_time"]) if alert.get("event_time") else dt.datetime.fromtimestamp(0, dt.timezone.utc)
    except (TypeError, ValueError) as exc:
        raise InvalidAlert(f"{alert['alert_id']}: bad event_time {alert.get('event_time')!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    before, after, source = alert.get("before") or {}, alert.get("after") or {}, alert.get("source") or {}
    return [
        alert["alert_id"], kind, alert["tenant"], alert["agent_type"], alert.get("metric") or "anomaly", alert["detector"],
        when.astimezone(dt.timezone.utc),
        _number(before.get("mean")), int(before.get("count") or 0), _number(after.get("mean")), int(after.get("count") or 0),
        _number(alert.get("score")),
        int(source.get("partition") if source.get("partition") is not None else -1), int(source.get("offset") if source.get("offset") is not None else -1),
        json.dumps(alert, separators=(",", ":")),
    ]


class AlertsSink(TableSink):
    """The exactly-once writer of ``alerts.drift`` records (``add`` takes the decoded JSON) into the alerts table."""

    def __init__(self, client: Client, table: str, **options: Any) -> None:
        super().__init__(client, table, ALERTS_TOPIC, [n for n, _ in ALERT_COLUMNS], alert_row, **options)


def list_sql(table: str, *, tenant: str | None = None, since: dt.datetime | None = None, limit: int = 100) -> str:
    """A read-only SELECT of the newest alerts (newest first). ``tenant`` must be a checked tenant id."""
    where = ["1"]
    if tenant is not None:
        if "'" in tenant or "\\" in tenant:
            raise ValueError(f"bad tenant id {tenant!r}")
        where.append(f"tenant = '{tenant}'")
    if since is not None:
        stamp = since.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        where.append(f"event_time >= toDateTime64('{stamp}', 3, 'UTC')")
    return (
        "SELECT event_time, tenant, agent_type, kind, metric, detector, before_mean, before_count, after_mean, after_count, score, alert_id "
        f"FROM {table} WHERE {' AND '.join(where)} ORDER BY event_time DESC, alert_id LIMIT {int(limit)}"
    )


def status_sql(table: str) -> str:
    """A read-only SELECT of the latest alert per (tenant, agent_type, metric), with how many there were."""
    return (
        "SELECT tenant, agent_type, metric, count() AS alerts, max(event_time) AS last_alert, "
        "argMax(detector, event_time) AS detector, argMax(after_mean, event_time) AS last_after_mean "
        f"FROM {table} GROUP BY tenant, agent_type, metric ORDER BY last_alert DESC"
    )
