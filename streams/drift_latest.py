"""The Redis read model of drift: the latest alert per (tenant, agent_type) and metric.

One hash per tenant and agent type, ``drift:{tenant}:<agent_type>``: field ``<metric>`` holds the
latest alert (JSON, as ``streams.drift.alerts`` writes it; ``anomaly`` for anomalies) and
``<metric>:order`` its position (event time in UTC, then alert id). A set
``drift:{tenant}:types`` lists the tenant's agent types with alerts. ``record`` writes through
one Lua script that keeps the newer alert, so a redelivered or replayed older alert never
overwrites a newer one and writing the same alert twice changes nothing: whoever feeds it
(the detection agent after its transaction commits, or a consumer of ``alerts.drift``) may
deliver at least once. Tenants never share a key (``{tenant}`` is also the cluster hash tag).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Mapping

import redis

_RECORD = """
local current = redis.call('HGET', KEYS[1], ARGV[1] .. ':order')
if current and current >= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3], ARGV[1] .. ':order', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[4])
return 1
"""


def latest_key(tenant: str, agent_type: str) -> str:
    """The hash of one tenant's agent type."""
    return f"drift:{{{tenant}}}:{agent_type}"


def types_key(tenant: str) -> str:
    """The set of a tenant's agent types that have alerts."""
    return f"drift:{{{tenant}}}:types"


def _order(alert: Mapping[str, Any]) -> str:
    when = alert.get("event_time") or "1970-01-01T00:00:00+00:00"
    stamp = dt.datetime.fromisoformat(when)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.timezone.utc)
    return f"{stamp.astimezone(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%f')}|{alert['alert_id']}"


def record(r: redis.Redis, alert: Mapping[str, Any]) -> bool:
    """Keep ``alert`` (a DriftDetected/AnomalyDetected dict) as its key's latest if it is newer; True if it was."""
    metric = alert.get("metric") or "anomaly"
    script = r.register_script(_RECORD)
    done = script(
        keys=[latest_key(alert["tenant"], alert["agent_type"]), types_key(alert["tenant"])],
        args=[metric, _order(alert), json.dumps(alert, separators=(",", ":")), alert["agent_type"]],
    )
    return bool(done)


def read_latest(r: redis.Redis, tenant: str) -> dict[str, dict[str, dict[str, Any]]]:
    """agent_type -> metric -> latest alert, for one tenant (empty when it has none)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for raw_type in sorted(r.smembers(types_key(tenant))):
        agent_type = raw_type.decode() if isinstance(raw_type, bytes) else raw_type
        fields = r.hgetall(latest_key(tenant, agent_type))
        metrics: dict[str, dict[str, Any]] = {}
        for name, value in fields.items():
            field = name.decode() if isinstance(name, bytes) else name
            if not field.endswith(":order"):
                metrics[field] = json.loads(value)
        out[agent_type] = metrics
    return out
