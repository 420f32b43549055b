"""The ``drift_detector`` processor over in-memory tables: batches, restarts, aborted batches, the commit check.

The runtime's part (transactions, changelogs) is played by ``PartitionTable.commit``/``abort``
as the loop calls them; the Kafka and Redis round trips are in tests/integration/test_drift_agent.py.
"""

from __future__ import annotations

import random

import orjson

from schemas.settings import REPO_ROOT, get_settings
from schemas.topology import load_topology
from streams.drift import DriftMonitor
from streams.drift.batch import detect
from streams.drift_agent import TABLE, DriftDetector, decode_state, encode_state
from streams.runtime import AgentContext, Batch, Outputs, PartitionTable
from tests.unit.test_drift import stream

TOPOLOGY = load_topology(REPO_ROOT / "topology.yaml")


class _Message:
    """The two calls a processor makes on a consumed record."""

    def __init__(self, offset: int, value: bytes) -> None:
        self._offset, self._value = offset, value

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value


def _processor() -> DriftDetector:
    processor = DriftDetector(AgentContext(get_settings(), TOPOLOGY))
    processor._flush = lambda: None  # type: ignore[method-assign]  # Redis is the integration test's
    return processor


def _messages(facts: list[dict], first_offset: int = 0) -> list[_Message]:
    return [_Message(first_offset + 2 * i, orjson.dumps(f)) for i, f in enumerate(facts)]  # gaps, as transaction markers leave


def _run(processor: DriftDetector, table: PartitionTable, messages: list[_Message], size: int, partition: int = 3) -> list[dict]:
    """Process ``messages`` in batches of ``size``, committing each; the alerts sent, decoded."""
    processor.assigned([partition], {partition: {TABLE: table}})
    alerts = []
    for start in range(0, len(messages), size):
        out = Outputs()
        processor.process(Batch("facts.tasks", partition, messages[start : start + size], {TABLE: table}), out)
        table.commit()
        alerts += [orjson.loads(value) for topic, key, value, _, _ in out.records if topic == "alerts.drift"]
    return alerts


def _reference(facts: list[dict], partition: int = 3) -> list[dict]:
    """The alerts of the pure core over the whole stream at once (no runtime, no restart)."""
    spec = TOPOLOGY.drift
    assert spec is not None
    result = detect(DriftMonitor(spec), [(partition, 2 * i, f) for i, f in enumerate(facts)])
    return [orjson.loads(v) for _, v in result.alerts]


def test_state_values_are_json_text_and_round_trip():
    assert decode_state(encode_state(b"\x00\xffstate")) == b"\x00\xffstate"
    assert decode_state("not base64!") is None and decode_state(42) is None


def test_batches_give_the_alerts_of_the_whole_stream_and_write_json_state_rows():
    facts = stream(random.Random(5), 5000, slow_from=3000)
    table = PartitionTable(TABLE, 3)
    alerts = _run(_processor(), table, _messages(facts), size=700)
    assert alerts == _reference(facts)
    assert [a["metric"] for a in alerts if a["type"] == "DriftDetected"].count("response_time") == 1
    assert all(isinstance(v, str) for v in table._rows.values()) and "t1/coder/response_time" in table


def test_a_restarted_processor_continues_from_the_table_with_the_same_delay():
    facts = stream(random.Random(6), 5000, slow_from=3000)
    messages = _messages(facts)
    table = PartitionTable(TABLE, 3)
    before = _run(_processor(), table, messages[:3000], size=500)
    restored = PartitionTable(TABLE, 3, dict(table._rows))  # what the changelog gives back
    after = _run(_processor(), restored, messages[3000:], size=500)
    assert before + after == _reference(facts)


def test_an_aborted_batch_is_redone_to_the_same_alerts_and_states():
    facts = stream(random.Random(7), 4000, slow_from=3000)
    messages = _messages(facts)
    table = PartitionTable(TABLE, 3)
    processor = _processor()
    alerts = _run(processor, table, messages[:3000], size=1000)
    out = Outputs()
    processor.process(Batch("facts.tasks", 3, messages[3000:], {TABLE: table}), out)
    first_try = [r[2] for r in out.records]
    table.abort()  # the transaction failed: the runtime drops the changes and seeks back
    processor.tick(3, {TABLE: table}, Outputs(), 0.0)
    assert processor._outbox == []  # an aborted batch's alerts never reach Redis
    redo = Outputs()
    processor.process(Batch("facts.tasks", 3, messages[3000:], {TABLE: table}), redo)
    assert processor.redone == 1
    assert [r[2] for r in redo.records] == first_try and first_try
    table.commit()
    alerts += [orjson.loads(r[2]) for r in redo.records if r[0] == "alerts.drift"]
    assert alerts == _reference(facts)
    processor.tick(3, {TABLE: table}, Outputs(), 0.0)
    assert processor._outbox == [a for a in alerts if a["source"]["offset"] >= messages[3000].offset()]


def test_a_revoked_partition_publishes_its_committed_alerts_and_forgets_its_detectors():
    facts = stream(random.Random(8), 4000, slow_from=3000)
    table = PartitionTable(TABLE, 3)
    processor = _processor()
    alerts = _run(processor, table, _messages(facts), size=4000)
    assert alerts and processor.monitor.keys()
    processor.revoked([3])
    assert processor._outbox == alerts and processor.monitor.keys() == []


def test_bad_records_are_skipped_not_raised():
    table = PartitionTable(TABLE, 0)
    processor = _processor()
    _run(processor, table, [_Message(0, b"\xde\xad"), _Message(1, b"[1,2]"), _Message(2, orjson.dumps({"tenant": "t"}))], size=10, partition=0)
    assert processor.monitor.skipped[("fact", "not a JSON object")] == 2
    assert processor.monitor.skipped[("fact", "missing tenant or agent_type")] == 1
