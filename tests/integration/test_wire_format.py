"""The store in the Kafka ecosystem's own format: Confluent wire format and a real schema registry.

- A consumer that knows nothing of agentstream (confluent-kafka's ``AvroDeserializer`` and the
  registry) reads every event of ``events.platform``.
- ClickHouse (chdb) reads the topic's records with ``FORMAT AvroConfluent`` and the registry, and
  agrees with the events archive that a sink process wrote.
- A topic of events written before the wire format (schemaless, schema in headers) stays
  readable by every reader: the registry, the projector's decoder, the archive.
- The registry refuses an incompatible schema with its reason (library and CLI).
- The registry down while the worker runs: cached ids keep commands flowing; a new schema waits,
  logs, and goes through once the registry is back, whose ids survived the restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka.admin import NewTopic
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from connectors.clickhouse import clickhouse_client
from connectors.kafka_admin import admin_client
from connectors.kafka_config import aiokafka_config
from connectors.local_stack import LocalStack
from schemas import SchemaError, SchemaRegistry, default_registry
from schemas.errors import SchemaRejected
from schemas.messages import CommandAccepted, EnvelopeError, EventMeta, new_id
from schemas.registry import VERSION_HEADER
from schemas.wire import bind, check, register, registry_client
from sinks.events_archive import ArchiveSink, archive_headers, ensure_archive, read_archive
from sinks.query_client import QueryClient
from streams.client import CommandClient
from streams.projections import decode_event
from streams.supervisor import WorkerProcess
from tests.helpers import encode_old_format, read_topic, run_cli, tenant

pytestmark = pytest.mark.integration

EVENTS = "events.platform"


async def _agent_life(settings, t: str, agent: str = "a1") -> None:
    """Commands that make one tenant's agent and task events (several event types)."""
    async with CommandClient(settings) as client:
        for kind, data in [
            ("CreateAgent", {"agent_id": agent, "name": "Wire", "agent_type": "llm", "region": "eu-west-1", "capabilities": ["x"]}),
            ("ConfigureAgent", {"agent_id": agent, "config": {"model": "small"}}),
            ("StartAgent", {"agent_id": agent}),
            ("AssignTask", {"task_id": f"{agent}-t1", "agent_id": agent, "task_type": "summarise", "input": {"doc": "d"}}),
            ("CompleteTask", {"task_id": f"{agent}-t1", "output": {"summary": "ok"}, "cost": 0.5}),
        ]:
            outcome = await client.send(kind, t, data)
            assert isinstance(outcome, CommandAccepted), outcome


def _foreign_read(settings, topic: str) -> list[tuple[Any, dict | None, Exception | None]]:
    """Every committed record of ``topic`` deserialized as any Kafka tool would, with confluent-kafka's
    ``AvroDeserializer`` and nothing but the registry's URL: (record, value or None, error)."""
    deserialize = AvroDeserializer(registry_client(settings))
    out = []
    for record in read_topic(settings, topic):
        try:
            out.append((record, deserialize(record.value, SerializationContext(topic, MessageField.VALUE)), None))
        except Exception as exc:  # noqa: BLE001 (a record no tool can read is reported, not raised)
            out.append((record, None, exc))
    return out


def test_a_consumer_that_knows_nothing_of_agentstream_reads_every_event(worker, applied):
    t = tenant()
    asyncio.run(_agent_life(applied, t))
    registry = default_registry()
    ours = 0
    for message, foreign, error in _foreign_read(applied, EVENTS):
        try:
            name, payload = registry.decode(message.value, message.headers)
            meta = EventMeta.from_headers(message.headers)
        except (SchemaError, EnvelopeError):  # not an event (other tests put garbage on the topic on purpose)
            continue
        assert error is None, f"{name} at {message.partition}/{message.offset}: {error}"
        writer, _ = registry.writer_of(message.value, message.headers)
        # What the foreign reader got is the event as written, at its writer's version.
        assert registry.validate(name, foreign, writer.version).model_dump() == foreign
        if writer.version == registry.latest_version(name):
            assert foreign == payload.model_dump()
        ours += meta.tenant_id == t
    assert ours == 5


def _concat_frames(records: list) -> bytes:
    return b"".join(r.value for r in records)


def test_clickhouse_reads_the_topic_with_avro_confluent_and_agrees_with_the_archive(worker, applied, tmp_path: Path):
    """chdb is given the topic's raw record values (the framed bytes, concatenated per event type in
    a file, which is how ``AvroConfluent`` reads a stream of messages) and resolves every id in the
    registry; what it reads equals the archive's payloads for the same events."""
    t = tenant()
    asyncio.run(_agent_life(applied, t))
    records = [r for r in read_topic(applied, EVENTS) if dict(r.headers or []).get("agentstream.tenant_id") == t.encode()]
    by_type: dict[str, list] = {}
    for record in records:
        by_type.setdefault(dict(record.headers)["agentstream.schema"].decode(), []).append(record)
    assert set(by_type) == {"AgentCreated", "AgentConfigured", "AgentStarted", "TaskAssigned", "TaskCompleted"}

    sink = WorkerProcess(tmp_path / "sink.log", env={"AGENTSTREAM_CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}"}, args=["sink", "--max-delay", "0.2"]).start()
    queries = QueryClient(applied, open_embedded=False)
    try:
        deadline, archived = time.monotonic() + 180, []
        while time.monotonic() < deadline and len(archived) < len(records):
            try:
                archived = queries.sql_table(f"SELECT event_type, payload, kafka_partition, kafka_offset, schema_id FROM agentstream.event_archive WHERE tenant = '{t}'").to_pylist()
            except Exception:  # noqa: BLE001 the sink is starting
                pass
            time.sleep(0.5)
        assert len(archived) == len(records), sink.log_tail()
    finally:
        sink.stop()
    archive = {(row["kafka_partition"], row["kafka_offset"]): row for row in archived}
    assert all(row["schema_id"] > 0 for row in archived)

    client = clickhouse_client(applied)  # the embedded ClickHouse of this process (chdb: one path per process)
    registry = default_registry()
    for name, group in by_type.items():
        path = tmp_path / f"{name}.avroconfluent"
        path.write_bytes(_concat_frames(group))
        columns = ", ".join(f"`{f['name']}`" for f in registry.get(name).raw["fields"])
        sql = (
            f"SELECT {columns} FROM file('{path}', 'AvroConfluent') "
            f"SETTINGS format_avro_schema_registry_url = '{applied.schema_registry_url}', output_format_json_quote_64bit_integers = 0, session_timezone = 'UTC'"
        )
        rows = [json.loads(line) for line in client.raw_query(sql, fmt="JSONEachRow").decode().splitlines()]
        assert len(rows) == len(group), name
        for record, row in zip(group, rows):
            stored = json.loads(archive[(record.partition, record.offset)]["payload"])
            assert {k: _plain(v) for k, v in row.items()} == {k: _plain(stored[k]) for k in row}, name


def _plain(value: Any) -> Any:
    """JSON from ClickHouse and from pydantic side by side: maps as dicts, nulls as None, numbers as floats."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] in " T":
        try:  # ClickHouse writes "2026-01-01 10:00:00.123" (UTC here), pydantic "2026-01-01T10:00:00.123000Z"
            return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=UTC)
        except ValueError:
            return value
    return value


def test_a_topic_of_old_format_events_stays_readable(applied, tmp_path: Path):
    """Events as agentstream wrote them before the wire format, kept on a topic of their own."""
    topic = f"old-format-events-{uuid.uuid4().hex[:6]}"
    admin = admin_client(applied)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    t = tenant()
    written = [
        ("AgentCreated", 1, {"agent_id": "a1", "name": "Old", "agent_type": "llm", "region": "eu-west-1", "config": {}}),
        ("AgentStarted", 1, {"agent_id": "a1"}),
        ("TaskCompleted", 1, {"task_id": "t1", "agent_id": "a1", "output": {}, "cost": 0.1, "duration_ms": 1500}),
        ("StartAgent", 1, {"agent_id": ""}),  # a command whose Avro body starts with a zero byte
    ]

    async def produce() -> None:
        producer = AIOKafkaProducer(**aiokafka_config(applied), acks="all")
        await producer.start()
        try:
            for version, (name, v, data) in enumerate(written, start=1):
                value, headers = encode_old_format(name, data, v)
                meta = EventMeta(event_id=new_id(), tenant_id=t, stream_id="agent-a1", version=version, occurred_at=datetime.now(UTC), command_id="old")
                await producer.send_and_wait(topic, key=t.encode(), value=value, headers=headers + meta.to_headers())
        finally:
            await producer.stop()

    try:
        asyncio.run(produce())
        records = read_topic(applied, topic)
        assert [dict(r.headers)[VERSION_HEADER] for r in records] == [b"1"] * 4
        registry = default_registry()
        decoded = [registry.decode(r.value, r.headers) for r in records]
        assert [name for name, _ in decoded] == [name for name, _, _ in written]
        assert decoded[0][1].capabilities == []  # type: ignore[attr-defined]  (v1 read as v2)
        assert decoded[2][1].duration_s == 1.5  # type: ignore[attr-defined]  (upcast)
        # The projector's decoder
        assert decode_event(registry, records[2].value, records[2].headers).data["duration_s"] == 1.5
        # The archive keeps the bytes as written and reads them back the same way (a table of its
        # own in this process's embedded ClickHouse: chdb allows one path per process).
        client = clickhouse_client(applied)
        table = f"wire_{uuid.uuid4().hex[:8]}.event_archive"
        ensure_archive(client, table)
        sink = ArchiveSink(client, table, registry)
        for record in records[:3]:  # the archive holds events
            sink.add(record.partition, record.offset, record)
        sink.flush()
        rows = read_archive(client, table, tenant=t)[0].to_pylist()
        client.command(f"DROP DATABASE {table.split('.')[0]}")
        assert [(r["event_type"], r["schema_version"], r["schema_id"]) for r in rows] == [("AgentCreated", 1, 0), ("AgentStarted", 1, 0), ("TaskCompleted", 1, 0)]
        assert [r["value"] for r in rows] == [r.value for r in records[:3]]
        assert [registry.decode(r["value"], archive_headers(r)) for r in rows] == decoded[:3]
    finally:
        admin.delete_topics([topic])[topic].result(30)


def _probe_schemas(root: Path, namespace: str, second: dict) -> Path:
    events = root / "events"
    events.mkdir(parents=True, exist_ok=True)
    first = {"name": "level", "type": "int", "doc": "a level"}
    for version, fields in ((1, [first]), (2, [second])):
        rec = {"type": "record", "namespace": namespace, "name": "Probe", "version": version, "doc": "probe", "fields": fields}
        (events / f"Probe.v{version}.avsc").write_text(json.dumps(rec))
    return root


def test_the_registry_refuses_an_incompatible_change_with_its_reason(applied, tmp_path: Path):
    namespace = f"agentstream.probe{uuid.uuid4().hex[:6]}"
    root = _probe_schemas(tmp_path / "bad", namespace, {"name": "level", "type": {"type": "array", "items": "string"}, "doc": "now a list"})
    reg = SchemaRegistry.load(root)
    # v1 registers; v2 changes a type: the local rules and the registry both refuse it
    assert reg.check() != []
    with pytest.raises(SchemaRejected) as refused:
        register(reg, applied)
    assert refused.value.subject == f"{namespace}.Probe" and refused.value.version == 2 and refused.value.reason
    assert check(reg, applied) and "Probe v2" in check(reg, applied)[0]

    cli = run_cli("schemas", "register", "--schemas", str(root))
    assert cli.returncode == 1 and "refused" in cli.stderr and "Probe v2" in cli.stderr, cli.stdout + cli.stderr
    cli = run_cli("schemas", "check", "--schemas", str(root))
    assert cli.returncode == 1 and "registry" in cli.stdout, cli.stdout + cli.stderr

    good = _probe_schemas(tmp_path / "good", namespace, {"name": "level", "type": "long", "doc": "promoted"})
    done = register(SchemaRegistry.load(good), applied)  # int -> long is a promotion: accepted
    assert [(r.version, r.compatibility) for r in done] == [(1, "BACKWARD_TRANSITIVE"), (2, "BACKWARD_TRANSITIVE")]
    ok = run_cli("schemas", "register")
    assert ok.returncode == 0 and "registered" in ok.stdout, ok.stdout + ok.stderr
    ok = run_cli("schemas", "check")
    assert ok.returncode == 0 and "schema registry" in ok.stdout, ok.stdout + ok.stderr


def test_registry_down_cached_ids_keep_commands_flowing_and_a_new_schema_waits(worker, applied, tmp_path: Path, caplog):
    service = next(s for s in LocalStack(applied).services if s.name == "registry")
    sr = registry_client(applied)
    known = default_registry().schema_id("AgentCreated")
    text_before = sr.get_schema(known).schema_str
    namespace = f"agentstream.late{uuid.uuid4().hex[:6]}"
    late = SchemaRegistry.load(_probe_schemas(tmp_path / "late", namespace, {"name": "level", "type": "long", "doc": "promoted"}))
    bind(late, applied, eager=False)
    assert service.stop(lambda line: None)
    try:
        t = tenant()
        asyncio.run(_agent_life(applied, t))  # the worker and this client frame with cached ids
        outcome: dict[str, Any] = {}

        def encode_new_schema() -> None:
            try:
                outcome["value"] = late.encode("Probe", {"level": 7})
            except SchemaError as exc:
                outcome["error"] = exc

        caplog.set_level(logging.WARNING, logger="agentstream.schemas")
        waiting = threading.Thread(target=encode_new_schema)
        waiting.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "unreachable while registering" not in caplog.text:
            time.sleep(0.2)
        assert "unreachable while registering" in caplog.text and applied.schema_registry_url in caplog.text
        assert waiting.is_alive()  # it waits; nothing fails
    finally:
        service.start(lambda line: None, timeout=180)
    waiting.join(120)
    assert "value" in outcome, outcome
    value, headers = outcome["value"]
    assert late.decode(value, headers)[1].model_dump() == {"level": 7}
    # KafkaSQL storage: the ids already written into the store mean the same after the restart.
    assert registry_client(applied).get_schema(known).schema_str == text_before
