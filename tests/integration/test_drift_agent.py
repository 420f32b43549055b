"""The ``drift_detector`` agent on the real broker and Redis: restart, isolation, exactly once.

Task facts are produced straight to ``facts.tasks`` (keyed by tenant, murmur2 as the runtime
routes) and a worker runs only ``--agents drift_detector``; the session worker is stopped
meanwhile so that it does not consume them too. Every expectation is the pure core's
(``streams.drift.batch.detect``) over the same facts at the same partitions and offsets: the
alerts that a worker that never stopped would raise, with the same ids and so the same delay.
"""

from __future__ import annotations

import json
import math
import random
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.kafka_config import confluent_config
from connectors.redis_store import redis_client
from schemas.settings import Settings
from schemas.topology import load_topology
from streams import drift_latest
from streams.drift import DriftMonitor
from streams.drift.batch import detect
from streams.supervisor import WorkerProcess
from tests.helpers import read_topic, tenant

pytestmark = pytest.mark.integration

FACTS = "facts.tasks"
ALERTS = "alerts.drift"


def facts(rng: random.Random, tenant_id: str, agent_type: str, n: int, slow_from: int | None = None, first: int = 0) -> list[dict]:
    """Lognormal latencies (2x slower from index ``slow_from``), lognormal costs, 5 % failures."""
    out = []
    for i in range(first, first + n):
        slow = 2.0 if slow_from is not None and i >= slow_from else 1.0
        out.append(
            {
                "tenant": tenant_id,
                "agent_id": f"{agent_type}-1",
                "agent_type": agent_type,
                "region": "eu-west-1",
                "task_id": f"{agent_type}-task-{i}",
                "outcome": "failed" if rng.random() < 0.05 else "completed",
                "response_time_ms": round(rng.lognormvariate(6.5, 0.5) * slow),
                "cost": rng.lognormvariate(-3.5, 1.0),
                "event_time": f"2026-01-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
                "event_id": f"{tenant_id}-{agent_type}-{i}",
            }
        )
    return out


def interleave(*streams: list[dict]) -> list[dict]:
    """The streams' facts alternated, as concurrent tasks finish."""
    out = []
    for i in range(max(map(len, streams))):
        out += [s[i] for s in streams if i < len(s)]
    return out


def produce(settings: Settings, batch: list[dict]) -> list[tuple[int, int, dict]]:
    """Produce ``batch`` to facts.tasks keyed by tenant; returns ``(partition, offset, fact)`` of each."""
    producer = Producer({**confluent_config(settings), "partitioner": "murmur2_random", "enable.idempotence": True, "linger.ms": 5})
    placed: dict[int, tuple[int, int]] = {}

    def delivered(n: int):
        def report(error, message) -> None:
            assert error is None, error
            placed[n] = (message.partition(), message.offset())

        return report

    for n, fact in enumerate(batch):
        while True:
            try:
                producer.produce(FACTS, json.dumps(fact).encode(), fact["tenant"].encode(), on_delivery=delivered(n))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0
    return [(*placed[n], fact) for n, fact in enumerate(batch)]


def expected(settings: Settings, produced: list[tuple[int, int, dict]]) -> list[dict]:
    """The alerts of the pure core over ``produced``, one partition after another in offset order."""
    spec = load_topology(settings.topology_path).drift
    assert spec is not None
    by_partition: dict[int, list] = defaultdict(list)
    for record in sorted(produced, key=lambda r: (r[0], r[1])):
        by_partition[record[0]].append(record)
    monitor = DriftMonitor(spec)
    return [json.loads(v) for p in sorted(by_partition) for _, v in detect(monitor, by_partition[p]).alerts]


def committed(settings: Settings) -> dict[int, int]:
    """The drift_detector group's committed offset per facts.tasks partition (-1001: none)."""
    consumer = Consumer({**confluent_config(settings), "group.id": f"{settings.app_id}-drift_detector", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(FACTS, timeout=10).topics[FACTS].partitions
        return {tp.partition: tp.offset for tp in consumer.committed([TopicPartition(FACTS, p) for p in partitions], timeout=30)}
    finally:
        consumer.close()


def wait_committed(settings: Settings, produced: list[tuple[int, int, dict]], worker: WorkerProcess, timeout: float = 180.0, share: float = 1.0) -> None:
    """Wait until the group has committed past ``share`` of ``produced`` (all of it by default)."""
    last: dict[int, list[int]] = defaultdict(list)
    for partition, offset, _ in produced:
        last[partition].append(offset)
    deadline = time.monotonic() + timeout
    while True:
        done = committed(settings)
        behind = sum(1 for p, offsets in last.items() for o in offsets if o >= done.get(p, -1))
        if behind <= len(produced) * (1 - share):
            return
        assert time.monotonic() < deadline, f"{behind} of {len(produced)} facts not committed after {timeout:.0f}s\n{worker.log_tail()}"
        time.sleep(0.2 if share < 1 else 1.0)


def alerts_of(settings: Settings, tenants: set[str]) -> list[dict]:
    """The alerts of ``tenants`` in alerts.drift, read_committed."""
    found = [json.loads(r.value) for r in read_topic(settings, ALERTS)]
    return [a for a in found if a["tenant"] in tenants]


def runtime_status(settings: Settings, port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/runtime", timeout=5) as response:
        return next(a for a in json.loads(response.read())["agents"] if a["agent"] == "drift_detector")


@pytest.fixture
def drift_worker(worker: WorkerProcess, applied: Settings, tmp_path: Path) -> Iterator[tuple[Settings, int, Path]]:
    """The session worker stopped (it runs drift_detector too) and started again afterwards; (settings, web port, log)."""
    worker.stop()
    try:
        yield applied, applied.web_port + 2, tmp_path / "drift-worker.log"
    finally:
        worker.start()


def start_drift_worker(port: int, log: Path) -> WorkerProcess:
    return WorkerProcess(log, web_port=port, args=("worker", "--agents", "drift_detector")).start()


def wait_ready(settings: Settings, port: int, proc: WorkerProcess, timeout: float = 90.0) -> dict:
    """Wait until the worker's drift_detector owns partitions (its tables restored)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = runtime_status(settings, port)
            if status["partitions"]:
                return status
        except (OSError, StopIteration, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"the drift worker never owned a partition\n{proc.log_tail()}")


def test_restart_continues_from_the_changelog_and_detects_with_the_same_delay(drift_worker):
    settings, port, log = drift_worker
    a = tenant()
    rng = random.Random(11)
    train, shift = 3000, 600
    stream = facts(rng, a, "coder", train + shift, slow_from=train)
    proc = start_drift_worker(port, log)
    try:
        wait_ready(settings, port, proc)
        trained = produce(settings, stream[:train])
        wait_committed(settings, trained, proc)
    finally:
        proc.kill()  # SIGKILL: no clean shutdown
    restarted = start_drift_worker(port, log)
    try:
        status = wait_ready(settings, port, restarted)
        assert status["restored_rows"] >= 4, status  # a's response_time, cost, failure and anomaly states
        shifted = produce(settings, stream[train:])
        wait_committed(settings, shifted, restarted)
        want = expected(settings, trained + shifted)
        got = alerts_of(settings, {a})
        assert [x["alert_id"] for x in got] == [x["alert_id"] for x in want] and got == want
        latency = [x for x in got if x["type"] == "DriftDetected" and x["metric"] == "response_time"]
        assert len(latency) == 1 and 0 <= latency[0]["index"] - train <= 30, latency  # the 2x shift: one alert, the declared delay
        # Redis shows it once the batch committed
        deadline = time.monotonic() + 30
        while "response_time" not in drift_latest.read_latest(redis_client(settings), a).get("coder", {}):
            assert time.monotonic() < deadline, restarted.log_tail()
            time.sleep(0.3)
        assert drift_latest.read_latest(redis_client(settings), a)["coder"]["response_time"]["alert_id"] == latency[0]["alert_id"]
    finally:
        restarted.stop()


def _alone(settings: Settings, stream: list[dict]) -> list[tuple]:
    """What one (tenant, agent_type) stream raises when it is the only one: (type, metric, index) per alert."""
    return [(x["type"], x.get("metric"), x["index"]) for x in expected(settings, [(0, i, f) for i, f in enumerate(stream)])]


def test_a_shift_in_one_tenant_and_agent_type_alerts_only_there(drift_worker):
    settings, port, log = drift_worker
    a, b = tenant(), tenant()
    rng = random.Random(14)  # a seed whose unshifted streams raise no false alarm, so any drift alert there would be a leak
    n, slow_from = 3600, 3000
    streams = {
        (a, "coder"): facts(rng, a, "coder", n, slow_from=slow_from),
        (a, "writer"): facts(rng, a, "writer", n),
        (b, "coder"): facts(rng, b, "coder", n),
        (b, "writer"): facts(rng, b, "writer", n),
    }
    proc = start_drift_worker(port, log)
    try:
        wait_ready(settings, port, proc)
        produced = produce(settings, interleave(*streams.values()))
        wait_committed(settings, produced, proc)
        got = alerts_of(settings, {a, b})
        assert got == expected(settings, produced)
        drifts = [x for x in got if x["type"] == "DriftDetected"]
        assert {(x["tenant"], x["agent_type"]) for x in drifts} == {(a, "coder")}, drifts
        for key, stream in streams.items():  # each key raises what its own stream alone raises: nothing leaks in
            assert [(x["type"], x.get("metric"), x["index"]) for x in got if (x["tenant"], x["agent_type"]) == key] == _alone(settings, stream), key
        r = redis_client(settings)
        deadline = time.monotonic() + 30
        while "response_time" not in drift_latest.read_latest(r, a).get("coder", {}):
            assert time.monotonic() < deadline, proc.log_tail()
            time.sleep(0.3)
        time.sleep(1.0)  # a tick later: nothing else has appeared
        for t in (a, b):
            for agent_type, metrics in drift_latest.read_latest(r, t).items():
                drifted = set(metrics) - {"anomaly"}
                assert not drifted or (t, agent_type, drifted) == (a, "coder", {"response_time"}), (t, agent_type, metrics)
    finally:
        proc.stop()


def test_a_worker_killed_during_a_burst_leaves_each_alert_once(drift_worker):
    settings, port, log = drift_worker
    tenants = [tenant() for _ in range(12)]
    rng = random.Random(13)
    n, slow_from = 3400, 3000
    streams = [facts(rng, t, kind, n, slow_from=slow_from) for t in tenants for kind in ("coder", "writer")]
    proc = start_drift_worker(port, log)
    try:
        wait_ready(settings, port, proc)
        produced = produce(settings, interleave(*streams))
        wait_committed(settings, produced, proc, timeout=120, share=0.3)
    finally:
        proc.kill()  # mid-burst: its open transaction is aborted when the restart fences it
    done = committed(settings)
    left = sum(1 for p, o, _ in produced if o >= done.get(p, -1))
    assert left > 0, "the burst was over before the kill"
    restarted = start_drift_worker(port, log)
    try:
        wait_committed(settings, produced, restarted, timeout=300)
        want = expected(settings, produced)
        got = alerts_of(settings, set(tenants))
        counts = Counter(x["alert_id"] for x in got)
        assert [i for i, c in counts.items() if c > 1] == []  # each alert once...
        assert sorted(counts) == sorted(x["alert_id"] for x in want)  # ...and every alert
        latency = {(x["tenant"], x["agent_type"]) for x in got if x["type"] == "DriftDetected" and x["metric"] == "response_time"}
        assert len(latency) >= math.ceil(0.9 * len(streams)), len(latency)
        restored = runtime_status(settings, port)["restored_rows"]
        assert restored > 0  # it continued from the changelog, not from nothing
    finally:
        restarted.stop()
