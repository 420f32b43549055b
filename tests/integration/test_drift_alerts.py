"""Drift alerts through Kafka into ClickHouse, and `agentstream drift list|status` reading them.

The alerts are what the monitor raises for a tenant whose latency doubles (computed here with the
real ``DriftMonitor``, as the detection agent will); they are produced to ``alerts.drift`` in one
transaction with a malformed record, and a running sink process must store each alert once and
skip the malformed record.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from connectors.kafka_config import aiokafka_config
from schemas.topology import load_topology
from streams.drift import DriftDetected, DriftMonitor
from streams.supervisor import WorkerProcess
from tests.helpers import run_cli, tenant

pytestmark = pytest.mark.integration


def _alerts_for(t: str) -> list[dict]:
    spec = load_topology(Path("topology.yaml")).drift
    assert spec is not None
    monitor = DriftMonitor(spec)
    rng = random.Random(4)
    alerts = []
    for i in range(5000):
        fact = {
            "tenant": t, "agent_type": "coder", "task_id": f"task-{i}", "event_time": f"2026-03-01T12:{i // 600:02d}:{i // 10 % 60:02d}+00:00",
            "response_time_ms": rng.lognormvariate(6.5, 0.5) * (2 if i >= 3000 else 1), "cost": rng.lognormvariate(-3.5, 1.0), "outcome": "completed",
        }
        alerts += [a for a in monitor.observe(fact, partition=0, offset=i) if isinstance(a, DriftDetected)]
    assert [a.metric for a in alerts] == ["response_time"]
    return [a.to_dict() for a in alerts]


async def _produce(settings, t: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(**aiokafka_config(settings), transactional_id=f"drift-test-{t}")
    await producer.start()
    try:
        async with producer.transaction():
            for value in values:
                await producer.send("alerts.drift", key=t.encode(), value=value)
    finally:
        await producer.stop()


def test_alerts_land_in_clickhouse_once_and_the_cli_lists_them(applied, tmp_path: Path):
    t = tenant()
    alerts = _alerts_for(t)
    asyncio.run(_produce(applied, t, [b"not json", json.dumps({"type": "Bogus"}).encode(), *[json.dumps(a).encode() for a in alerts]]))
    sink = WorkerProcess(tmp_path / "sink.log", env={"AGENTSTREAM_CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}"}, args=["sink", "--max-delay", "0.2"]).start()
    try:
        deadline, rows = time.monotonic() + 180, []
        while time.monotonic() < deadline:
            out = run_cli("drift", "list", "--tenant", t, "--json")
            if out.returncode == 0 and (rows := json.loads(out.stdout or "[]")):
                break
            time.sleep(1)
        assert len(rows) == 1, f"{out.stdout}{out.stderr}\n{sink.log_tail()}"
        row = rows[0]
        assert row["tenant"] == t and row["metric"] == "response_time" and row["kind"] == "drift" and row["alert_id"] == alerts[0]["alert_id"]
        assert row["after_mean"] > 1.5 * row["before_mean"]
        assert json.loads(run_cli("drift", "list", "--tenant", t, "--since", "2026-03-02", "--json").stdout or "[]") == []
        status = run_cli("drift", "status", "--json")
        assert status.returncode == 0, status.stderr
        mine = [r for r in json.loads(status.stdout) if r["tenant"] == t]
        assert [(r["agent_type"], r["metric"], r["alerts"]) for r in mine] == [("coder", "response_time", 1)]
        assert "rejected and skipped" in sink.log_tail()
        assert run_cli("drift", "list", "--tenant", "bad tenant!").returncode == 2
    finally:
        sink.stop()
