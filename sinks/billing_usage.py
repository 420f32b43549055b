"""The usage table: every record of ``billing.usage`` in ClickHouse, exactly once; invoices are read from it.

The sink process writes it with the same protocol as the facts and the events archive
(``TableSink``: deterministic batches per partition, insert deduplication tokens, offsets
committed after the insert), so after crashes of the worker (the runtime commits each record
once) and of the sink (a re-sent batch carries its first token) every usage record is in the
table exactly once. One row per record (``schemas.billing.UsageRecord``), integer quantities, in
a MergeTree partitioned by billing month and ordered by (tenant, month, metric, key): an
invoice reads one tenant's month. No TTL: usage is kept as long as invoices may be asked for.
The table is declared as the ClickHouse sink of ``billing.usage`` in ``topology.yaml``; its
``target`` is ``database.table``.
"""

from __future__ import annotations

import re
from typing import Any

from clickhouse_connect.driver.client import Client
from pydantic import ValidationError

from connectors.clickhouse import run_ddl
from schemas.billing import UsageRecord
from schemas.topology import Topology
from sinks.clickhouse_schema import BOOKKEEPING_COLUMNS, DEDUP_WINDOW
from sinks.clickhouse_sink import InvalidRow, TableSink

BILLING_TOPIC = "billing.usage"

#: Usage columns the sink fills from a record, in insert order (bookkeeping columns follow).
USAGE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("key", "String"),
    ("tenant", "LowCardinality(String)"),
    ("metric", "LowCardinality(String)"),
    ("unit", "LowCardinality(String)"),
    ("quantity", "UInt64"),
    ("month", "LowCardinality(String)"),
    ("event_id", "String"),
    ("event_type", "LowCardinality(String)"),
    ("stream_id", "String"),
    ("occurred_at", "DateTime64(6, 'UTC')"),
)
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


class InvalidUsage(InvalidRow):
    """A record of ``billing.usage`` that is not a usage record."""


def usage_table(topology: Topology) -> str | None:
    """``database.table`` of the usage table (the ClickHouse sink of ``billing.usage``), or None."""
    for sink in topology.sinks:
        if sink.kind == "clickhouse" and BILLING_TOPIC in sink.inputs:
            if "." not in sink.target:
                raise ValueError(f"sink '{sink.name}': the usage table target must be 'database.table', got {sink.target!r}")
            return sink.target
    return None


def usage_statements(table: str) -> list[str]:
    """The CREATE statements of the usage table (``IF NOT EXISTS``)."""
    database = table.split(".", 1)[0]
    columns = ",\n    ".join(f"`{n}` {t}" for n, t in (*USAGE_COLUMNS, *BOOKKEEPING_COLUMNS))
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}",
        f"CREATE TABLE IF NOT EXISTS {table} (\n    {columns}\n)\n"
        "ENGINE = MergeTree\nPARTITION BY month\nORDER BY (tenant, month, metric, key)\n"
        f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}",
    ]


def ensure_usage(client: Client, table: str) -> list[str]:
    """Create the usage table when it is missing; return the statements that ran (idempotent)."""
    return run_ddl(client, usage_statements(table))


def usage_row(raw: bytes | str) -> list[Any]:
    """The table row of a ``billing.usage`` record value (JSON); InvalidUsage if it is none."""
    try:
        record = UsageRecord.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidUsage(str(exc)) from exc
    return [
        record.key, record.tenant, record.metric, record.unit, record.quantity, record.month, record.event_id,
        record.event_type, record.stream_id, record.occurred_at,
    ]


class UsageSink(TableSink):
    """The exactly-once writer of usage records (``add`` takes the record's JSON value) into the usage table."""

    keeps_prefix = True  # no TTL: a table that lost rows is re-read from the first one it lacks

    def __init__(self, client: Client, table: str, **options: Any) -> None:
        super().__init__(client, table, BILLING_TOPIC, [n for n, _ in USAGE_COLUMNS], usage_row, **options)


def _literal(text: str) -> str:
    """``text`` as a ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def check_month(month: str) -> str:
    """``month`` if it is ``YYYY-MM`` (ValueError otherwise)."""
    if not _MONTH.match(month):
        raise ValueError(f"month must be YYYY-MM, got {month!r}")
    return month


def month_usage_sql(table: str, tenant: str, month: str) -> str:
    """A read-only SELECT of one tenant's month: (metric, unit, quantity, records) per metric."""
    return (
        f"SELECT metric, unit, sum(quantity) AS quantity, count() AS records FROM {table} "
        f"WHERE tenant = {_literal(tenant)} AND month = {_literal(check_month(month))} GROUP BY metric, unit ORDER BY metric"
    )
