"""The Redis read model of drift (latest alert per tenant, agent type and metric) on a real redis-server."""

from __future__ import annotations

import json

import pytest

from connectors.redis_store import redis_client
from streams.drift_latest import read_latest, record
from tests.helpers import run_cli, tenant

pytestmark = pytest.mark.integration


def alert(t: str, agent_type: str, metric: str, when: str, after: float) -> dict:
    return {
        "type": "DriftDetected", "alert_id": f"drift/{t}/{agent_type}/{metric}/0/{when}", "tenant": t, "agent_type": agent_type, "metric": metric,
        "detector": "PageHinkley", "before": {"mean": 700.0, "count": 3000}, "after": {"mean": after, "count": 20},
        "event_time": when, "source": {"partition": 0, "offset": 1}, "index": 1,
    }


def test_the_newest_alert_wins_whatever_the_delivery_order(settings):
    r = redis_client(settings)
    a, b = tenant(), tenant()
    old, new = alert(a, "coder", "response_time", "2026-03-01T10:00:00+00:00", 1400.0), alert(a, "coder", "response_time", "2026-03-01T12:00:00+01:00", 1500.0)  # 11:00 UTC
    assert record(r, new) is True
    assert record(r, old) is False  # delivered late, but older: never overwrites
    assert record(r, new) is False  # a redelivery changes nothing
    assert record(r, alert(a, "planner", "cost", "2026-03-01T09:00:00+00:00", 0.05)) is True
    latest = read_latest(r, a)
    assert latest["coder"]["response_time"]["after"]["mean"] == 1500.0 and set(latest) == {"coder", "planner"}
    assert read_latest(r, b) == {}
    out = run_cli("drift", "latest", "--tenant", a, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == latest
    assert run_cli("drift", "latest", "--tenant", "bad tenant!").returncode == 2
