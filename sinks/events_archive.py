"""The events archive: every event of ``events.platform`` in one ClickHouse table, exactly once.

The sink process writes it with the same protocol as the facts (``TableSink``: deterministic
batches per partition, insert deduplication tokens, offsets committed after the insert), so the
archive of a partition is always a *prefix* of that partition: every event at or below the
partition's highest archived offset is in the table. ``EventStore`` relies on that for its fast
reads: archive rows, then the partition's tail in Kafka after the archived position.

One row per event: tenant, stream, version, type, the writer's schema version, ids, the time the
decider gave the event (``occurred_at``), the time Kafka appended it (``appended_at``), the
payload as JSON text read at the newest schema version (for SQL), and the record's Avro bytes
exactly as written (``value``, so a reader decodes it like a Kafka record, upcasters included).
``schema_id`` is the registry id the value is framed with (Confluent wire format); 0 marks an
event written before the wire format (schemaless Avro, its version in a header), whose headers
``archive_headers`` rebuilds that way.
The table is declared as a ClickHouse sink of ``events.platform`` in ``topology.yaml``; its
``target`` is ``database.table``. It has no TTL: it is kept as long as the events.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Mapping, Sequence

import pyarrow as pa
from clickhouse_connect.driver.client import Client

from connectors.clickhouse import run_ddl
from schemas import SchemaError, SchemaRegistry, default_registry
from schemas.registry import SCHEMA_HEADER, VERSION_HEADER
from sinks.clickhouse_schema import BOOKKEEPING_COLUMNS, DEDUP_WINDOW
from sinks.clickhouse_sink import InvalidRow, TableSink
from schemas.messages import EnvelopeError, EventMeta
from schemas.topology import Topology

EVENTS_TOPIC = "events.platform"

#: Archive columns the sink fills from a record, in insert order (bookkeeping columns follow).
ARCHIVE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("tenant", "LowCardinality(String)"),
    ("stream_id", "String"),
    ("version", "UInt64"),
    ("event_type", "LowCardinality(String)"),
    ("schema_version", "UInt16"),
    ("schema_id", "UInt32"),
    ("event_id", "String"),
    ("command_id", "String"),
    ("occurred_at", "DateTime64(6, 'UTC')"),
    ("appended_at", "DateTime64(3, 'UTC')"),
    ("payload", "String"),
    ("value", "String CODEC(ZSTD(3))"),
)

#: What a read of the archive returns, in this order, as Arrow types.
READ_COLUMNS: Mapping[str, pa.DataType] = {
    "tenant": pa.string(), "stream_id": pa.string(), "version": pa.int64(), "event_type": pa.string(),
    "schema_version": pa.int32(), "schema_id": pa.int64(), "event_id": pa.string(), "command_id": pa.string(),
    "occurred_at": pa.timestamp("us", tz="UTC"), "appended_at": pa.timestamp("ms", tz="UTC"),
    "value": pa.binary(), "kafka_partition": pa.int32(), "kafka_offset": pa.int64(),
}


class InvalidEvent(InvalidRow):
    """A record of the events topic that is not a readable event (no envelope, unknown schema)."""


def archive_table(topology: Topology) -> str | None:
    """``database.table`` of the archive (the ClickHouse sink of ``events.platform``), or None."""
    for sink in topology.sinks:
        if sink.kind == "clickhouse" and EVENTS_TOPIC in sink.inputs:
            if "." not in sink.target:
                raise ValueError(f"sink '{sink.name}': the events archive target must be 'database.table', got {sink.target!r}")
            return sink.target
    return None


def positions_table(table: str) -> str:
    """The archive's small companion table: the highest archived offset per partition."""
    return f"{table}_positions"


def _positions_select(table: str) -> str:
    return f"SELECT kafka_topic, kafka_partition, max(kafka_offset) AS max_offset FROM {table} GROUP BY kafka_topic, kafka_partition"


def _positions_statements(table: str) -> list[str]:
    positions = positions_table(table)
    return [
        f"CREATE TABLE IF NOT EXISTS {positions} (\n    `kafka_topic` LowCardinality(String),\n    `kafka_partition` UInt32,\n"
        "    `max_offset` SimpleAggregateFunction(max, UInt64)\n)\n"
        "ENGINE = AggregatingMergeTree\nORDER BY (kafka_topic, kafka_partition)\n"
        f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {positions}_mv TO {positions} AS\n{_positions_select(table)}",
    ]


def archive_statements(table: str) -> list[str]:
    """The CREATE statements of the archive and its positions (all ``IF NOT EXISTS``).

    The positions table is fed by a materialized view, so reading the archive's position costs a
    few rows instead of a scan of the archive. ClickHouse writes the archive's part before the
    view's, so a position never runs ahead of the archive (a lagging one only makes a reader read
    a longer tail from Kafka); a re-sent batch repairs it like the cube views.
    """
    database = table.split(".", 1)[0]
    columns = ",\n    ".join(f"`{n}` {t}" for n, t in (*ARCHIVE_COLUMNS, *BOOKKEEPING_COLUMNS))
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}",
        f"CREATE TABLE IF NOT EXISTS {table} (\n    {columns},\n"
        "    INDEX idx_kafka_offset kafka_offset TYPE minmax GRANULARITY 1,\n"
        "    INDEX idx_event_type event_type TYPE set(256) GRANULARITY 4\n)\n"
        "ENGINE = MergeTree\nPARTITION BY toYYYYMM(occurred_at)\n"
        "ORDER BY (tenant, stream_id, version)\n"
        f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}",
        *_positions_statements(table),
    ]


def ensure_archive(client: Client, table: str) -> list[str]:
    """Create the archive and its positions, or add what they lack; return the statements that ran (idempotent)."""
    database, name = table.split(".", 1)
    positions = positions_table(table)
    rows = client.query(
        "SELECT table, name FROM system.columns WHERE database = {db:String} AND table IN ({t:String}, {p:String})",
        parameters={"db": database, "t": name, "p": positions.split(".", 1)[1]},
    ).result_rows
    have = {column for t, column in rows if t == name}
    if not have:
        return run_ddl(client, archive_statements(table))
    todo = [f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS `{n}` {t}" for n, t in (*ARCHIVE_COLUMNS, *BOOKKEEPING_COLUMNS) if n not in have]
    if len(have) == len(rows):  # no positions columns: an archive from before them; create and backfill
        todo += [*_positions_statements(table), f"INSERT INTO {positions}\n{_positions_select(table)}"]
    return run_ddl(client, todo)


def archive_row(record: Any, registry: SchemaRegistry) -> list[Any]:
    """The archive row of an ``events.platform`` record (aiokafka ConsumerRecord); InvalidEvent if unreadable."""
    try:
        meta = EventMeta.from_headers(record.headers)
        name, payload = registry.decode(record.value, record.headers)
        writer, schema_id = registry.writer_of(record.value, record.headers)
    except (EnvelopeError, SchemaError) as exc:
        raise InvalidEvent(str(exc)) from exc
    appended = dt.datetime.fromtimestamp(record.timestamp / 1000, dt.timezone.utc)
    return [
        meta.tenant_id, meta.stream_id, meta.version, name, writer.version, schema_id or 0, meta.event_id, meta.command_id,
        meta.occurred_at.astimezone(dt.timezone.utc), appended, payload.model_dump_json(), record.value,
    ]


class ArchiveSink(TableSink):
    """The exactly-once writer of ``events.platform`` records (``add`` takes the ConsumerRecord) into the archive."""

    keeps_prefix = True  # fast reads rely on it; the archive has no TTL

    def __init__(self, client: Client, table: str, registry: SchemaRegistry | None = None, **options: Any) -> None:
        registry = registry or default_registry()
        super().__init__(client, table, EVENTS_TOPIC, [n for n, _ in ARCHIVE_COLUMNS], lambda record: archive_row(record, registry), **options)


def read_archive(
    client: Client,
    table: str,
    *,
    tenant: str | None = None,
    stream_id: str | None = None,
    from_version: int = 0,
    types: Sequence[str] | None = None,
    since: dt.datetime | None = None,
) -> tuple[pa.Table, dict[int, int]]:
    """(archived events matching the filters, in Kafka order; per partition the archive's position).

    The position of a partition is its highest archived offset (or a little less, see
    ``archive_statements``): every event at or below it is in the table, so a reader continues in
    Kafka after it. Positions are read before the events, so an insert landing between the two
    reads cannot hide an event. Values are bound server-side.
    """
    positions = {
        int(p): int(o)
        for p, o in client.query(
            f"SELECT kafka_partition, max(max_offset) FROM {positions_table(table)} WHERE kafka_topic = {{topic:String}} GROUP BY kafka_partition",
            parameters={"topic": EVENTS_TOPIC},
        ).result_rows
    }
    where, params = ["kafka_topic = {topic:String}"], {"topic": EVENTS_TOPIC}
    if tenant is not None:
        where.append("tenant = {tenant:String}")
        params["tenant"] = tenant
    if stream_id is not None:
        where.append("stream_id = {stream_id:String}")
        params["stream_id"] = stream_id
    if from_version > 0:
        where.append("version > {from_version:UInt64}")
        params["from_version"] = from_version
    if types is not None:
        where.append("event_type IN {types:Array(String)}")
        params["types"] = list(types)
    if since is not None:
        where.append("appended_at >= {since:DateTime64(3, 'UTC')}")
        # Whole milliseconds, as Kafka timestamps are: the same cut as a read from Kafka.
        params["since"] = since.astimezone(dt.timezone.utc).replace(tzinfo=None, microsecond=since.microsecond // 1000 * 1000)
    sql = f"SELECT {', '.join(READ_COLUMNS)} FROM {table} WHERE {' AND '.join(where)} ORDER BY kafka_partition, kafka_offset"
    result = client.query(sql, parameters=params, column_formats={"value": "bytes"})
    columns = list(zip(*result.result_rows)) if result.result_rows else [[] for _ in READ_COLUMNS]
    return pa.table({name: pa.array(list(values), kind) for (name, kind), values in zip(READ_COLUMNS.items(), columns)}), positions


def archive_headers(row: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """The Kafka headers of an archived event (schema and envelope), to decode it like a record.

    An event framed with a schema id names only its type; an older one (``schema_id`` 0) its
    type and writer version, as it was written.
    """
    meta = EventMeta(
        event_id=row["event_id"], tenant_id=row["tenant"], stream_id=row["stream_id"], version=row["version"],
        occurred_at=row["occurred_at"], command_id=row["command_id"],
    )
    schema = [(SCHEMA_HEADER, row["event_type"].encode())]
    if not row.get("schema_id"):
        schema.append((VERSION_HEADER, str(row["schema_version"]).encode()))
    return [*schema, *meta.to_headers()]


def positions_header(positions: Mapping[int, int]) -> str:
    """Archive positions as the text of an HTTP header (JSON object, partition -> offset)."""
    return json.dumps({str(p): o for p, o in sorted(positions.items())})


def parse_positions(text: str) -> dict[int, int]:
    """The inverse of ``positions_header``."""
    return {int(p): int(o) for p, o in json.loads(text or "{}").items()}
